#!/usr/bin/env bash
# A multi-host cluster on one machine. The controller, two expert workers,
# an attention worker, the router and a client each run in a network
# namespace of their own with their own address on a private /24, joined by
# veth pairs to a bridge that lives in one more namespace, so nothing is
# added to the host's network. The data plane is UCX over TCP between the
# namespaces (UCX_TLS=tcp).
#
# Every process runs with mTLS: a test CA and a certificate per process for
# its namespace's address (deploy/tls/make-certs.sh).
#
# Checks: the router turns SERVING; a greedy request through it from the
# client namespace gives exactly the tokens dsv2-standalone gives (same
# default --data_plane_dtype; standalone runs on the client namespace's
# loopback); the expert and attention workers published their namespace
# addresses as data-plane addresses; and the attention worker holds
# established TCP connections to each expert worker's address, one of them
# to the published UCX listener, that carried at least every combine's
# bytes.
#
# Every process and namespace is removed on every exit path; namespaces
# left by a run that was SIGKILLed (the trap cannot run then) are removed,
# with what runs in them, by the next run. Needs root (CAP_NET_ADMIN and
# CAP_SYS_ADMIN) and bridge/veth support; where a namespace, veth or bridge
# cannot be made it prints "SKIP: cannot create network namespaces here:
# <reason>" and exits 77.
#
# Usage: netns_cluster_test.sh DSV2 CONTROLLER ROUTER ATTENTION EXPERT STANDALONE
# (run from the repository root).
set -euo pipefail
[ $# -eq 6 ] || { echo "usage: $0 DSV2 CONTROLLER ROUTER ATTENTION EXPERT STANDALONE" >&2; exit 2; }
dsv2="$1" controller_bin="$2" router_bin="$3" attention_bin="$4" expert_bin="$5" standalone_bin="$6"
model=tests/data/tiny-v2
prompt=0,40,41,42
max_tokens=12
deadline=$((SECONDS + 120))  # For everything but cleanup; below ctest's TIMEOUT.

skip() { echo "SKIP: cannot create network namespaces here: $*"; exit 77; }
command -v ip >/dev/null || skip "the ip command (iproute2) is missing"
command -v ss >/dev/null || skip "the ss command (iproute2) is missing"
[ -r "$model/config.json" ] || { echo "FAIL: run from the repository root ($model is missing)"; exit 1; }

# Names carry the test's PID, so parallel runs do not clash and the
# namespaces of a killed run can be told from a live one's.
prefix=dsv2nt
tag="$prefix-$$"
bridge_ns="$tag-br"
roles=(controller expert1 expert2 attention router client)
subnet="10.$((RANDOM % 200 + 20)).$(($$ % 250 + 1))"
declare -A ns ip
for i in "${!roles[@]}"; do
  ns[${roles[$i]}]="$tag-${roles[$i]}"
  ip[${roles[$i]}]="$subnet.$((i + 10))"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/$tag.XXXXXX")"
pids=()
namespaces=()
cleanup() {
  local status=$?
  set +e
  trap - INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 50); do
    local running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    [ "$running" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && echo "pid $pid did not stop on SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  for name in "${namespaces[@]}"; do
    # Whatever still runs inside is this test's.
    for pid in $(ip netns pids "$name" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns delete "$name" 2>/dev/null || echo "could not delete namespace $name"
  done
  if [ "$status" -ne 0 ] && [ "$status" -ne 77 ]; then
    for log in "$work"/*.log; do
      [ -s "$log" ] && { echo "--- $(basename "$log") (last 20 lines)"; tail -20 "$log"; }
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Namespaces (and work folders) of earlier runs whose test process is gone.
for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$prefix-[0-9]*-" || true); do
  owner="${name#"$prefix"-}"
  owner="${owner%%-*}"
  kill -0 "$owner" 2>/dev/null && continue
  echo "removing namespace $name left by an earlier run (pid $owner)"
  for pid in $(ip netns pids "$name" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  ip netns delete "$name" 2>/dev/null || true
done
for dir in "${TMPDIR:-/tmp}/$prefix"-*; do
  owner="${dir##*/"$prefix"-}"
  owner="${owner%%.*}"
  if [ -d "$dir" ] && [[ "$owner" =~ ^[0-9]+$ ]] && ! kill -0 "$owner" 2>/dev/null; then
    rm -rf "$dir"
  fi
done

# net COMMAND...: a step of building the network; if it fails this machine
# cannot make namespaces, and the test is skipped with the reason.
net() {
  local err rc=0
  err="$("$@" 2>&1)" || rc=$?
  [ "$rc" -eq 0 ] || skip "'$*' failed: ${err:-exit status $rc}"
}
make_ns() {
  net ip netns add "$1"
  namespaces+=("$1")
  net ip netns exec "$1" ip link set lo up
}

make_ns "$bridge_ns"
net ip -n "$bridge_ns" link add br0 type bridge
net ip -n "$bridge_ns" link set br0 up
for i in "${!roles[@]}"; do
  role="${roles[$i]}"
  make_ns "${ns[$role]}"
  net ip -n "$bridge_ns" link add "v$i" type veth peer name eth0 netns "${ns[$role]}"
  net ip -n "$bridge_ns" link set "v$i" master br0 up
  net ip -n "${ns[$role]}" addr add "${ip[$role]}/24" dev eth0
  net ip -n "${ns[$role]}" link set eth0 up
done
echo "namespaces $tag-{$(IFS=,; echo "${roles[*]}")} on $subnet.0/24, bridged in $bridge_ns"

# From here on, failures are the cluster's, not the machine's.
fail() { echo "FAIL: $*"; exit 1; }
left() { local s=$((deadline - SECONDS)); echo $((s > 1 ? s : 1)); }
export UCX_TLS=tcp

# start NAME ROLE BINARY ARGS...: runs BINARY in ROLE's namespace; with a
# NAME ending in "!" it does not wait for the port file ($work/NAME.port).
start() {
  local name="${1%!}" wait=1 role="$2" binary="$3"
  [ "$name" == "$1" ] || wait=0
  shift 3
  ip netns exec "${ns[$role]}" "$binary" --port_file="$work/$name.port" "$@" \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
  [ "$wait" -eq 0 ] || wait_port "$name" $!
}
wait_port() {
  while [ ! -s "$work/$1.port" ]; do
    kill -0 "$2" 2>/dev/null || fail "$1 exited at startup"
    [ "$SECONDS" -lt "$deadline" ] || fail "$1 did not write its port in time"
    sleep 0.05
  done
}
port() { cat "$work/$1.port"; }
in_ns() { local role="$1"; shift; ip netns exec "${ns[$role]}" "$@"; }

# Every process has a certificate for its namespace's address, as on real
# hosts; the client trusts the CA.
certs="$work/tls"
deploy/tls/make-certs.sh "$certs" ca >/dev/null
identity() {  # ROLE ID NS-ROLE: the TLS flags of process ID.
  deploy/tls/make-certs.sh "$certs" cert "$1" "$2" "IP:${ip[$3]}" >/dev/null
  echo "--tls_cert=$certs/$2.pem --tls_key=$certs/$2.key --tls_ca=$certs/ca.pem"
}

# The reference first, so that it loads while the cluster starts.
start 'standalone!' client "$standalone_bin" --model="$model" --listen=127.0.0.1:0 --kv_cache_mib=32 \
  --http_listen=
standalone_pid=$!
# shellcheck disable=SC2046
start controller controller "$controller_bin" --model="$model" \
  --listen="${ip[controller]}:0" --warmup_ms=500 $(identity controller controller controller)
controller="${ip[controller]}:$(port controller)"
for e in expert1 expert2; do
  # shellcheck disable=SC2046
  start "$e" "$e" "$expert_bin" --model="$model" --controller="$controller" --worker_id="$e" \
    --listen="${ip[$e]}:0" --data_listen="${ip[$e]}:0" --drain_s=0 $(identity expert "$e" "$e")
done
# shellcheck disable=SC2046
start attention attention "$attention_bin" --model="$model" --controller="$controller" \
  --worker_id=attention --listen="${ip[attention]}:0" --data_listen="${ip[attention]}:0" \
  --kv_cache_mib=64 $(identity attention attention attention)
# shellcheck disable=SC2046
start router router "$router_bin" --model="$model" --controller="$controller" \
  --listen="${ip[router]}:0" --drain_grace_s=1 --http_listen= $(identity router router router)
router="${ip[router]}:$(port router)"
wait_port standalone "$standalone_pid"
standalone="127.0.0.1:$(port standalone)"

in_ns client "$dsv2" health --addr="$router" --tls-ca="$certs/ca.pem" --wait="$(left)" \
  >"$work/health.log" 2>&1 || fail "$router did not turn SERVING: $(cat "$work/health.log")"
in_ns client "$dsv2" health --addr="$standalone" --wait="$(left)" >"$work/health.log" 2>&1 ||
  fail "$standalone did not turn SERVING: $(cat "$work/health.log")"

request=(--tokens="$prompt" --max-tokens="$max_tokens" --ignore-eos)
cluster_out="$(in_ns client "$dsv2" client --addr="$router" --tls-ca="$certs/ca.pem" \
  --timeout="$(left)" "${request[@]}" \
  2>"$work/client.log")" || fail "dsv2 client through the router failed: $(cat "$work/client.log")"
standalone_out="$(in_ns client "$dsv2" client --addr="$standalone" --timeout="$(left)" \
  "${request[@]}" 2>"$work/client.log")" ||
  fail "dsv2 client against dsv2-standalone failed: $(cat "$work/client.log")"
[ "$(wc -w <<<"$cluster_out")" -eq "$max_tokens" ] ||
  fail "expected $max_tokens tokens through the router, got '$cluster_out'"
[ "$cluster_out" == "$standalone_out" ] ||
  fail "the cluster's tokens differ from dsv2-standalone's:
  cluster:    $cluster_out
  standalone: $standalone_out"
echo "tokens from ${ns[client]} through the router in ${ns[router]} equal dsv2-standalone's: $cluster_out"

# The data plane crossed namespaces over TCP.
data_address() {  # The ucx:// address NAME's log says it published.
  grep -o "data plane ucx://[0-9.]*:[0-9]*" "$work/$1.log" | head -1 | sed 's|.*ucx://||'
}
attention_data="$(data_address attention)"
[ "${attention_data%:*}" == "${ip[attention]}" ] ||
  fail "the attention worker published data-plane address '$attention_data', not one on ${ip[attention]}"
connections="$(in_ns attention ss -tni state established)"
# Bytes received by the attention worker over established TCP connections
# from PEER (an address, or address:port).
received_from() {
  awk -v peer="$1" '
    $1 ~ /^[0-9]+$/ {  # "Recv-Q Send-Q Local Peer": a connection; the next line is its info.
      p = $4; gsub(/\[|\]|::ffff:/, "", p)
      host = p; sub(/:[0-9]+$/, "", host)
      current = (p == peer || host == peer); found += current; next
    }
    current { for (i = 1; i <= NF; i++) if ($i ~ /^bytes_received:/) { split($i, b, ":"); sum += b[2] } }
    END { print (found ? sum : -1) }' <<<"$connections"
}
# Every prompt and generated token but the last goes through each MoE layer
# once, and each reaches at least one expert worker, whose combine returns
# hidden_size bf16 values for it.
config="$(tr -d ' \n' <"$model/config.json")"
field() { grep -o "\"$1\":[0-9]*" <<<"$config" | cut -d: -f2; }
moe_layers=$(($(field num_hidden_layers) - $(field first_k_dense_replace)))
tokens_in=$(($(tr ',' ' ' <<<"$prompt" | wc -w) + max_tokens - 1))
min_bytes=$((tokens_in * moe_layers * $(field hidden_size) * 2))
total=0
for e in expert1 expert2; do
  data="$(data_address "$e")"
  [ "${data%:*}" == "${ip[$e]}" ] ||
    fail "$e published data-plane address '$data', not one on ${ip[$e]}"
  [ "$(received_from "$data")" -ge 0 ] ||
    fail "no established TCP connection from ${ns[attention]} to $e's UCX listener $data:
$connections"
  bytes="$(received_from "${ip[$e]}")"
  [ "$bytes" -gt 0 ] ||
    fail "no bytes over TCP from $e (${ip[$e]}) to ${ns[attention]}:
$connections"
  total=$((total + bytes))
  echo "$e: data plane ucx://$data; the attention worker received $bytes bytes over TCP from ${ip[$e]}"
done
[ "$total" -ge "$min_bytes" ] ||
  fail "the attention worker received $total bytes from the expert workers over TCP, less than the $min_bytes bytes of the combines"
echo "PASS: $total bytes of expert results over TCP between namespaces (combines need >= $min_bytes)"
