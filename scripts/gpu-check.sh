#!/usr/bin/env bash
# The GPU checks of dsv2-serve on one machine with an NVIDIA H100 or H200 and
# the CUDA toolkit (docs/gpu.md), in under 8 minutes on 16 cores:
#
#   1. the build dependencies: scripts/install-deps.sh --build-only, run only
#      when some are missing (it needs the network; without it the script
#      stops here, naming what is missing);
#   2. a CUDA build in build-gpu/ (Release, -DDSV2_ENABLE_CUDA=ON,
#      CMAKE_CUDA_ARCHITECTURES=90a, no fuzzers) of only what the checks run:
#      cuda_backend_test dsv2 dsv2_cli_test gpu_bench decode_bench;
#   3. nvidia-smi; cuda_backend_test (every op against the CPU reference);
#      the model's golden tests on the GPU (dsv2_cli_test --gtest_filter='*Cuda*':
#      logits and greedy tokens against the Hugging Face references);
#      gpu_bench --json-out; a random-weight
#      DeepSeek-V2-Lite of 4 layers (dsv2 make-model) and decode_bench on it
#      with --backend cuda (batches 1, 32, 128) and, for the comparison,
#      --backend cpu (batch 1, short).
#
# Every step runs under `timeout` (capped by what is left of the 8-minute
# budget, GPU_CHECK_BUDGET_S) with its output in one file of the results
# folder: $OUT when set (the device machines collect it), else
# ${GPU_CHECK_OUT:-gpu-check-results}. summary.txt there lists each step as
# PASS, FAIL (exit code or timeout) or SKIP, with its time.
#
# Exit status: 0 when every step passed; 1 when a step failed; 2 when the
# machine has no GPU (no nvidia-smi, or nvidia-smi fails): the script stops
# before building, with one line saying so, unless GPU_CHECK_FORCE=1 (which
# builds and runs everything anyway: the tests then skip and the benchmarks
# report that no device is visible; useful to check the build of a machine
# without a GPU).
#
# Environment: OUT / GPU_CHECK_OUT (results), GPU_CHECK_FORCE=1,
# GPU_CHECK_BUDGET_S (480), JOBS (nproc), BUILD_TYPE (Release),
# CUDA_HOME (/usr/local/cuda).
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 1
results="${OUT:-${GPU_CHECK_OUT:-gpu-check-results}}"
mkdir -p "$results" || exit 1
results="$(cd "$results" && pwd)"
summary="$results/summary.txt"
build_dir="$root/build-gpu"
jobs="${JOBS:-$(nproc)}"
budget="${GPU_CHECK_BUDGET_S:-480}"
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
started=$SECONDS
failures=0
: >"$summary"

log() { echo "gpu-check: $*"; }

# record NAME STATUS SECONDS: one line of the summary.
record() {
  printf '%-20s %-24s %5ss\n' "$1" "$2" "$3" >>"$summary"
}

# step NAME LIMIT_S COMMAND...: runs COMMAND with its output in NAME.log,
# bounded by LIMIT_S and by what is left of the budget; returns its status.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - (SECONDS - started)))
  if [ "$left" -lt 10 ]; then
    record "$name" "SKIP (budget spent)" 0
    failures=$((failures + 1))
    log "$name: skipped, the ${budget}s budget is spent"
    return 1
  fi
  [ "$limit" -le "$left" ] || limit=$left
  local logfile="$results/$name.log" t0=$SECONDS rc
  log "$name (≤ ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$logfile" 2>&1
  rc=$?
  local took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    record "$name" "PASS" "$took"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "$name" "FAIL (timeout ${limit}s)" "$took"
    failures=$((failures + 1))
  else
    record "$name" "FAIL (exit $rc)" "$took"
    failures=$((failures + 1))
  fi
  tail -n 4 "$logfile" | sed 's/^/    /'
  return "$rc"
}

skip() {
  record "$1" "SKIP ($2)" 0
  log "$1: skipped ($2)"
}

finish() {
  log "summary ($summary):"
  sed 's/^/    /' "$summary"
  if [ "$failures" -gt 0 ]; then
    log "$failures step(s) failed; outputs in $results"
    exit 1
  fi
  log "all steps passed in $((SECONDS - started))s; outputs in $results"
  exit 0
}

