// Replays the fuzz seeds and every input a fuzzing run found
// (common/tokenizer/fuzz/regressions/) through the fuzz target, so nothing
// it once caught can come back.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/tokenizer/fuzz/fuzz_target.h"
#include "gtest/gtest.h"

namespace dsv2::tokenizer_fuzz {
namespace {

TEST(TokenizerFuzzRegressionTest, SeedsAndFoundInputsPass) {
  int inputs = 0;
  for (const char* dir : {"common/tokenizer/fuzz/seeds", "common/tokenizer/fuzz/regressions"}) {
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (!entry.is_regular_file() || entry.path().filename() == "README.md") continue;
      std::ifstream in(entry.path(), std::ios::binary);
      std::stringstream data;
      data << in.rdbuf();
      const std::string bytes = data.str();
      SCOPED_TRACE(entry.path().string());
      FuzzOneInput(reinterpret_cast<const uint8_t*>(bytes.data()),
                   bytes.size());  // Aborts on failure.
      ++inputs;
    }
  }
  EXPECT_GE(inputs, 5);
}

}  // namespace
}  // namespace dsv2::tokenizer_fuzz
