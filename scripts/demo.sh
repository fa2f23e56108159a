#!/usr/bin/env bash
# Sets up everything and runs the main job: a local dsv2-serve cluster — a
# controller, two expert workers, an attention worker and the router, each
# its own process on loopback (deploy/local/cluster.sh) — serves the bundled
# demo model (models/demo-v2: a small DeepSeek-V2 trained on the King James
# Bible, tools/demo_model), and `dsv2 client` streams a continuation through
# the router, then curl asks the same router over its OpenAI-compatible API. The cluster keeps running afterwards;
# the last lines say how to query, inspect and stop it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" dsv2 dsv2-controller dsv2-router dsv2-attention dsv2-expert
build="${BUILD_DIR:-$root/build}"
dsv2="$build/tools/dsv2/dsv2"
model="$root/models/demo-v2"
cluster="$root/deploy/local/cluster.sh"

# A cluster left by an earlier run is stopped and replaced. Every plane runs
# with TLS (a throwaway CA in build/cluster/tls); the router's API wants the
# CA and a bearer token, which `cluster.sh client-flags` prints.
addr="$("$cluster" up --model "$model" --attention 1 --experts 2)"
read -r -a client_flags <<<"$("$cluster" client-flags)"

"$dsv2" inspect --model "$model"
echo
"$cluster" status
echo
sampling=(--max-tokens 64 --temperature 0.8 --top-p 0.95 --seed 1)
echo "dsv2 client --addr $addr ${client_flags[*]} --prompt 'And it came to pass' ${sampling[*]}:"
"$dsv2" client --addr "$addr" "${client_flags[@]}" --prompt "And it came to pass" "${sampling[@]}" \
  --stats
echo
echo
# The same router over its OpenAI-compatible HTTP API (docs/openai.md).
url="$("$cluster" http-url)"
tls="$build/cluster/tls"
echo "curl $url/completions (the OpenAI-compatible API, same CA and token):"
curl -sS --cacert "$tls/ca.pem" -H "Authorization: Bearer $(cat "$tls/local.token")" \
  -H "Content-Type: application/json" "$url/completions" \
  -d '{"prompt": "In the beginning", "max_tokens": 24, "temperature": 0.8, "seed": 1}'
echo
echo
echo "The cluster keeps serving $model through the router at $addr"
echo "(logs in $build/cluster/)."
echo "  query:  $dsv2 client --addr $addr ${client_flags[*]} --prompt 'And the LORD said' --max-tokens 32 --temperature 0.8"
echo "  http:   curl --cacert $tls/ca.pem -H \"Authorization: Bearer \$(cat $tls/local.token)\" $url/models"
echo "  status: $cluster status   (with each process's Prometheus /metrics address)"
echo "  scrape: $cluster prometheus-config > prometheus.yml   (docs/observability.md)"
echo "  stop:   $cluster down"
