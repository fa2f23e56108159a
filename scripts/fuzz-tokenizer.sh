#!/usr/bin/env bash
# Fuzzes the tokenizer (tokenizer.json parsing, encoding arbitrary bytes,
# decoding arbitrary ids, regex translation) with libFuzzer under
# AddressSanitizer and UndefinedBehaviorSanitizer, for a bounded time.
#
#   scripts/fuzz-tokenizer.sh [SECONDS]     (default 300)
#
# Installs clang and its runtime (libclang-rt-14-dev) from Debian if missing,
# builds build-fuzz/ (or $FUZZ_BUILD_DIR) with clang, starts from
# common/tokenizer/fuzz/seeds plus the corpus of earlier runs, and exits
# non-zero if a crash or broken invariant is found; the input is then in
# build-fuzz/tokenizer-fuzz-artifacts/. After fixing the bug, copy it into
# common/tokenizer/fuzz/regressions/ so tokenizer_fuzz_regression_test keeps it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-300}"
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"

missing=()
for p in clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
"$root/scripts/install-deps.sh" >/dev/null

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSV2_BUILD_TESTS=OFF -DDSV2_ENABLE_CUDA=OFF -DDSV2_BUILD_FUZZERS=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined" >/dev/null
ninja -C "$build" tokenizer_fuzzer

corpus="$build/tokenizer-fuzz-corpus"
artifacts="$build/tokenizer-fuzz-artifacts"
mkdir -p "$corpus" "$artifacts"
cd "$root"  # The target reads the test tokenizers from tests/data.
echo "fuzz-tokenizer: running for ${seconds}s"
"$build/common/tokenizer/tokenizer_fuzzer" -max_total_time="$seconds" -max_len=8192 -timeout=20 \
  -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts/" \
  "$corpus" common/tokenizer/fuzz/seeds common/tokenizer/fuzz/regressions
