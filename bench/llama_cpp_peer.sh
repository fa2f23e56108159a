#!/usr/bin/env bash
# dsv2 against llama.cpp on the same checkpoint, on this CPU: batch-1 decode,
# prefill, and dsv2's batch-64 decode against llama.cpp's single stream; dsv2
# bf16 against llama.cpp f16 and dsv2 int8 (`dsv2 quantize`) against
# llama.cpp q8_0. Runs alternate between the two (llama.cpp f16, dsv2 bf16,
# llama.cpp q8_0, dsv2 int8, then again) and the figures are medians over the
# rounds. docs/performance.md, "A peer in the same benchmark: llama.cpp".
#
#   bench/llama_cpp_peer.sh [--model DIR] [--int8-model DIR | --no-int8] [--threads T]
#                           [--rounds 3] [--context 64] [--decode-tokens 16]
#                           [--prefill-len 512] [--reps 3] [--json-out FILE]
#
# Nothing of llama.cpp enters the repository: everything is installed from
# PyPI into a virtual environment outside it, and the GGUF files live in a
# cache outside it.
#   LLAMA_VENV        the venv (default /work/llama-venv): llama-cpp-python,
#                     built here with LLAMA_CMAKE_ARGS, and the converter's
#                     torch, transformers, sentencepiece, safetensors
#   LLAMA_CMAKE_ARGS  llama.cpp's build options (default -DGGML_NATIVE=ON
#                     -DLLAVA_BUILD=OFF). On AMX CPUs llama.cpp's AMX path
#                     fails GGML_ASSERT(*cur_backend_id != -1) on this model:
#                     build without it (GGML_NATIVE=OFF and the CPU's other
#                     features named, docs/performance.md). Takes effect when
#                     llama_cpp is (re)installed: pip uninstall it first
#   LLAMA_PEER_CACHE  the llama-cpp-python sdist (for llama.cpp's
#                     convert_hf_to_gguf.py and gguf-py), GGUF files, int8
#                     checkpoints (default: llama-peer-cache beside the venv)
#   CPU_LOCK          a file to flock around every CPU-heavy step (builds,
#                     conversions, each benchmark run), e.g. /tmp/dsv2-cpu.lock
#                     on a shared machine; unset, nothing is locked. Do not
#                     also run the whole script under flock on the same file.
#   BUILD_DIR         dsv2's build directory (default build/); needs
#                     bench/decode_bench and tools/dsv2/dsv2
#   DSV2_CPU_ISA      passed through to dsv2 (and reported)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
helper="$root/bench/llama_cpp_peer.py"
build="${BUILD_DIR:-$root/build}"
venv="${LLAMA_VENV:-/work/llama-venv}"
cache="${LLAMA_PEER_CACHE:-$(dirname "$venv")/llama-peer-cache}"
model=/tmp/lite-4
int8_model=""
no_int8=0
threads="$(nproc)"
rounds=3
context=64
decode_tokens=16
prefill_len=512
reps=3
json_out=""

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --int8-model) int8_model="$2"; shift 2 ;;
    --no-int8) no_int8=1; shift ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --context) context="$2"; shift 2 ;;
    --decode-tokens) decode_tokens="$2"; shift 2 ;;
    --prefill-len) prefill_len="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --json-out) json_out="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "llama_cpp_peer: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { echo "llama_cpp_peer: $*" >&2; }
die() { log "$*"; exit 1; }
locked() {
  if [ -n "${CPU_LOCK:-}" ]; then flock "$CPU_LOCK" "$@"; else "$@"; fi
}

[ -f "$model/config.json" ] || die "no checkpoint at $model (make one: build/tools/dsv2/dsv2 make-model --preset lite --layers 4 --seed 0 --out /tmp/lite-4)"
model="$(cd "$model" && pwd -P)"
for bin in "$build/bench/decode_bench" "$build/tools/dsv2/dsv2"; do
  [ -x "$bin" ] || die "$bin is missing: CPU_LOCK=... scripts/build.sh decode_bench dsv2"
