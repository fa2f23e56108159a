#!/usr/bin/env bash
# The Lite-shaped int8 fidelity check (docs/performance.md, "8-bit weights"):
# a DeepSeek-V2-Lite-shaped checkpoint of random bf16 weights (`dsv2
# make-model --preset lite --layers N`, about 2.5 GB for 2 layers), its
# `dsv2 quantize` copy, and for each prompt: the bf16 model's greedy tokens,
# then both models' logits over prompt + those tokens (teacher forcing).
# Prints, per prompt, the greedy agreement at the generated positions and
# the worst max|int8 - bf16| / logit range; then the totals. Too large for
# CI; needs build/tools/dsv2/dsv2 and about 4 GB of disk under $WORK.
# Usage: scripts/int8-lite-check.sh [LAYERS (default 2)] [NEW_TOKENS (default 16)]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dsv2="${DSV2:-$root/build/tools/dsv2/dsv2}"
layers="${1:-2}"
new_tokens="${2:-16}"
work="${WORK:-$(mktemp -d)}"
bf16="$work/lite-$layers-bf16"
int8="$work/lite-$layers-int8"

[ -e "$bf16/config.json" ] || "$dsv2" make-model --preset lite --layers "$layers" --seed 1 --out "$bf16" >/dev/null
[ -e "$int8/config.json" ] || "$dsv2" quantize --model "$bf16" --out "$int8" >/dev/null
du -sh "$bf16" "$int8"

# Prompts of 8 ids from across the vocabulary.
prompts=(
  "100000,1000,2000,3000,4000,5000,6000,7000"
  "100000,17,23,29,31,37,41,43"
  "100000,90000,80000,70000,60000,50000,40000,30000"
  "100000,12345,23456,34567,45678,56789,67890,78901"
  "100000,555,5555,55555,500,5000,50000,50"
  "100000,99999,1,99998,2,99997,3,99996"
)
for prompt in "${prompts[@]}"; do
  generated="$("$dsv2" generate --model "$bf16" --tokens "$prompt" --max-tokens "$new_tokens" \
    --ignore-eos 2>/dev/null | tr ' ' ',' | tr -d '\n')"
  all="$prompt,$generated"
  "$dsv2" logits --model "$bf16" --tokens "$all" --out "$work/bf16.npy" 2>/dev/null
  "$dsv2" logits --model "$int8" --tokens "$all" --out "$work/int8.npy" 2>/dev/null
  python3 - "$work/bf16.npy" "$work/int8.npy" "$prompt" "$new_tokens" <<'PY'
import ast, struct, sys
def load(path):  # A float32 C-order .npy, without numpy.
    data = open(path, "rb").read()
    header_len = struct.unpack("<H", data[8:10])[0]
    header = ast.literal_eval(data[10:10 + header_len].decode())
    rows, cols = header["shape"]
    values = struct.unpack("<%df" % (rows * cols), data[10 + header_len:])
    return [values[r * cols:(r + 1) * cols] for r in range(rows)]
bf16, int8 = load(sys.argv[1]), load(sys.argv[2])
prompt_len, new = len(sys.argv[3].split(",")), int(sys.argv[4])
# Positions prompt_len-1 ... predict the generated tokens.
positions = range(prompt_len - 1, prompt_len - 1 + new)
agree = sum(max(range(len(bf16[p])), key=bf16[p].__getitem__) ==
            max(range(len(int8[p])), key=int8[p].__getitem__) for p in positions)
worst = max(max(abs(a - b) for a, b in zip(bf16[p], int8[p])) / (max(bf16[p]) - min(bf16[p]))
            for p in positions)
print("prompt %s: greedy agreement %d/%d, worst max|int8 - bf16| / range %.4f" %
      (sys.argv[3], agree, new, worst))
PY
done | tee "$work/report.txt"
awk '{split($5, a, "/"); agree += a[1]; total += a[2]; if ($NF > worst) worst = $NF}
     END {printf "total: greedy agreement %d/%d, worst max|int8 - bf16| / range %.4f\n", agree, total, worst}' \
  "$work/report.txt"
