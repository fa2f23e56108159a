#!/usr/bin/env bash
# Runs one load-test scenario end to end (docs/load-tests.md): brings up what
# it needs on loopback (a local cluster with deploy/local/cluster.sh, or
# dsv2-standalone), drives it with dsv2-load, runs the scenario's own
# actions meanwhile (chaos), checks the outcome, tears everything down and
# exits non-zero if a check failed.
#
#   load-tests/run.sh SCENARIO [--model DIR] [--target cluster|standalone] [--out DIR]
#                              [-- extra dsv2-load flags]
#
# SCENARIO is a name in load-tests/scenarios/ (steady, ramp, overload,
# shared-prefix, chaos, soak) or a path. --model and --target override the
# scenario's (the bundled demo model; chaos needs the cluster); results go
# to --out (default build/load-tests/):
# SCENARIO.json (every request's timings), SCENARIO.txt (the summary), and
# SCENARIO.png for ramps. Binaries come from $BUILD_DIR (default build/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
export BUILD_DIR="$build"
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ $# -ge 1 ] || usage
scenario="$1"
shift
[ -f "$scenario" ] || scenario="$root/load-tests/scenarios/$scenario.sh"
[ -f "$scenario" ] || { echo "run.sh: no scenario $1 (load-tests/scenarios/)" >&2; exit 2; }
name="$(basename "$scenario" .sh)"
out="$build/load-tests"
model_flag=""
target_flag=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model_flag="$2"; shift 2 ;;
    --target) target_flag="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown option $1" >&2; usage ;;
  esac
done

# What a scenario sets (defaults here): TARGET (cluster or standalone),
# MODEL, CLUSTER_FLAGS, STANDALONE_FLAGS, LOAD_FLAGS (an array), and
# optionally the functions during (run in the background while the load
# runs) and check (after; gets the JSON path).
TARGET=cluster
MODEL="$root/models/demo-v2"
CLUSTER_FLAGS=(--attention 1 --experts 2)
STANDALONE_FLAGS=(--kv_cache_mib 256)
LOAD_FLAGS=()
during() { :; }
check() { :; }
# shellcheck source=/dev/null
source "$scenario"
[ -z "$model_flag" ] || MODEL="$model_flag"
[ -z "$target_flag" ] || TARGET="$target_flag"
[[ "$TARGET" =~ ^(cluster|standalone)$ ]] || { echo "run.sh: --target must be cluster or standalone" >&2; exit 2; }
mkdir -p "$out"
state="$(mktemp -d)"
cluster="$root/deploy/local/cluster.sh"
load="$build/tools/load/dsv2-load"
[ -x "$load" ] || { echo "run.sh: $load is missing; build it (scripts/build.sh dsv2-load)" >&2; exit 1; }

server_pid=""
cleanup() {
  if [ "$TARGET" = cluster ]; then "$cluster" down --state "$state/cluster" >/dev/null 2>&1 || true; fi
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  [ -n "${during_pid:-}" ] && kill "$during_pid" 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT

# The target, and the flags dsv2-load needs to reach it.
target_flags=()
if [ "$TARGET" = cluster ]; then
  addr="$("$cluster" up --model "$MODEL" --state "$state/cluster" "${CLUSTER_FLAGS[@]}")"
  read -r -a target_flags <<<"$("$cluster" client-flags --state "$state/cluster")"
  metrics_urls() {
    for f in "$state"/cluster/attention-*.metrics.port; do echo "https://127.0.0.1:$(cat "$f")/metrics"; done
  }
  metrics_curl=(curl -sf --cacert "$state/cluster/tls/ca.pem" --cert "$state/cluster/tls/prometheus.pem"
                --key "$state/cluster/tls/prometheus.key")
else
  "$build/services/standalone/dsv2-standalone" --model "$MODEL" --listen 127.0.0.1:0 \
    --port_file "$state/port" --metrics_listen 127.0.0.1:0 --metrics_port_file "$state/metrics.port" \
    --http_listen= "${STANDALONE_FLAGS[@]}" 2>"$state/standalone.log" &
  server_pid=$!
  for _ in $(seq 1 1200); do [ -s "$state/port" ] && break; sleep 0.1; done
  [ -s "$state/port" ] || { echo "run.sh: dsv2-standalone did not start" >&2; tail "$state/standalone.log" >&2; exit 1; }
  addr="127.0.0.1:$(cat "$state/port")"
  metrics_urls() { echo "http://127.0.0.1:$(cat "$state/metrics.port")/metrics"; }
  metrics_curl=(curl -sf)
fi
# The sum of a metric over the serving processes (attention workers or standalone).
metric_sum() {
  for url in $(metrics_urls); do "${metrics_curl[@]}" "$url"; done |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%.0f\n", s}'
}

echo "run.sh: $name against $TARGET at $addr ($MODEL)" >&2
during &
during_pid=$!
status=0
"$load" --addr "$addr" "${target_flags[@]}" --json "$out/$name.json" "${LOAD_FLAGS[@]}" \
  "${extra[@]}" | tee "$out/$name.txt" || status=$?
wait "$during_pid" || status=$?
during_pid=""
[ "$status" = 0 ] || { echo "run.sh: $name: the load or the scenario's actions failed" >&2; exit 1; }
if ! check "$out/$name.json"; then
  # Keep what explains it: every process's log.
  rm -rf "$out/$name-logs" && mkdir -p "$out/$name-logs"
  cp "$state"/*.log "$state"/cluster/*.log "$out/$name-logs/" 2>/dev/null || true
  echo "run.sh: $name: FAILED its checks; logs in $out/$name-logs/" >&2
  exit 1
fi
echo "run.sh: $name passed; results in $out/$name.{json,txt}" >&2
