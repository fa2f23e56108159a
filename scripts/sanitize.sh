#!/usr/bin/env bash
# Builds dsv2-serve with clang and a sanitizer in a build directory of its
# own and runs tests under it. Exits non-zero on any failure or report.
#
#   scripts/sanitize.sh asan   AddressSanitizer + UndefinedBehaviorSanitizer (any report is
#                              fatal): every target, the whole test suite (build-asan/)
#   scripts/sanitize.sh tsan   ThreadSanitizer: the engine, transport and cluster tests
#                              (build-tsan/)
#
# Both builds also check clang's thread-safety annotations (-Wthread-safety as an error).
# Timing bounds in the tests are scaled by DSV2_TEST_TIME_SCALE (3 here): sanitized code is
# slower. Environment: JOBS (default: the number of cores), BUILD_DIR (default build-MODE).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mode="${1:-}"
jobs="${JOBS:-$(nproc)}"
case "$mode" in
  asan)
    flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
    targets=()
    tests=""
    ;;
  tsan)
    flags="-fsanitize=thread"
    targets=(engine_test transport_conformance_test transport_frame_test ucx_transport_test
             ucx_test_peer frame_seal_test experts_test cluster_test control_client_test
             controller_test router_test rpc_test)
    # The engine, the data plane, the control plane and the router: every
    # multi-threaded library with its own tests.
    tests='^(EngineTest|.*TransportConformanceTest|FrameTest|UcxTransportTest|.*UcxPeerDeathTest|.*UcxSealTest|FrameSealTest|.*ExpertsTest|ClusterStateTest|ExpertPlacementTest|ClusterMapProtoTest|ControlClientTest|ControllerServiceTest|RouterTest|TlsTest|ApiTokensTest)\.'
    ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
build="${BUILD_DIR:-$root/build-$mode}"
# -O1 with line tables: the sanitizers' recommended optimization, and about
# 40 % less compile time than -O2 with full debug information.
opt="-O1 -g1 -DNDEBUG"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="$opt" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$opt" \
  -DDSV2_ENABLE_CUDA=OFF -DDSV2_BUILD_BENCHMARKS=OFF -DDSV2_THREAD_SAFETY_ANALYSIS=ON \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" \
  -DDSV2_PYTHON="$root/.venv/bin/python" >/dev/null
target_args=()
for t in "${targets[@]}"; do target_args+=(--target "$t"); done
cmake --build "$build" -j "$jobs" "${target_args[@]}"

export DSV2_TEST_TIME_SCALE=3
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$root/scripts/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$root/scripts/sanitizers/tsan.supp"
# UCX's memory hooks (libucm) patch malloc and mmap, which the sanitizers own.
export UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_MALLOC_HOOKS=no UCX_MEM_EVENTS=no
cd "$build"
if [ -n "$tests" ]; then
  ctest --output-on-failure -j "$jobs" --timeout 900 -R "$tests"
else
  ctest --output-on-failure -j "$jobs" --timeout 900
fi
