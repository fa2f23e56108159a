#!/usr/bin/env bash
# Builds every fuzz target's libFuzzer binary with clang under
# AddressSanitizer and UndefinedBehaviorSanitizer, and runs one or all of
# them for a bounded time (docs/fuzzing.md).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]     (default: all, 30 s each)
#   scripts/fuzz.sh list                       the targets
#
# The build is build-fuzz/ (or $FUZZ_BUILD_DIR), apart from the normal
# build. Each target starts from its committed seeds and regressions plus
# the corpus its earlier runs grew (build-fuzz/corpus/TARGET). The script
# exits non-zero if any target finds a crash or a broken invariant; the
# input is then in build-fuzz/artifacts/TARGET/. After fixing the bug, copy
# it into the target's regressions/ folder so its fuzz regression test
# keeps it. Extra libFuzzer flags can be given in $FUZZ_FLAGS (e.g. -jobs=2).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-all}"
seconds="${2:-30}"
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"

# clang and its sanitizer runtimes are in install-deps.sh's package list.
"$root/scripts/install-deps.sh" >/dev/null

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSV2_BUILD_TESTS=OFF -DDSV2_ENABLE_CUDA=OFF \
  -DDSV2_BUILD_FUZZERS=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined" \
  >/dev/null
# Lines of "name corpus-dir binary", written by the configure step.
mapfile -t fuzzers < "$build/fuzz_targets.txt"
names=()
for line in "${fuzzers[@]}"; do
  [ -n "$line" ] && names+=("${line%% *}")
done
if [ "$target" = list ]; then
  printf '%s\n' "${names[@]}"
  exit 0
fi
if [ "$target" != all ] && ! printf '%s\n' "${names[@]}" | grep -qx "$target"; then
  echo "fuzz: unknown target '$target'; targets: ${names[*]}" >&2
  exit 2
fi
to_build=()
for name in "${names[@]}"; do
  if [ "$target" = all ] || [ "$target" = "$name" ]; then to_build+=("${name}_fuzzer"); fi
done
ninja -C "$build" -j "${JOBS:-$(nproc)}" "${to_build[@]}"

cd "$root"  # Targets read fixtures from tests/data and write nowhere else.
failed=()
for line in "${fuzzers[@]}"; do
  [ -n "$line" ] || continue
  read -r name corpus binary <<<"$line"
  if [ "$target" != all ] && [ "$target" != "$name" ]; then continue; fi
  work="$build/corpus/$name"
  artifacts="$build/artifacts/$name"
  mkdir -p "$work" "$artifacts"
  echo "fuzz: $name for ${seconds}s"
  # shellcheck disable=SC2086  # FUZZ_FLAGS is a list of flags.
  if ! "$binary" -max_total_time="$seconds" -max_len=16384 -timeout=20 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_FLAGS:-} \
      "$work" "$corpus/seeds" "$corpus/regressions" 2>"$build/$name.log"; then
    failed+=("$name")
    tail -n 40 "$build/$name.log" >&2
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' "$build/$name.log" |
    sed "s/^/fuzz: $name: /" || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $build/artifacts/)" >&2
  exit 1
fi
echo "fuzz: all clean"
