#!/usr/bin/env bash
# The Python example against a real dsv2-standalone: greedy tokens equal the
# reference, the health service answers SERVING, and reflection lists the
# API; then against one with TLS and bearer tokens: served with --tls-ca and
# --token-file, refused without the token. Usage: python_example_test.sh
# STANDALONE PYTHON (run from the repo root).
set -euo pipefail
standalone="$1"
python="$2"
if ! "$python" -c "import grpc, grpc_tools, grpc_health, grpc_reflection" 2>/dev/null; then
  echo "SKIPPED: $python lacks grpcio/grpcio-tools (scripts/install-deps.sh installs them)"
  exit 77
fi
work="$(mktemp -d)"
trap 'kill "$pid" ${tls_pid:-} 2>/dev/null || true; wait "$pid" ${tls_pid:-} 2>/dev/null || true; rm -rf "$work"' EXIT
"$standalone" --model=tests/data/tiny-v2 --listen=127.0.0.1:0 --port_file="$work/port" \
  --kv_cache_mib=32 --http_listen= 2>"$work/server.log" &
pid=$!
for _ in $(seq 1 3000); do [ -s "$work/port" ] && break; sleep 0.01; done
[ -s "$work/port" ] || { cat "$work/server.log"; echo "server did not start"; exit 1; }
addr="127.0.0.1:$(cat "$work/port")"
export DSV2_PY_STUBS="$work/stubs"

prompt=$("$python" -c "import json; print(','.join(map(str, json.load(open('tests/data/tiny-v2/golden.json'))['prompt'])))")
expected=$("$python" -c "import json; print(' '.join(map(str, json.load(open('tests/data/tiny-v2/golden.json'))['generated'])))")
count=$(echo "$expected" | wc -w)
actual=$("$python" examples/python/generate.py --addr "$addr" --token-ids "$prompt" \
  --max-tokens "$count" --ignore-eos --print-ids 2>"$work/client.log")
if [ "$actual" != "$expected" ]; then
  echo "tokens differ:"; echo " expected: $expected"; echo " actual:   $actual"; cat "$work/client.log"; exit 1
fi
grep -q "FINISH_REASON_LENGTH; prompt 40, completion $count" "$work/client.log" || { cat "$work/client.log"; exit 1; }

"$python" - "$addr" <<'PY'
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "dsv2.v1.Generation"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, (service, status)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for r in responses for s in r.list_services_response.service}
    for wanted in ("dsv2.v1.Generation", "grpc.health.v1.Health"):
        assert wanted in names, (wanted, names)
PY
# TLS and a bearer token.
deploy/tls/make-certs.sh "$work/tls" ca >/dev/null
deploy/tls/make-certs.sh "$work/tls" cert router server >/dev/null
deploy/tls/make-certs.sh "$work/tls" token py >"$work/py.token"
"$standalone" --model=tests/data/tiny-v2 --listen=127.0.0.1:0 --port_file="$work/tls_port" \
  --kv_cache_mib=32 --tls_cert="$work/tls/server.pem" --tls_key="$work/tls/server.key" \
  --api_tokens_file="$work/tls/api-tokens" --http_listen= 2>"$work/tls_server.log" &
tls_pid=$!
for _ in $(seq 1 3000); do [ -s "$work/tls_port" ] && break; sleep 0.01; done
[ -s "$work/tls_port" ] || { cat "$work/tls_server.log"; echo "TLS server did not start"; exit 1; }
tls_addr="127.0.0.1:$(cat "$work/tls_port")"
actual=$("$python" examples/python/generate.py --addr "$tls_addr" --tls-ca "$work/tls/ca.pem" \
  --token-file "$work/py.token" --token-ids "$prompt" --max-tokens "$count" --ignore-eos \
  --print-ids 2>"$work/client.log")
[ "$actual" == "$expected" ] || { echo "TLS tokens differ: $actual"; cat "$work/client.log"; exit 1; }
if "$python" examples/python/generate.py --addr "$tls_addr" --tls-ca "$work/tls/ca.pem" \
  --token-ids "$prompt" --max-tokens 2 2>"$work/client.log"; then
  echo "served without a token"; exit 1
fi
grep -q "UNAUTHENTICATED" "$work/client.log" || { cat "$work/client.log"; exit 1; }

echo "python example: $count tokens equal the reference, in plaintext and with TLS + a token;" \
  "refused without the token; health SERVING; reflection lists the API"
