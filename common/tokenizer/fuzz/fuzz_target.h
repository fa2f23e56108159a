// The tokenizer fuzz target's logic, shared by the libFuzzer binary
// (tokenizer_fuzzer.cc, built by scripts/fuzz-tokenizer.sh) and the
// regression test that replays the seeds and every input a fuzzing run has
// found (fuzz_regression_test.cc).
//
// The first byte picks what the rest is:
//   0  a tokenizer.json: loaded; if it loads, strings are encoded and ids decoded;
//   1  text (any bytes) encoded by the test tokenizers: ill-formed UTF-8 is an
//      error or replaced; well-formed text must round-trip through the tiny
//      tokenizer, and streaming must equal decoding;
//   2  token ids (little-endian 16-bit) decoded and streamed;
//   3  a regex pattern: compiled and, if it compiles, run over fixed text.
// Any failed invariant aborts, which the fuzzer reports as a crash.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dsv2::tokenizer_fuzz {

// Run from the repository root (the test tokenizers are read from tests/data).
void FuzzOneInput(const uint8_t* data, size_t size);

}  // namespace dsv2::tokenizer_fuzz
