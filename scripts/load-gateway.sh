#!/usr/bin/env bash
# Load run of the gateway example with wrk, on loopback, in-memory backends.
#
#   scripts/load-gateway.sh            # 10 s per scenario, 2 threads, 64 connections
#   DURATION=30s CONNECTIONS=128 scripts/load-gateway.sh
#
# Scenarios (same process, same run):
#   all layers: GET /api/v1/quotes/AAPL as a professional user: identity,
#               request event on the bus, rate limiter (IP + tenant + user rules,
#               tiers, costs; limits set high so nothing is rejected), flag
#               evaluation, two-level cache hit (L1), JSON response with the
#               RateLimit headers;
#   bare:       GET /bare, a constant JSON answer outside every layer.
# Writes requests/s and p99 latency of both to
# $CARGO_TARGET_DIR/finsight-bench/gateway.jsonl (finsight_benches::Record
# format), which scripts/bench-report.py puts into BENCHMARKS.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
DURATION="${DURATION:-10s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
OUT_DIR="$TARGET/finsight-bench"
OUT="$OUT_DIR/gateway.jsonl"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "load-gateway: need root or sudo to run: $*" >&2; return 1; fi
}

if ! command -v wrk >/dev/null; then
    echo "load-gateway: installing wrk (Debian package)"
    as_root apt-get install -y wrk >/dev/null 2>&1 || {
        as_root apt-get update >/dev/null
        as_root apt-get install -y wrk >/dev/null
    }
fi

echo "load-gateway: building the gateway (release)"
(cd "$ROOT" && cargo build --release -p gateway --quiet)
BIN="$TARGET/release/gateway"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DS_PORT="$(free_port)"
GW_PORT="$(free_port)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The gateway's own rules, with limits no load run reaches: the limiter still
# decides every request (all rules, tiers, costs), it just never says no.
cat >"$WORK/rules.json" <<'EOF'
{
  "rules": [
    {"id": "ip", "scope": "ip", "algorithm": "sliding_window_counter", "limit": 50000000, "window": "1m"},
    {"id": "tenant", "scope": "tenant", "algorithm": "token_bucket", "limit": 50000000, "window": "1m"},
    {"id": "user", "scope": "user", "algorithm": "sliding_window_counter", "limit": 50000000, "window": "1m",
     "tiers": {"professional": {"limit": 50000000}}}
  ],
  "costs": {"/api/v1/analytics/*": 5}
}
EOF

"$BIN" downstream "127.0.0.1:$DS_PORT" >"$WORK/downstream.log" 2>&1 &
PIDS+=($!)
env -u FINSIGHT_REDIS_URL -u FINSIGHT_AMQP_URL RUST_LOG=error \
    GATEWAY_ADDR="127.0.0.1:$GW_PORT" GATEWAY_DOWNSTREAM_URL="http://127.0.0.1:$DS_PORT" \
    GATEWAY_RULES="$WORK/rules.json" "$BIN" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)

URL="http://127.0.0.1:$GW_PORT"
HDR=(-H "x-user-id: load-user" -H "x-tenant-id: load-tenant" -H "x-tier: professional")
ready=""
for _ in $(seq 1 100); do
    if curl -fsS "$URL/health" >/dev/null 2>&1 &&
        curl -fsS "http://127.0.0.1:$DS_PORT/quotes/AAPL" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
[ -n "$ready" ] || { echo "load-gateway: gateway did not start" >&2; cat "$WORK/gateway.log" >&2; exit 1; }
# Warm the cache: the load hits L1.
curl -fsS "${HDR[@]}" "$URL/api/v1/quotes/AAPL" >/dev/null

run() { # name url [headers...]
    local name="$1" url="$2"; shift 2
    echo "load-gateway: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $url ($name)" >&2
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" | tee "$WORK/$name.txt" >&2
}
run layers "$URL/api/v1/quotes/AAPL" "${HDR[@]}"
run bare "$URL/bare"

mkdir -p "$OUT_DIR"
python3 - "$WORK/layers.txt" "$WORK/bare.txt" "$OUT" "$THREADS" "$CONNECTIONS" "$DURATION" <<'EOF'
import json, re, sys
layers_f, bare_f, out, threads, conns, duration = sys.argv[1:]

def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    p99_ms = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    if bad:
        sys.exit(f"load-gateway: {path}: {bad.group(1)} non-2xx responses; the figures would not mean anything")
    if errors:
        print(f"load-gateway: {path}: socket errors: {errors.group(1)}", file=sys.stderr)
    return rps, p99_ms

l_rps, l_p99 = parse(layers_f)
b_rps, b_p99 = parse(bare_f)
setup = f"wrk {threads} threads, {conns} connections, {duration}, loopback, in-memory backends"
records = [
    {"krate": "gateway", "name": f"requests/s, all layers (GET /api/v1/quotes, L1 hit; {setup})",
     "value": round(l_rps, 1), "unit": "req/s", "higher_is_better": True,
     "peer": "bare handler (GET /bare)", "peer_value": round(b_rps, 1), "target": None},
    {"krate": "gateway", "name": f"p99 latency, all layers (GET /api/v1/quotes, L1 hit; {setup})",
     "value": round(l_p99, 3), "unit": "ms", "higher_is_better": False,
     "peer": "bare handler (GET /bare)", "peer_value": round(b_p99, 3), "target": None},
]
with open(out, "w") as f:
    for r in records:
        f.write(json.dumps(r) + "\n")
print(f"all layers: {l_rps:.0f} req/s, p99 {l_p99:.3f} ms")
print(f"bare:       {b_rps:.0f} req/s, p99 {b_p99:.3f} ms")
print(f"ratio (all layers / bare): {l_rps / b_rps:.2f} of the throughput, {l_p99 / b_p99:.2f}x the p99")
print(f"written: {out}")
EOF
