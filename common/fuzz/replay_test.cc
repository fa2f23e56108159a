// Replays a fuzz target's seeds and every input a fuzzing run found
// (DSV2_FUZZ_CORPUS/seeds and DSV2_FUZZ_CORPUS/regressions, paths from the
// repository root) through its FuzzOneInput, so nothing it once caught can
// come back. An input that breaks an invariant aborts the test.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "common/fuzz/fuzz_target.h"
#include "gtest/gtest.h"

namespace dsv2::fuzz {
namespace {

TEST(FuzzRegressionTest, SeedsAndFoundInputsPass) {
  int seeds = 0;
  for (const char* kind : {"seeds", "regressions"}) {
    const std::filesystem::path dir = std::filesystem::path(DSV2_FUZZ_CORPUS) / kind;
    ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (!entry.is_regular_file() || entry.path().filename() == "README.md") continue;
      std::ifstream in(entry.path(), std::ios::binary);
      std::stringstream data;
      data << in.rdbuf();
      const std::string bytes = data.str();
      SCOPED_TRACE(entry.path().string());
      FuzzOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      if (std::string(kind) == "seeds") ++seeds;
    }
  }
  EXPECT_GE(seeds, 3) << "a fuzz target needs seeds in " DSV2_FUZZ_CORPUS "/seeds";
}

}  // namespace
}  // namespace dsv2::fuzz
