#!/usr/bin/env bash
# A load tool from PyPI against dsv2-standalone's OpenAI-compatible HTTP API,
# cross-checked with the server's own counters from the same run: guidellm
# (installed into a venv outside the repository) sends REQUESTS synthetic
# requests at a fixed concurrency, and the script prints guidellm's tables
# next to the server's /metrics deltas over the run (requests finished,
# prompt and generated tokens, mean time to first token).
#
#   bench/guidellm_crosscheck.sh [MODEL_DIR] [REQUESTS] [CONCURRENCY]
#   (defaults: models/demo-v2 16 2; GUIDELLM: the guidellm binary,
#   default /root/venv-ref/bin/guidellm — `pip install guidellm` there)
#
# Run from the repository root after building dsv2-standalone.
set -euo pipefail
model="$(realpath "${1:-models/demo-v2}")"  # Absolute: guidellm loads its tokenizer by the served name.
requests="${2:-16}"
concurrency="${3:-2}"
guidellm="${GUIDELLM:-/root/venv-ref/bin/guidellm}"
build="${BUILD_DIR:-build}"
[ -x "$guidellm" ] || { echo "guidellm not found at $guidellm (set GUIDELLM)" >&2; exit 2; }
state="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$state"' EXIT

"$build/services/standalone/dsv2-standalone" --model "$model" --listen 127.0.0.1:0 \
  --http_listen 127.0.0.1:0 --http_port_file "$state/http.port" \
  --metrics_listen 127.0.0.1:0 --metrics_port_file "$state/metrics.port" \
  --kv_cache_mib 256 >"$state/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  [ -s "$state/http.port" ] && [ -s "$state/metrics.port" ] && break
  sleep 0.1
done
http="http://127.0.0.1:$(cat "$state/http.port")"
metrics="http://127.0.0.1:$(cat "$state/metrics.port")/metrics"

# Sum of a metric's samples whose name (and labels) start with $1.
metric() { curl -s "$metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%.6f", s }'; }
snapshot() {
  echo "$(metric 'dsv2:request_success_total') $(metric 'dsv2:prompt_tokens_total') \
$(metric 'dsv2:generation_tokens_total') $(metric 'dsv2:time_to_first_token_seconds_sum') \
$(metric 'dsv2:time_to_first_token_seconds_count')"
}
read -r r0 p0 g0 ts0 tc0 <<<"$(snapshot)"
(cd "$state" && "$guidellm" run --backend "kind=openai_http,target=$http" \
  --profile "kind=concurrent,streams=$concurrency" --constraint "kind=max_requests,count=$requests" \
  --data kind=synthetic_text,prompt_tokens=32,output_tokens=32 --disable-console-interactive) \
  2>&1 | grep -vE '^\s*$' | tail -40
read -r r1 p1 g1 ts1 tc1 <<<"$(snapshot)"
awk -v r="$r0 $r1" -v p="$p0 $p1" -v g="$g0 $g1" -v ts="$ts0 $ts1" -v tc="$tc0 $tc1" 'BEGIN {
  split(r, R); split(p, P); split(g, G); split(ts, TS); split(tc, TC)
  n = TC[2] - TC[1]
  printf "\nThe server over the same run (its /metrics before and after):\n"
  printf "  requests finished     %d\n", R[2] - R[1]
  printf "  prompt tokens         %d (computed; prefix-cache hits excluded)\n", P[2] - P[1]
  printf "  generated tokens      %d\n", G[2] - G[1]
  printf "  mean TTFT             %.1f ms over %d requests\n", (n > 0 ? 1000 * (TS[2] - TS[1]) / n : 0), n
}'
