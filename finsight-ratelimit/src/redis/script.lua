-- finsight-ratelimit: every applicable rule of one check, decided atomically.
-- The arithmetic mirrors src/algorithm.rs exactly; every value stays below 2^53.
--
-- KEYS[i]  state key of rule i (all keys carry the same {hash tag}).
-- ARGV[4i-3 .. 4i]  rule i: algorithm code (one digit, followed by 's' for a
--          shadow rule), capacity, span (interval_us for token bucket, leaky
--          bucket and GCRA; window_us for fixed window, sliding-window log and
--          sliding-window counter), cost
-- ARGV[4n+1]  optional op: 0 = consume (the default), 1 = peek, 2 = refund
-- ARGV[4n+2]  optional now in microseconds (a test clock); without it the
--          clock is the server's TIME
-- Returns 4 values per rule: allowed (0/1), remaining, reset_us, retry_us (-1 = none).
--
-- This runs on every request, so it is kept lean (measured with callgrind on
-- Redis 7.0, per call): every argument costs Redis ~1k instructions to parse
-- and hand over, every tonumber() ~1.4k (strtod), every closure or table
-- created ~1k, string.format ~1.5k. Hence few arguments, digits read with
-- string.byte, two helper functions, no table per rule (but the sliding-window
-- log's), and one rule kept in locals instead of a commit plan.
--
-- Redis >= 5 replicates effects by default (7.0 made the switch a no-op);
-- older servers need it to write after TIME.
if not redis.REDIS_VERSION_NUM and redis.replicate_commands then pcall(redis.replicate_commands) end

local n = #KEYS
local extra = #ARGV - 4 * n
local op, now = 0, nil
-- Shortest expiry in ms. Keys expire by the server's clock, which a test
-- clock does not move: with one, keys live at least a minute, so decisions
-- never depend on how much real time passed (a key read after its expiry
-- decides as a fresh one anyway; expiry only frees memory).
local min_ms = 1
if extra > 0 then op = string.byte(ARGV[4 * n + 1]) - 48 end
if extra > 1 then
  now, min_ms = tonumber(ARGV[4 * n + 2]), 60000
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

-- What the write pass needs of each rule: with one rule in these locals,
-- with several in `plans` (algo, allowed, value, ttl; stride 4) and `logs`.
local plans, logs, out
if n > 1 then plans, logs, out = {}, {}, {} end
local commit = (op == 0)
local s_algo, s_allowed, s_value, s_ttl, s_lg

for i = 1, n do
  local b0 = (i - 1) * 4
  local kind = ARGV[b0 + 1]
  local cap = tonumber(ARGV[b0 + 2])
  local span = tonumber(ARGV[b0 + 3])
  local cost = tonumber(ARGV[b0 + 4])
  local algo, shadow = string.byte(kind) - 48, #kind > 1
  local key = KEYS[i]
  local never = cost > cap
  local allowed, remaining, reset, retry = 0, 0, 0, -1
  local value, ttl, lg

  if algo == 6 or algo == 1 or algo == 2 then
    local t = span
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
    ttl = new_used
    if algo == 6 then
      -- A number: Redis writes it as its integer digits ('%.17g'), exactly
      -- what '%.0f' gives below 2^53, without string.format's cost.
      value = now + new_used
    elseif algo == 1 then
      value = string.format('%.0f:%.0f', now, full - new_used)
    else
      value = string.format('%.0f:%.0f', now, new_used)
    end
  elseif algo == 3 then
    local w = span
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
    ttl = stop
    value = string.format('%.0f:%.0f', idx, new_count)
  elseif algo == 5 then
    local w = span
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
    ttl = (idx + 2) * w - now
    value = string.format('%.0f:%.0f:%.0f', idx, new_cur, prev)
  elseif algo == 4 then
    -- Sliding-window log: a list of "ts:cost", oldest first, total cost <= cap.
    local w = span
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
    lg = { expired = expired, ttl = w }
    if op == 2 then
      allowed = 1
      lg.refund = cost
      lg.entries = entries
    elseif sum + cost <= cap then
      allowed, remaining = 1, cap - sum - cost
      if cost > 0 then reset = w elseif #entries > 0 then reset = entries[#entries][1] + w - now end
      lg.push = string.format('%.0f:%.0f', now, cost)
      lg.cost = cost
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
  end

  if op == 0 and allowed == 0 and not shadow then commit = false end
  if n == 1 then
    s_algo, s_allowed, s_value, s_ttl, s_lg = algo, allowed, value, ttl, lg
    out = { allowed, remaining, reset, retry }
  else
    local p = 4 * i
    plans[p - 3], plans[p - 2], plans[p - 1], plans[p] = algo, allowed, value or false, ttl or false
    logs[i] = lg or false
    out[p - 3], out[p - 2], out[p - 1], out[p] = allowed, remaining, reset, retry
  end
end

if op == 0 or op == 2 then
  for i = 1, n do
    local key = KEYS[i]
    local algo, allowed, value, ttl, lg = s_algo, s_allowed, s_value, s_ttl, s_lg
    if n > 1 then
      local p = 4 * i
      algo, allowed, value, ttl, lg = plans[p - 3], plans[p - 2], plans[p - 1], plans[p], logs[i]
    end
    if lg and lg.expired > 0 then redis.call('LTRIM', key, lg.expired, -1) end
    if op == 2 or (commit and allowed == 1) then
      if algo ~= 4 then
        local ms = math.ceil(ttl / 1000) + 1
        if ms < min_ms then ms = min_ms end
        redis.call('SET', key, value, 'PX', ms)
      elseif op == 2 then
        local c = lg.refund
        local m = #lg.entries
        while c > 0 and m > 0 do
          local e = lg.entries[m]
          if e[2] <= c then
            c = c - e[2]
            redis.call('RPOP', key)
            m = m - 1
          else
            redis.call('LSET', key, -1, string.format('%.0f:%.0f', e[1], e[2] - c))
            c = 0
          end
        end
      elseif lg.cost > 0 then
        local last = redis.call('LINDEX', key, -1)
        local lf = fields(last)
        if last and lf[1] >= now then
          redis.call('LSET', key, -1, string.format('%.0f:%.0f', lf[1], lf[2] + lg.cost))
        else
          redis.call('RPUSH', key, lg.push)
        end
        local ms = math.ceil(lg.ttl / 1000) + 1
        if ms < min_ms then ms = min_ms end
        redis.call('PEXPIRE', key, ms)
      end
    end
  end
end

return out or {}
