#!/usr/bin/env bash
# A dsv2-serve cluster on this machine's loopback: controller, expert
# workers, attention workers and the router, each a background process.
#
#   deploy/local/cluster.sh up --model DIR --attention N --experts M [--replicas R]
#       starts every process, waits until the router is healthy, prints the
#       router's address and returns.
#   deploy/local/cluster.sh down      stops them, router first: each tier drains (SIGTERM)
#                                     and exits before the next (SIGKILL after 60 s)
#   deploy/local/cluster.sh status    lists them with their health and metrics address
#   deploy/local/cluster.sh restart NAME
#                                     stops worker NAME (attention-N, expert-N) as a rolling
#                                     restart does (SIGTERM: it drains) and starts it again
#   deploy/local/cluster.sh prometheus-config
#                                     prints a Prometheus scrape configuration for every
#                                     process's /metrics (one job per role)
#   deploy/local/cluster.sh client-flags
#                                     prints the flags `dsv2 client` needs to call the router
#   deploy/local/cluster.sh http-url  prints the base URL of the router's OpenAI-compatible
#                                     HTTP API (https://127.0.0.1:PORT/v1; its CA and token are
#                                     those of client-flags)
#
# Metrics: every process serves Prometheus metrics on a loopback port the OS
# chooses (STATE/NAME.metrics.port; docs/observability.md): over HTTPS for
# scrapers with a certificate of the cluster CA — `up` makes one,
# STATE/tls/prometheus.pem, which prometheus-config names — or plain HTTP
# with --insecure.
#
# Security: `up` makes a throwaway cluster CA and one certificate per process
# (deploy/tls/make-certs.sh, in STATE/tls), runs every plane with mTLS, and
# serves the router's API with TLS and a bearer token (STATE/tls/api-tokens);
# `client-flags` prints the CA and token flags for `dsv2 client` and
# `dsv2 health`. --insecure runs everything in plaintext instead.
#
# Options of `up`:
#   --state DIR             where pids, ports and logs go (default build/cluster)
#   --router-port P         the router's port (default 0: the OS chooses)
#   --http-port P           the port of the router's HTTP API (default 0: the OS chooses)
#   --attention-flags "..." extra flags for every dsv2-attention (e.g. --micro_batches=2)
#   --expert-flags "..."    extra flags for every dsv2-expert
#   --timeout S             seconds to wait for the router's health (default 120)
#   --insecure              no TLS, no tokens: anyone who reaches a port can use it
# Binaries come from $BUILD_DIR (default build/); build them first
# (scripts/build.sh dsv2 dsv2-controller dsv2-router dsv2-attention dsv2-expert).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${BUILD_DIR:-$root/build}"
dsv2="$build/tools/dsv2/dsv2"

usage() { sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

command="${1:-}"
[ -n "$command" ] || usage
shift
if [ "$command" = restart ]; then restart_name="${1:-}"; shift || true; fi
state="$build/cluster"
model="" attention=1 experts=2 replicas=1 router_port=0 http_port=0 timeout=120
attention_flags="" expert_flags="" insecure=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --attention) attention="$2"; shift 2 ;;
    --experts) experts="$2"; shift 2 ;;
    --replicas) replicas="$2"; shift 2 ;;
    --state) state="$2"; shift 2 ;;
    --router-port) router_port="$2"; shift 2 ;;
    --http-port) http_port="$2"; shift 2 ;;
    --attention-flags) attention_flags="$2"; shift 2 ;;
    --expert-flags) expert_flags="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    -h|--help) usage ;;
    *) echo "cluster.sh: unknown option $1" >&2; usage ;;
  esac
done

# The processes of the cluster in start order: name per line in $state/procs.
procs() { [ -f "$state/procs" ] && cat "$state/procs" || true; }
alive() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
address() { [ -s "$state/$1.port" ] && echo "127.0.0.1:$(cat "$state/$1.port")"; }
metrics_address() { [ -s "$state/$1.metrics.port" ] && echo "127.0.0.1:$(cat "$state/$1.metrics.port")"; }
metrics_scheme() { if [ -f "$tls/ca.pem" ]; then echo https; else echo http; fi; }
tls="$state/tls"
# The flags that give process NAME (role ROLE) its identity, or --insecure.
identity() {
  if [ "$insecure" = 1 ]; then echo "--insecure"; return; fi
  "$root/deploy/tls/make-certs.sh" "$tls" cert "$1" "$2" >/dev/null
  echo "--tls_cert=$tls/$2.pem --tls_key=$tls/$2.key --tls_ca=$tls/ca.pem --tls_crl_dir=$tls/crl"
}
# What a client of the router (and `dsv2 health` of any process) needs.
client_flags() { [ -f "$state/client-flags" ] && cat "$state/client-flags" || true; }
# The base URL of the router's OpenAI-compatible API.
http_url() {
  [ -s "$state/router.http.port" ] || return 0
  local scheme=https
  [ -f "$tls/ca.pem" ] || scheme=http
  echo "$scheme://127.0.0.1:$(cat "$state/router.http.port")/v1"
}

