#!/usr/bin/env bash
# Sets up everything and runs the main job: dsv2-standalone serves the
# bundled V2-shaped test model (tests/data/tiny-v2) over gRPC, and
# `dsv2 client` streams an example answer from it. The server keeps
# running afterwards; the last lines say how to query and stop it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" dsv2 dsv2-standalone
build="${BUILD_DIR:-$root/build}"
dsv2="$build/tools/dsv2/dsv2"
model="$root/tests/data/tiny-v2"
state="$build/demo"
mkdir -p "$state"

# A server left by an earlier run is stopped first.
if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
  kill "$(cat "$state/pid")"
  while kill -0 "$(cat "$state/pid")" 2>/dev/null; do sleep 0.1; done
fi
rm -f "$state/port"
nohup "$build/services/standalone/dsv2-standalone" --model "$model" --listen 127.0.0.1:0 \
  --port_file "$state/port" >"$state/server.log" 2>&1 &
echo $! >"$state/pid"
for _ in $(seq 1 600); do
  [ -s "$state/port" ] && break
  kill -0 "$(cat "$state/pid")" 2>/dev/null || { cat "$state/server.log"; exit 1; }
  sleep 0.1
done
[ -s "$state/port" ] || { cat "$state/server.log"; echo "the server did not start"; exit 1; }
addr="127.0.0.1:$(cat "$state/port")"

"$dsv2" inspect --model "$model"
echo
echo "dsv2 client --addr $addr --chat --prompt 'What is the capital of France?' --max-tokens 48:"
echo "(the bundled test model has random weights, so the answer is random text)"
"$dsv2" client --addr "$addr" --chat --prompt "What is the capital of France?" \
  --max-tokens 48 --stats
echo
echo
echo "dsv2-standalone keeps serving $model on $addr (pid $(cat "$state/pid"), log $state/server.log)."
echo "  query: $dsv2 client --addr $addr --prompt 'Once upon a time' --max-tokens 32"
echo "  stop:  kill $(cat "$state/pid")"
