#include "common/sampling/sampler.h"

#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};

TEST(SamplerTest, TemperatureZeroIsArgMaxWithLowestIdOnTies) {
  Sampler sampler({.temperature = 0.0f});
  EXPECT_EQ(sampler.Sample(kLogits.data(), kLogits.size()), 1);
  EXPECT_EQ(ArgMax(kLogits.data(), 1), 0);
}

TEST(SamplerTest, TopKOneIsGreedy) {
  Sampler sampler({.temperature = 5.0f, .top_k = 1, .seed = 9});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sampler.Sample(kLogits.data(), kLogits.size()), 1);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDiffers) {
  SamplingParams params{.temperature = 1.0f, .seed = 42};
  Sampler a(params), b(params);
  params.seed = 43;
  Sampler c(params);
  int differ = 0;
  for (int i = 0; i < 100; ++i) {
    const int32_t x = a.Sample(kLogits.data(), kLogits.size());
    EXPECT_EQ(x, b.Sample(kLogits.data(), kLogits.size()));
    differ += x != c.Sample(kLogits.data(), kLogits.size());
  }
  EXPECT_GT(differ, 0);
}

TEST(SamplerTest, FrequenciesFollowTheTemperedDistribution) {
  const float temperature = 0.7f;
  Sampler sampler({.temperature = temperature, .seed = 1});
  std::vector<double> expected(kLogits.size());
  double sum = 0;
  for (size_t i = 0; i < kLogits.size(); ++i) sum += expected[i] = std::exp(kLogits[i] / temperature);
  const int draws = 200000;
  std::vector<int> counts(kLogits.size());
  for (int i = 0; i < draws; ++i) ++counts[sampler.Sample(kLogits.data(), kLogits.size())];
  for (size_t i = 0; i < kLogits.size(); ++i) {
    const double p = expected[i] / sum;
    // Five standard deviations of a binomial count.
    EXPECT_NEAR(counts[i], p * draws, 5 * std::sqrt(draws * p * (1 - p)) + 1) << "token " << i;
  }
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingP) {
  // Probabilities 0.5, 0.3, 0.2: top_p 0.6 keeps the first two only.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Sampler sampler({.temperature = 1.0f, .top_p = 0.6f, .seed = 3});
  std::vector<int> counts(3);
  for (int i = 0; i < 20000; ++i) ++counts[sampler.Sample(logits.data(), 3)];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 20000.0, 0.5 / 0.8, 0.02);
}

TEST(SamplerTest, ValidateNamesTheField) {
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
  EXPECT_EQ(SamplingParams{.temperature = -1}.Validate().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(SamplingParams{.top_p = 0}.Validate().message().find("top_p"), std::string::npos);
  EXPECT_NE(SamplingParams{.top_p = 1.5f}.Validate().message().find("top_p"), std::string::npos);
  EXPECT_NE(SamplingParams{.top_k = -2}.Validate().message().find("top_k"), std::string::npos);
  EXPECT_FALSE(SamplingParams{.temperature = NAN}.Validate().ok());
}

}  // namespace
}  // namespace dsv2

namespace dsv2 {
namespace {

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  // Probabilities 0.6, 0.3, 0.1: min_p 0.25 keeps tokens with p >= 0.15.
  const std::vector<float> logits = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  Sampler sampler({.temperature = 1.0f, .min_p = 0.25f, .seed = 5});
  std::vector<int> counts(3);
  for (int i = 0; i < 20000; ++i) ++counts[sampler.Sample(logits.data(), 3)];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 20000.0, 0.6 / 0.9, 0.02);
}

TEST(SamplerTest, PenaltiesFollowVllmSemantics) {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f, 3.0f};
  const std::vector<int32_t> prompt = {0, 1};
  const std::vector<int32_t> output = {2, 2, 3};
  AdjustLogits({.repetition_penalty = 2.0f, .presence_penalty = 0.5f, .frequency_penalty = 0.25f},
               prompt, output, logits.data(), 5);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);                      // Prompt, positive: divided.
  EXPECT_FLOAT_EQ(logits[1], -4.0f);                     // Prompt, negative: multiplied.
  EXPECT_FLOAT_EQ(logits[2], 0.5f - 0.5f - 2 * 0.25f);   // Output twice.
  EXPECT_FLOAT_EQ(logits[3], 0.25f - 0.5f - 0.25f);      // Output once.
  EXPECT_FLOAT_EQ(logits[4], 3.0f);                      // Unseen.
  EXPECT_FALSE(SamplingParams{.repetition_penalty = 0}.Validate().ok());
  EXPECT_FALSE(SamplingParams{.presence_penalty = 3}.Validate().ok());
  EXPECT_FALSE(SamplingParams{.min_p = 1.5f}.Validate().ok());
}

// vLLM's order: the biases go on the raw logits, the penalties after them
// (a repeated token's bias is divided with its logit).
TEST(SamplerTest, LogitBiasIsAddedBeforeThePenalties) {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f};
  const std::vector<int32_t> prompt = {0};
  const std::vector<int32_t> output = {2};
  AdjustLogits({.repetition_penalty = 2.0f,
                .presence_penalty = 0.5f,
                .logit_bias = {{0, 4.0f}, {1, 100.0f}, {3, -100.0f}}},
               prompt, output, logits.data(), 4);
  EXPECT_FLOAT_EQ(logits[0], (2.0f + 4.0f) / 2);    // Biased, then divided.
  EXPECT_FLOAT_EQ(logits[1], 98.0f);                // Biased only.
  EXPECT_FLOAT_EQ(logits[2], 1.0f / 2 - 0.5f);      // Penalized only.
  EXPECT_FLOAT_EQ(logits[3], 0.5f - 100.0f);        // Biased only.
  // Greedy follows the bias.
  EXPECT_EQ(Sampler({}).Sample(logits.data(), 4), 1);
  // Without penalties the biases still apply.
  std::vector<float> plain = {1.0f, 2.0f};
  AdjustLogits({.logit_bias = {{0, 1.5f}}}, prompt, {}, plain.data(), 2);
  EXPECT_FLOAT_EQ(plain[0], 2.5f);
  EXPECT_FLOAT_EQ(plain[1], 2.0f);
  for (float bad : {-100.5f, 101.0f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
    const absl::Status status = SamplingParams{.logit_bias = {{7, bad}}}.Validate();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(status.message(), "logit_bias of token id 7")) << status;
  }
  EXPECT_TRUE((SamplingParams{.logit_bias = {{7, -100.0f}, {8, 100.0f}}}.Validate().ok()));
}

TEST(SamplerTest, LogprobsAreLogSoftmax) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f};
  const double norm = std::log(std::exp(1.0) + std::exp(3.0) + std::exp(2.0));
  EXPECT_NEAR(Logprob(logits.data(), 3, 0), 1.0 - norm, 1e-6);
  const std::vector<TokenLogprob> top = TopLogprobs(logits.data(), 3, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].token, 1);
  EXPECT_NEAR(top[0].logprob, 3.0 - norm, 1e-6);
  EXPECT_EQ(top[1].token, 2);
  EXPECT_EQ(TopLogprobs(logits.data(), 3, 10).size(), 3u);
}

}  // namespace
}  // namespace dsv2