# launch NAME BINARY ARGS...: runs it in the background (its command line
# kept in STATE/NAME.cmd for `restart`), waits for its port.
launch() {
  local name="$1"
  shift
  rm -f "$state/$name.port" "$state/$name.metrics.port"
  printf '%q ' "$@" >"$state/$name.cmd"
  nohup "$@" --port_file "$state/$name.port" --metrics_listen 127.0.0.1:0 \
    --metrics_port_file "$state/$name.metrics.port" >>"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
  for _ in $(seq 1 $((timeout * 10))); do
    [ -s "$state/$name.port" ] && return 0
    alive "$name" || { echo "cluster.sh: $name exited:" >&2; tail -5 "$state/$name.log" >&2; return 1; }
    sleep 0.1
  done
  echo "cluster.sh: $name did not start within ${timeout} s" >&2
  return 1
}

# start NAME BINARY ARGS...: a new process of the cluster.
start() {
  : >"$state/$1.log"
  echo "$1" >>"$state/procs"
  launch "$@"
}

# stop_one NAME: SIGTERM (it drains), SIGKILL after 60 s.
stop_one() {
  alive "$1" && kill -TERM "$(cat "$state/$1.pid")" 2>/dev/null || true
  for _ in $(seq 1 600); do alive "$1" || return 0; sleep 0.1; done
  echo "cluster.sh: $1 did not stop; killing it" >&2
  kill -KILL "$(cat "$state/$1.pid")" 2>/dev/null || true
}

