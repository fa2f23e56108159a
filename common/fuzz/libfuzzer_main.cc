// libFuzzer's entry point for every fuzz target (see fuzz_target.h); linked
// with -fsanitize=fuzzer, which provides main().
#include <cstddef>
#include <cstdint>

#include "common/fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dsv2::fuzz::FuzzOneInput(data, size);
  return 0;
}