done
case "$venv" in "$root"|"$root"/*) die "LLAMA_VENV must be outside the repository" ;; esac
case "$cache" in "$root"|"$root"/*) die "LLAMA_PEER_CACHE must be outside the repository" ;; esac
mkdir -p "$cache"
py="$venv/bin/python"

# ---------------------------------------------------------------- install
if [ ! -x "$py" ]; then
  log "creating the venv $venv"
  python3 -m venv "$venv"
fi
if ! "$py" -c 'import llama_cpp' 2>/dev/null; then
  # Another install into the same venv may be under way: wait for it.
  while pgrep -f "$venv/bin/pip install" >/dev/null; do
    log "waiting for a running pip install into $venv"; sleep 30
  done
  if ! "$py" -c 'import llama_cpp' 2>/dev/null; then
    log "building llama-cpp-python from PyPI into $venv (several minutes on 2 cores)"
    CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAVA_BUILD=OFF}" \
      locked "$py" -m pip install --no-cache-dir llama-cpp-python numpy
  fi
fi
version="$("$py" -c 'import llama_cpp; print(llama_cpp.__version__)')"
sdist="$cache/sdist/llama_cpp_python-$version"
convert="$sdist/vendor/llama.cpp/convert_hf_to_gguf.py"
if [ ! -f "$convert" ]; then
  log "fetching the llama-cpp-python $version sdist (llama.cpp's converter) into $cache/sdist"
  mkdir -p "$cache/sdist"
  "$py" -m pip download --no-binary :all: --no-deps -d "$cache/sdist" "llama-cpp-python==$version"
  tar -xzf "$cache/sdist/llama_cpp_python-$version.tar.gz" -C "$cache/sdist"
  [ -f "$convert" ] || die "no convert_hf_to_gguf.py in the sdist"
fi
if ! "$py" -c 'import torch, transformers, safetensors, sentencepiece, yaml, tqdm, requests' 2>/dev/null; then
  # transformers at the version the converter pins; torch from PyPI (large,
  # once), since the CPU-only index is not PyPI.
  req="$sdist/vendor/llama.cpp/requirements/requirements-convert_legacy_llama.txt"
  transformers_spec="$(grep -E '^transformers' "$req" 2>/dev/null | head -1 || true)"
  log "installing the converter's dependencies into $venv (${transformers_spec:-transformers}, torch, ...)"
  "$py" -m pip install torch "${transformers_spec:-transformers}" safetensors sentencepiece \
    'protobuf<5' pyyaml tqdm requests
fi

# ---------------------------------------------------------------- GGUF
# Cached by the checkpoint's path and the modification times of its files.
key="$(cd "$model" && { echo "$model"; stat -c '%n %Y %s' config.json *.safetensors* 2>/dev/null; } \
  | sha256sum | cut -c1-16)"
gguf_dir="$cache/gguf/$(basename "$model")-$key"
mkdir -p "$gguf_dir"
hf_dir=""
# (An if, not &&: the trap's status would become the script's.)
cleanup() { if [ -n "$hf_dir" ]; then rm -rf "$hf_dir"; fi; }
trap cleanup EXIT
for type in f16 q8_0; do
  out="$gguf_dir/model-$type.gguf"
  [ -s "$out" ] && continue
  if [ -z "$hf_dir" ]; then
    hf_dir="$(mktemp -d "${TMPDIR:-/tmp}/llama-peer-hf.XXXXXX")"
    python3 "$helper" hf-dir --model "$model" --out "$hf_dir" \
      --tokenizer-dir "$root/tests/data/tokenizer/deepseek-v2"
  fi
  log "converting $model to GGUF $type: $out"
  locked "$py" "$convert" "$hf_dir" --outtype "$type" --outfile "$out.part" >"$gguf_dir/convert-$type.log" 2>&1 \
    || { tail -30 "$gguf_dir/convert-$type.log" >&2; die "conversion to $type failed (log: $gguf_dir/convert-$type.log)"; }
  mv "$out.part" "$out"
done

# ---------------------------------------------------------------- int8
int8_note=""
if [ "$no_int8" = 1 ]; then
  int8_model=""; int8_note="--no-int8"
elif [ -z "$int8_model" ]; then
  if "$build/tools/dsv2/dsv2" --help 2>&1 | grep -qE '^ +quantize '; then
    int8_model="$cache/int8/$(basename "$model")-$key"
    if [ ! -f "$int8_model/config.json" ]; then
      log "dsv2 quantize $model -> $int8_model"
      rm -rf "$int8_model.part"; mkdir -p "$cache/int8"
      locked "$build/tools/dsv2/dsv2" quantize --model "$model" --out "$int8_model.part" >&2
      mv "$int8_model.part" "$int8_model"
    fi
  else
    int8_note="this build's dsv2 has no 'quantize' command"
  fi
fi
[ -z "$int8_model" ] || [ -f "$int8_model/config.json" ] || die "no checkpoint at $int8_model"

# ---------------------------------------------------------------- runs
results="$(mktemp -d "${TMPDIR:-/tmp}/llama-peer-results.XXXXXX")"
vocab="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$model/config.json")"
prompt="$(python3 "$helper" prompt --length "$context" --vocab "$vocab" --seed 0)"
export DSV2_NUM_THREADS="$threads"

run_dsv2() {  # NAME DIR ROUND
  locked "$build/bench/decode_bench" --model "$2" --batches 1,64 --context "$context" \
    --steps "$decode_tokens" --prefill-len "$prefill_len" --reps "$reps" --json \
    >"$results/$1.$3.json" 2>"$results/$1.$3.log" \
    || { cat "$results/$1.$3.log" >&2; die "decode_bench on $2 failed"; }
  log "round $3 $1: $(tail -1 "$results/$1.$3.json" | cut -c1-200)"
}
run_llama() {  # NAME GGUF ROUND
  locked "$py" "$helper" llama --gguf "$2" --threads "$threads" --prompt "$prompt" \
    --decode-tokens "$decode_tokens" --prefill-len "$prefill_len" --reps "$reps" \
    >"$results/$1.$3.json" 2>"$results/$1.$3.log" \
    || { cat "$results/$1.$3.log" >&2; die "llama.cpp on $2 failed"; }
  log "round $3 $1: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("decode %.2f tok/s, prefill %.1f tok/s" % (d["decode"]["tokens_per_s"], d["prefill"]["tokens_per_s"]))' "$results/$1.$3.json")"
}

log "threads $threads, $rounds rounds, results in $results"
for r in $(seq 1 "$rounds"); do
  run_llama llama_f16 "$gguf_dir/model-f16.gguf" "$r"
  run_dsv2 dsv2_bf16 "$model" "$r"
  run_llama llama_q8_0 "$gguf_dir/model-q8_0.gguf" "$r"
  [ -z "$int8_model" ] || run_dsv2 dsv2_int8 "$int8_model" "$r"
done

# The first greedy tokens of both after the same prompt ids.
greedy_args=()
for name in llama_f16 llama_q8_0; do
  greedy_args+=("$name" "$(python3 -c 'import json,sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["greedy_tokens"])))' "$results/$name.1.json")")
done
for pair in "dsv2_bf16:$model" ${int8_model:+"dsv2_int8:$int8_model"}; do
  tokens="$(locked "$build/tools/dsv2/dsv2" generate --model "${pair#*:}" --tokens "$prompt" \
    --max-tokens "$decode_tokens" --ignore-eos 2>/dev/null || echo "(dsv2 generate failed)")"
  greedy_args+=("${pair%%:*}" "$tokens")
done

system_info="$("$py" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())' 2>/dev/null || true)"
python3 - "$results/meta.json" "${greedy_args[@]}" <<EOF
import json, sys
greedy = dict(zip(sys.argv[2::2], sys.argv[3::2]))
json.dump({"model": "$model", "int8_model": "$int8_model" or None, "int8_note": """$int8_note""" or None,
           "threads": $threads, "nproc": $(nproc), "rounds": $rounds, "context": $context,
           "decode_tokens": $decode_tokens, "prefill_len": $prefill_len,
           "dsv2_cpu_isa": """${DSV2_CPU_ISA:-}""" or None, "llama_cpp_version": "$version",
           "llama_system_info": """$system_info""",
           "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "greedy": greedy}, open(sys.argv[1], "w"))
EOF
echo
python3 "$helper" report --results-dir "$results" ${json_out:+--json-out "$json_out"}