# Stops the cluster tier by tier — router, attention workers, expert
# workers, controller — each tier draining (SIGTERM) and gone before the
# next is told, so that running requests finish and workers can still
# leave the cluster at the controller. SIGKILL after 60 s (past the
# default 30 s drain grace).
stop_all() {
  local tier name
  for tier in router attention- expert- controller; do
    local names=()
    for name in $(procs); do
      [[ "$name" == "$tier"* ]] && names+=("$name")
    done
    for name in "${names[@]}"; do
      alive "$name" && kill -TERM "$(cat "$state/$name.pid")" 2>/dev/null || true
    done
    for name in "${names[@]}"; do stop_one "$name"; done
  done
  rm -f "$state/procs" "$state"/*.pid "$state"/*.port "$state"/*.cmd "$state/router.addr" \
    "$state/client-flags"
}

case "$command" in
  up)
    [ -n "$model" ] || { echo "cluster.sh up: --model is required" >&2; exit 2; }
    [ -f "$model/config.json" ] || { echo "cluster.sh up: $model has no config.json" >&2; exit 2; }
    for pair in "attention:$attention" "experts:$experts" "replicas:$replicas" "timeout:$timeout"; do
      [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh up: --${pair%%:*} must be a positive integer, not '${pair#*:}'" >&2; exit 2; }
    done
    [ "$replicas" -le "$experts" ] || { echo "cluster.sh up: --replicas $replicas needs at least as many --experts (have $experts)" >&2; exit 2; }
    model="$(cd "$model" && pwd)"
    for b in services/controller/dsv2-controller services/router/dsv2-router \
             services/attention/dsv2-attention services/expert/dsv2-expert tools/dsv2/dsv2; do
      [ -x "$build/$b" ] || { echo "cluster.sh: $build/$b is missing; build it first" >&2; exit 1; }
    done
    mkdir -p "$state"
    if [ -n "$(procs)" ]; then
      echo "cluster.sh: stopping the cluster left in $state" >&2
      stop_all
    fi
    trap 'echo "cluster.sh: startup failed; stopping what started" >&2; stop_all' ERR
    rm -rf "$tls" "$state/client-flags"
    router_api=""
    if [ "$insecure" = 0 ]; then
      "$root/deploy/tls/make-certs.sh" "$tls" ca >/dev/null
      "$root/deploy/tls/make-certs.sh" "$tls" token local >/dev/null
      "$root/deploy/tls/make-certs.sh" "$tls" cert operator prometheus >/dev/null
      router_api="--api_tokens_file=$tls/api-tokens"
      echo "--tls-ca $tls/ca.pem --token-file $tls/local.token" >"$state/client-flags"
      awk '$1 == "local" {print $2}' "$tls/api-tokens" >"$tls/local.token"
    fi
    # shellcheck disable=SC2046
    start controller "$build/services/controller/dsv2-controller" --model "$model" \
      --listen 127.0.0.1:0 --replicas "$replicas" $(identity controller controller)
    controller="$(address controller)"
    for i in $(seq 1 "$experts"); do
      # shellcheck disable=SC2086,SC2046
      start "expert-$i" "$build/services/expert/dsv2-expert" --model "$model" \
        --controller "$controller" --worker_id "expert-$i" $(identity expert "expert-$i") \
        $expert_flags
    done
    for i in $(seq 1 "$attention"); do
      # shellcheck disable=SC2086,SC2046
      start "attention-$i" "$build/services/attention/dsv2-attention" --model "$model" \
        --controller "$controller" --worker_id "attention-$i" --kv_cache_mib 64 \
        $(identity attention "attention-$i") $attention_flags
    done
    # shellcheck disable=SC2086,SC2046
    start router "$build/services/router/dsv2-router" --model "$model" \
      --controller "$controller" --listen "127.0.0.1:$router_port" \
      --http_listen "127.0.0.1:$http_port" --http_port_file "$state/router.http.port" \
      $(identity router router) $router_api
    router="$(address router)"
    # shellcheck disable=SC2046
    if ! "$dsv2" health --addr "$router" --wait "$timeout" $(client_flags) >/dev/null; then
      echo "cluster.sh: the router at $router did not turn healthy within ${timeout} s" >&2
      false
    fi
    trap - ERR
    echo "$router" >"$state/router.addr"
    echo "cluster.sh: OpenAI-compatible API at $(http_url) (cluster.sh http-url)" >&2
    echo "$router"
    ;;
  down)
    stop_all
    ;;
  client-flags)
    client_flags
    ;;
  http-url)
    http_url
    ;;
  restart)
    # A worker stopped as on a rolling restart (SIGTERM: it drains) and
    # started again with the same id and flags; it rejoins with new ports.
    name="${restart_name:-}"
    [[ "$name" =~ ^(attention|expert)-[0-9]+$ ]] && [ -f "$state/$name.cmd" ] ||
      { echo "cluster.sh restart: no worker '$name' in $state (attention-N or expert-N)" >&2; exit 2; }
    stop_one "$name"
    eval "launch $name $(cat "$state/$name.cmd")"
    echo "cluster.sh: $name restarted (pid $(cat "$state/$name.pid"))" >&2
    ;;
  prometheus-config)
    [ -n "$(procs)" ] || { echo "cluster.sh: no cluster in $state" >&2; exit 1; }
    echo "scrape_configs:"
    for role in controller router attention expert; do
      echo "  - job_name: dsv2-$role"
      if [ "$(metrics_scheme)" = https ]; then
        echo "    scheme: https"
        echo "    tls_config: {ca_file: '$tls/ca.pem', cert_file: '$tls/prometheus.pem', key_file: '$tls/prometheus.key'}"
      fi
      echo "    static_configs:"
      for name in $(procs); do
        [[ "$name" == "$role"* ]] || continue
        m="$(metrics_address "$name" || true)"
        [ -n "$m" ] && echo "      - {targets: ['$m'], labels: {worker: '$name'}}"
      done
    done
    ;;
  status)
    [ -n "$(procs)" ] || { echo "no cluster in $state"; exit 0; }
    printf '%-14s %-8s %-22s %-41s %s\n' NAME PID ADDRESS METRICS HEALTH
    for name in $(procs); do
      pid="$(cat "$state/$name.pid" 2>/dev/null || echo -)"
      addr="$(address "$name" || echo -)"
      metrics="$(metrics_address "$name" || true)"
      metrics="${metrics:+$(metrics_scheme)://$metrics/metrics}"
      if alive "$name"; then
        # shellcheck disable=SC2046
        health="$("$dsv2" health --addr "$addr" $([ -f "$tls/ca.pem" ] && echo "--tls-ca $tls/ca.pem") 2>/dev/null || true)"
      else
        health="exited (log $state/$name.log)"
      fi
      printf '%-14s %-8s %-22s %-41s %s\n' "$name" "$pid" "$addr" "${metrics:--}" "${health:-NOT_SERVING}"
    done
    ;;
  *) usage ;;
esac