# ---- The GPU ------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >"$results/nvidia-smi-L.txt" 2>&1; then
  why="nvidia-smi is not installed"
  command -v nvidia-smi >/dev/null 2>&1 && why="nvidia-smi fails: $(head -n 1 "$results/nvidia-smi-L.txt")"
  if [ "${GPU_CHECK_FORCE:-0}" != 1 ]; then
    record "nvidia-smi" "SKIP (no GPU)" 0
    echo "gpu-check: no GPU on this machine ($why); nothing checked. GPU_CHECK_FORCE=1 builds and runs anyway." >&2
    exit 2
  fi
  log "no GPU ($why); going on because GPU_CHECK_FORCE=1"
fi

# ---- Build dependencies -------------------------------------------------------
# What is missing of what install-deps.sh --build-only installs, by the
# commands and pkg-config modules those packages provide.
missing_deps() {
  local missing=() c m
  for c in cmake ninja g++ pkg-config protoc grpc_cpp_plugin; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if command -v pkg-config >/dev/null 2>&1; then
    for m in grpc++ protobuf absl_status gtest gmock nlohmann_json ucx prometheus-cpp-core \
      cpp-httplib openssl libpcre2-8; do
      pkg-config --exists "$m" || missing+=("$m")
    done
  fi
  echo "${missing[*]}"
}
missing_now="$(missing_deps)"
if [ -z "$missing_now" ]; then
  record "deps" "PASS (present)" 0
else
  log "build dependencies missing: $missing_now"
  if ! step deps 300 "$root/scripts/install-deps.sh" --build-only || [ -n "$(missing_deps)" ]; then
    echo "gpu-check: build dependencies missing ($(missing_deps)) and scripts/install-deps.sh" \
      "--build-only could not install them (no network on this machine? see $results/deps.log);" \
      "use an image with them installed (docs/gpu.md)" >&2
    failures=$((failures + 1))
    finish
  fi
fi

cuda_args=()
if ! command -v nvcc >/dev/null 2>&1; then
  if [ -x "$cuda_home/bin/nvcc" ]; then
    cuda_args=(-DCMAKE_CUDA_COMPILER="$cuda_home/bin/nvcc")
  else
    record "nvcc" "FAIL (not found)" 0
    echo "gpu-check: nvcc is neither on PATH nor at $cuda_home/bin/nvcc: install the CUDA toolkit" \
      "or set CUDA_HOME" >&2
    failures=$((failures + 1))
    finish
  fi
fi

# ---- Build --------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
    "$(git -C "$root" status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
  echo "host: $(uname -srm), $(nproc) cores"
  echo "nvcc: $("$(command -v nvcc || echo "$cuda_home/bin/nvcc")" --version | tail -n 2 | tr '\n' ' ')"
  echo "cmake: $(cmake --version | head -n 1)"
} >"$results/environment.txt" 2>&1

targets=(cuda_backend_test dsv2 dsv2_cli_test gpu_bench decode_bench)
built=0
if step configure 120 cmake -S "$root" -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" -DDSV2_ENABLE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DDSV2_BUILD_FUZZERS=OFF "${cuda_args[@]}"; then
  if grep -q '^DSV2_ENABLE_CUDA:BOOL=ON' "$build_dir/CMakeCache.txt"; then
    target_args=()
    for t in "${targets[@]}"; do target_args+=(--target "$t"); done
    step build 360 cmake --build "$build_dir" -j "$jobs" "${target_args[@]}" && built=1
  else
    record "build" "FAIL (CUDA not enabled)" 0
    failures=$((failures + 1))
  fi
else
  skip build "configure failed"
fi
if [ "$built" != 1 ]; then
  for name in cuda_backend_test cli_cuda gpu_bench make_model decode_cuda decode_cpu; do
    skip "$name" "no build"
  done
  finish
fi

# ---- Checks -------------------------------------------------------------------
step nvidia-smi 30 nvidia-smi
step cuda_backend_test 150 "$build_dir/kernels/cuda/cuda_backend_test"
step cli_cuda 150 "$build_dir/tests/dsv2_cli_test" --gtest_filter='*Cuda*'
step gpu_bench 120 "$build_dir/bench/gpu_bench" --json-out "$results/gpu_bench.json"

model_parent="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-model.XXXXXX")"
trap 'rm -rf "$model_parent"' EXIT
model="$model_parent/lite-4-layers"
if step make_model 150 "$build_dir/tools/dsv2/dsv2" make-model --preset lite --layers 4 --seed 0 \
  --out "$model"; then
  step decode_cuda 150 "$build_dir/bench/decode_bench" --backend cuda --model "$model" \
    --batches 1,32,128
  step decode_cpu 120 "$build_dir/bench/decode_bench" --backend cpu --model "$model" \
    --batches 1 --steps 4 --prefill-len 64 --reps 1
else
  skip decode_cuda "no model"
  skip decode_cpu "no model"
fi

finish
