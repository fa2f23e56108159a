#!/usr/bin/env bash
# Sets up everything and runs the main job: the bundled V2-shaped test model
# (tests/data/tiny-v2) generates from a prompt, its tokens printed as they
# are produced, with prefill and decode speed on standard error.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" dsv2
dsv2="${BUILD_DIR:-$root/build}/tools/dsv2/dsv2"
model="$root/tests/data/tiny-v2"

"$dsv2" inspect --model "$model"
echo
echo "generating 32 tokens greedily from a 12-token prompt:"
"$dsv2" generate --model "$model" --tokens 0,17,250,1024,3,77,901,2048,5,64,1500,42 \
  --max-tokens 32 --ignore-eos --stats
