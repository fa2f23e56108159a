// libFuzzer entry point; see fuzz_target.h and scripts/fuzz-tokenizer.sh.
#include <cstddef>
#include <cstdint>

#include "common/tokenizer/fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dsv2::tokenizer_fuzz::FuzzOneInput(data, size);
  return 0;
}
