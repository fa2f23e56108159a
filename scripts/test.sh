#!/usr/bin/env bash
# Sets up everything and runs every test: installs the Debian packages,
# builds, and runs the whole suite through ctest; then the same suite built
# with AddressSanitizer + UndefinedBehaviorSanitizer, the engine, transport
# and cluster tests under ThreadSanitizer, and every fuzz target briefly
# (scripts/sanitize.sh, scripts/fuzz.sh). Exits non-zero on any failure.
# SANITIZERS=0 skips the sanitizer and fuzz runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
(cd "${BUILD_DIR:-$root/build}" && ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 900)
if [ "${SANITIZERS:-1}" != 0 ]; then
  "$root/scripts/sanitize.sh" asan
  "$root/scripts/sanitize.sh" tsan
  "$root/scripts/fuzz.sh" all 20
fi
