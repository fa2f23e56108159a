#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/dsv2/commands.h"

namespace dsv2::cli {
namespace {

using ::testing::HasSubstr;

std::string InspectConfig(const std::string& path) {
  std::ostringstream out;
  const std::vector<std::string> argv = {"--config", path};
  const absl::Status status = Inspect(argv, out);
  EXPECT_TRUE(status.ok()) << status;
  return out.str();
}

TEST(InspectTest, DeepSeekV2Figures) {
  const std::string report = InspectConfig("common/model/presets/deepseek-v2.json");
  EXPECT_THAT(report, HasSubstr("235.74B total"));
  EXPECT_THAT(report, HasSubstr("20.85B per token"));
  EXPECT_THAT(report, HasSubstr("34,560 elements (576 per layer), 69,120 bytes in bf16"));
  EXPECT_THAT(report, HasSubstr("1,966,080 elements"));
  EXPECT_THAT(report, HasSubstr("0.1147214"));
  EXPECT_THAT(report, HasSubstr("group_limited_greedy: 8 groups of 20, top 3 groups"));
  EXPECT_THAT(report, HasSubstr("60 (1 dense, 59 MoE)"));
}

TEST(InspectTest, DeepSeekV2LiteFigures) {
  const std::string report = InspectConfig("common/model/presets/deepseek-v2-lite.json");
  EXPECT_THAT(report, HasSubstr("15.71B total"));
  EXPECT_THAT(report, HasSubstr("2.45B per token"));
  EXPECT_THAT(report, HasSubstr("15,552 elements (576 per layer), 31,104 bytes in bf16"));
  EXPECT_THAT(report, HasSubstr("plain q_proj"));
}

TEST(InspectTest, NeedsAModelOrConfig) {
  std::ostringstream out;
  EXPECT_EQ(Inspect(std::vector<std::string>{}, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Inspect(std::vector<std::string>{"--model", "/nonexistent"}, out).code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace dsv2::cli
