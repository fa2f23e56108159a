#include "tools/dsv2/args.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2::cli {
namespace {

using ::testing::HasSubstr;

const std::vector<FlagSpec> kFlags = {
    {"model", true, "model directory"}, {"max-tokens", true, "n"}, {"stats", false, "stats"}};

TEST(ArgsTest, ParsesValuesSwitchesAndInlineValues) {
  const std::vector<std::string> argv = {"--model", "dir", "--stats", "--max-tokens=7"};
  auto args = Args::Parse(argv, kFlags);
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(*args->Get("model"), "dir");
  EXPECT_TRUE(args->Has("stats"));
  EXPECT_EQ(*args->GetInt("max-tokens", 1), 7);
  EXPECT_EQ(*args->GetDouble("missing", 0.5), 0.5);
}

TEST(ArgsTest, RejectsUnknownFlagsMissingValuesAndBadNumbers) {
  EXPECT_THAT(Args::Parse(std::vector<std::string>{"--modle", "x"}, kFlags).status().message(),
              HasSubstr("unknown flag --modle"));
  EXPECT_THAT(Args::Parse(std::vector<std::string>{"--model"}, kFlags).status().message(),
              HasSubstr("--model needs a value"));
  EXPECT_THAT(Args::Parse(std::vector<std::string>{"stray"}, kFlags).status().message(),
              HasSubstr("unexpected argument 'stray'"));
  EXPECT_THAT(Args::Parse(std::vector<std::string>{"--help"}, kFlags).status().message(),
              HasSubstr("--max-tokens VALUE"));
  auto args = Args::Parse(std::vector<std::string>{"--max-tokens", "ten"}, kFlags);
  ASSERT_TRUE(args.ok());
  EXPECT_THAT(args->GetInt("max-tokens", 1).status().message(), HasSubstr("expects an integer"));
  EXPECT_THAT(args->Require("model").status().message(), HasSubstr("--model is required"));
}

TEST(ArgsTest, TokenIds) {
  auto args = Args::Parse(std::vector<std::string>{"--model", "1,22,333"}, kFlags);
  ASSERT_TRUE(args.ok());
  EXPECT_EQ(*args->GetTokenIds("model"), (std::vector<int32_t>{1, 22, 333}));
  args = Args::Parse(std::vector<std::string>{"--model", "1,x"}, kFlags);
  EXPECT_THAT(args->GetTokenIds("model").status().message(), HasSubstr("'x' is not a token id"));
  args = Args::Parse(std::vector<std::string>{"--model", "1,,2"}, kFlags);
  EXPECT_FALSE(args->GetTokenIds("model").ok());
}

}  // namespace
}  // namespace dsv2::cli
