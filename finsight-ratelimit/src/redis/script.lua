-- finsight-ratelimit: every applicable rule of one check, decided atomically.
-- The arithmetic mirrors src/algorithm.rs exactly; every value stays below 2^53.
--
-- KEYS[i]  state key of rule i (all keys carry the same {hash tag}).
-- ARGV[1]  op: 0 = consume, 1 = peek, 2 = refund
-- ARGV[2]  now in microseconds, or '' to use the server's TIME (the default)
-- ARGV[3 + 6(i-1) ..]  per rule: algorithm code, capacity, window_us, interval_us, cost, shadow (0/1)
-- Returns { now, then per rule: allowed (0/1), remaining, reset_us, retry_us (-1 = none) }.
if redis.replicate_commands then pcall(redis.replicate_commands) end

local op = tonumber(ARGV[1])
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- floor(a / b) for non-negative integers, exact despite double division.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

local function fields(s)
  local r = {}
  if s then for x in string.gmatch(s, '[^:]+') do r[#r + 1] = tonumber(x) end end
  return r
end

local n = #KEYS
local out = { now }
local plans = {}
local commit = (op == 0)

for i = 1, n do
  local b0 = 2 + (i - 1) * 6
  local algo = tonumber(ARGV[b0 + 1])
  local cap = tonumber(ARGV[b0 + 2])
  local w = tonumber(ARGV[b0 + 3])
  local t = tonumber(ARGV[b0 + 4])
  local cost = tonumber(ARGV[b0 + 5])
  local shadow = tonumber(ARGV[b0 + 6])
  local key = KEYS[i]
  local never = cost > cap
  local allowed, remaining, reset, retry = 0, 0, 0, -1
  local plan = { key = key, algo = algo }

  if algo == 6 or algo == 1 or algo == 2 then
    local full = cap * t
    local raw = redis.call('GET', key)
    local used
    if algo == 6 then
      local tat = tonumber(raw) or now
      if tat < now then tat = now end
      used = tat - now
    else
      local f = fields(raw)
      local last = f[1] or now
      local elapsed = now - last
      if elapsed < 0 then elapsed = 0 end
      if algo == 1 then
        local tokens = f[2] or full
        if tokens > full then tokens = full end
        local cur = tokens + elapsed
        if cur > full then cur = full end
        used = full - cur
      else
        local level = (f[2] or 0) - elapsed
        if level < 0 then level = 0 end
        used = level
      end
    end
    local new_used = used + cost * t
    if op == 2 then
      local u = used - cost * t
      if u < 0 then u = 0 end
      new_used = u
      allowed = 1
    elseif new_used <= full then
      allowed, remaining, reset = 1, idiv(full - new_used, t), new_used
    else
      local u = used
      if u > full then u = full end
      remaining, reset = idiv(full - u, t), used
      if not never then retry = new_used - full end
    end
    plan.ttl = new_used
    if algo == 6 then
      plan.value = string.format('%.0f', now + new_used)
    elseif algo == 1 then
      plan.value = string.format('%.0f:%.0f', now, full - new_used)
    else
      plan.value = string.format('%.0f:%.0f', now, new_used)
    end
  elseif algo == 3 then
    local idx = idiv(now, w)
    local f = fields(redis.call('GET', key))
    local count = 0
    if f[1] == idx then count = f[2] end
    local stop = (idx + 1) * w - now
    local new_count = count + cost
    if op == 2 then
      new_count = count - cost
      if new_count < 0 then new_count = 0 end
      allowed = 1
    elseif new_count <= cap then
      allowed, remaining, reset = 1, cap - new_count, stop
    else
      remaining = cap - count
      if remaining < 0 then remaining = 0 end
      if count > 0 then reset = stop end
      if not never then retry = stop end
    end
    plan.ttl = stop
    plan.value = string.format('%.0f:%.0f', idx, new_count)
  elseif algo == 5 then
    local idx = idiv(now, w)
    local e = now - idx * w
    local f = fields(redis.call('GET', key))
    local cur, prev = 0, 0
    if f[1] == idx then cur, prev = f[2], f[3]
    elseif f[1] and f[1] + 1 == idx then prev = f[2] end
    local weighted = idiv(prev * (w - e), w)
    local function reset_of(c)
      if c > 0 then return (idx + 2) * w - now elseif prev > 0 then return (idx + 1) * w - now else return 0 end
    end
    local new_cur = cur + cost
    if op == 2 then
      new_cur = cur - cost
      if new_cur < 0 then new_cur = 0 end
      allowed = 1
    elseif weighted + new_cur <= cap then
      allowed, remaining, reset = 1, cap - weighted - new_cur, reset_of(new_cur)
    else
      remaining = cap - weighted - cur
      if remaining < 0 then remaining = 0 end
      reset = reset_of(cur)
      if not never then
        local r = nil
        if cur + cost <= cap and prev > 0 then
          local room = cap - cur - cost
          local e2 = w - idiv((room + 1) * w - 1, prev)
          if e2 < 0 then e2 = 0 end
          if e2 < w and e2 > e then r = idx * w + e2 - now end
        end
        if not r then
          local room = cap - cost
          local e3 = 0
          if cur > 0 then
            e3 = w - idiv((room + 1) * w - 1, cur)
            if e3 < 0 then e3 = 0 end
            if e3 > w then e3 = w end
          end
          r = (idx + 1) * w + e3 - now
          if r < 1 then r = 1 end
        end
        retry = r
      end
    end
    plan.ttl = (idx + 2) * w - now
    plan.value = string.format('%.0f:%.0f:%.0f', idx, new_cur, prev)
  elseif algo == 4 then
    -- Sliding-window log: a list of "ts:cost", oldest first, total cost <= cap.
    local raw = redis.call('LRANGE', key, 0, -1)
    local expired = 0
    local entries = {}
    local sum = 0
    for j = 1, #raw do
      local f = fields(raw[j])
      if f[1] + w <= now then
        expired = j
      else
        entries[#entries + 1] = f
        sum = sum + f[2]
      end
    end
    plan.expired = expired
    if op == 2 then
      allowed = 1
      plan.refund = cost
      plan.entries = entries
    elseif sum + cost <= cap then
      allowed, remaining = 1, cap - sum - cost
      if cost > 0 then reset = w elseif #entries > 0 then reset = entries[#entries][1] + w - now end
      plan.push = string.format('%.0f:%.0f', now, cost)
      plan.cost = cost
    else
      remaining = cap - sum
      if remaining < 0 then remaining = 0 end
      if #entries > 0 then reset = entries[#entries][1] + w - now end
      if not never then
        local left = sum
        for j = 1, #entries do
          left = left - entries[j][2]
          if left + cost <= cap then
            retry = entries[j][1] + w - now
            if retry < 1 then retry = 1 end
            break
          end
        end
      end
    end
    plan.ttl = w
  end

  if op == 0 and allowed == 0 and shadow == 0 then commit = false end
  plan.allowed = allowed
  plans[i] = plan
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end

local function px(us)
  local ms = math.ceil(us / 1000) + 1
  if ms < 1 then ms = 1 end
  return ms
end

if op == 0 or op == 2 then
  for i = 1, n do
    local p = plans[i]
    if p.algo == 4 then
      if p.expired > 0 then redis.call('LTRIM', p.key, p.expired, -1) end
    end
    if (op == 2 or (commit and p.allowed == 1)) then
      if p.algo == 4 then
        if op == 2 then
          local c = p.refund
          local m = #p.entries
          while c > 0 and m > 0 do
            local e = p.entries[m]
            if e[2] <= c then
              c = c - e[2]
              redis.call('RPOP', p.key)
              m = m - 1
            else
              redis.call('LSET', p.key, -1, string.format('%.0f:%.0f', e[1], e[2] - c))
              c = 0
            end
          end
        elseif p.cost > 0 then
          local last = redis.call('LINDEX', p.key, -1)
          local lf = fields(last)
          if last and lf[1] >= now then
            redis.call('LSET', p.key, -1, string.format('%.0f:%.0f', lf[1], lf[2] + p.cost))
          else
            redis.call('RPUSH', p.key, p.push)
          end
          redis.call('PEXPIRE', p.key, px(p.ttl))
        end
      else
        redis.call('SET', p.key, p.value, 'PX', px(p.ttl))
      end
    end
  end
end

return out
