#!/usr/bin/env bash
# deploy/local/cluster.sh as a user runs it: `up` returns the router's
# address once it is healthy, `status` lists every process SERVING with a
# metrics address that answers, `prometheus-config` lists them all, a chat
# request through the router (TLS and a bearer token, as `client-flags`
# says) streams the same text as dsv2-standalone (same data-plane dtype) and
# again after `restart expert-1`,
# callers without the token or the CA are refused, bad options are refused,
# and `down` stops every process. Usage: local_cluster_test.sh BUILD_DIR
# (run from the repo root).
set -euo pipefail
build="$1"
export BUILD_DIR="$build"
state="$(mktemp -d)"
cluster=deploy/local/cluster.sh
dsv2="$build/tools/dsv2/dsv2"
cleanup() {
  "$cluster" down --state "$state" >/dev/null 2>&1 || true
  [ -n "${standalone:-}" ] && { kill "$standalone" 2>/dev/null || true; wait "$standalone" 2>/dev/null || true; }
  rm -rf "$state"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$state"/*.log; do echo "== $f"; tail -5 "$f"; done; exit 1; }

# Refused options change nothing.
if "$cluster" up --model tests/data/tiny-lite --state "$state" --experts 0 2>"$state/err"; then
  fail "--experts 0 was accepted"
fi
grep -q "experts must be a positive integer" "$state/err" || fail "unclear error: $(cat "$state/err")"

addr="$("$cluster" up --model tests/data/tiny-lite --attention 1 --experts 2 --state "$state" \
  --timeout 60)" || fail "up failed"
[[ "$addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || fail "up printed '$addr', not an address"
read -r -a client_flags <<<"$("$cluster" client-flags --state "$state")"
[ "${#client_flags[@]}" -eq 4 ] || fail "client-flags printed '${client_flags[*]}'"
"$dsv2" health --addr "$addr" "${client_flags[@]}" >/dev/null || fail "router not healthy after up"

status="$("$cluster" status --state "$state")"
echo "$status"
for name in controller expert-1 expert-2 attention-1 router; do
  line="$(echo "$status" | grep -E "^$name +[0-9]+ +127\.0\.0\.1:[0-9]+ +https://127\.0\.0\.1:[0-9]+/metrics +SERVING$")" ||
    fail "$name not SERVING with a metrics address"
  # Its metrics address answers a scraper with the cluster's Prometheus
  # certificate, and refuses one without.
  url="$(echo "$line" | awk '{print $4}')"
  # (Read whole before grep: grep -q stopping early would fail curl's write.)
  scraped="$(curl -sf --cacert "$state/tls/ca.pem" --cert "$state/tls/prometheus.pem" \
    --key "$state/tls/prometheus.key" "$url")" || fail "$name: no metrics at $url"
  grep -q "^process_start_time_seconds " <<<"$scraped" || fail "$name: no process metrics at $url"
  code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$state/tls/ca.pem" "$url")"
  [ "$code" = 401 ] || fail "$name: a scraper without a certificate got $code"
done
# The scrape configuration lists every process under its role's job.
config="$("$cluster" prometheus-config --state "$state")"
for job in controller router attention expert; do
  echo "$config" | grep -q "job_name: dsv2-$job" || fail "no dsv2-$job job in: $config"
done
[ "$(echo "$config" | grep -c "targets: \['127.0.0.1:")" -eq 5 ] || fail "not 5 targets: $config"

"$build/services/standalone/dsv2-standalone" --model tests/data/tiny-lite --listen 127.0.0.1:0 \
  --port_file "$state/standalone.port.txt" --kv_cache_mib 32 --http_listen= 2>"$state/standalone.txt" &
standalone=$!
for _ in $(seq 1 300); do [ -s "$state/standalone.port.txt" ] && break; sleep 0.1; done
request=(--chat --prompt "What is the capital of France?" --max-tokens 24)
via_cluster="$("$dsv2" client --addr "$addr" "${client_flags[@]}" "${request[@]}")" ||
  fail "client through the router failed"
# Without the token, or in plaintext, the router refuses.
if "$dsv2" client --addr "$addr" --tls-ca "${client_flags[1]}" "${request[@]}" 2>"$state/err"; then
  fail "a client without a token was served"
fi
grep -q "Bearer" "$state/err" || fail "unclear refusal: $(cat "$state/err")"
if "$dsv2" client --addr "$addr" --token-file "${client_flags[3]}" "${request[@]}" 2>/dev/null; then
  fail "a plaintext client was served"
fi
via_standalone="$("$dsv2" client --addr "127.0.0.1:$(cat "$state/standalone.port.txt")" "${request[@]}")"
[ -n "$via_cluster" ] || fail "empty answer"
[ "$via_cluster" == "$via_standalone" ] || fail "cluster '$via_cluster' != standalone '$via_standalone'"

# A worker restarted as a rolling restart does: drained, started again with
# its id; the cluster serves again.
old_pid="$(cat "$state/expert-1.pid")"
"$cluster" restart expert-1 --state "$state" 2>"$state/restart.err" || fail "restart: $(cat "$state/restart.err")"
[ "$(cat "$state/expert-1.pid")" != "$old_pid" ] || fail "restart kept the old process"
kill -0 "$old_pid" 2>/dev/null && fail "the old expert-1 still runs"
"$dsv2" health --addr "$addr" "${client_flags[@]}" --wait 60 >/dev/null || fail "router not healthy after restart"
after="$("$dsv2" client --addr "$addr" "${client_flags[@]}" "${request[@]}")" || fail "client after restart"
[ "$after" == "$via_standalone" ] || fail "after restart '$after' != standalone '$via_standalone'"
if "$cluster" restart router --state "$state" 2>"$state/err"; then fail "restart took the router"; fi
grep -q "attention-N or expert-N" "$state/err" || fail "unclear restart refusal: $(cat "$state/err")"

pids="$(cat "$state"/*.pid)"
"$cluster" down --state "$state" 2>"$state/down.err"
if grep -q "killing" "$state/down.err"; then fail "down had to kill: $(cat "$state/down.err")"; fi
for pid in $pids; do
  if kill -0 "$pid" 2>/dev/null; then fail "process $pid still running after down"; fi
done
"$cluster" status --state "$state" | grep -q "no cluster" || fail "status after down"
echo "PASS"
