// What every fuzz target implements, and the harness around it.
//
// A fuzz target is one .cc beside the code it fuzzes (common/*/fuzz/), built
// into the library dsv2::<name>_fuzz_target by dsv2_fuzz_target
// (cmake/Dsv2Helpers.cmake). The same FuzzOneInput runs in two places:
//  - <name>_fuzz_regression_test, in every build: replays the target's
//    seeds/ and regressions/ (inputs a fuzzing run once found), so nothing
//    it caught comes back;
//  - <name>_fuzzer, the libFuzzer binary, built with clang under
//    DSV2_BUILD_FUZZERS by scripts/fuzz.sh (docs/fuzzing.md).
// FuzzOneInput must accept any bytes. A broken invariant calls Require,
// which aborts: libFuzzer reports the input as a crash, and the regression
// test fails.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "common/base/json_reading.h"

namespace dsv2::fuzz {

// Defined by each fuzz target. Runs from the repository root (targets may
// read fixtures from tests/data).
void FuzzOneInput(const uint8_t* data, size_t size);

// Aborts, naming the invariant, unless `condition` holds.
inline void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz invariant failed: %s\n", what);
    std::abort();
  }
}

// The JSON readers never reach GuardJsonReader's backstop (an unchecked
// accessor threw): that is a bug to fix. Call after each input.
inline void RequireCheckedJsonReads() {
  Require(UncheckedJsonErrors() == 0,
          "JSON readers check every value (GuardJsonReader caught one)");
}

}  // namespace dsv2::fuzz
