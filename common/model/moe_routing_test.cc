#include "common/model/moe_routing.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"

namespace dsv2 {
namespace {

ModelConfig Routing(TopkMethod method, int64_t experts, int64_t k, int64_t groups,
                    int64_t topk_group, double scaling, bool norm) {
  ModelConfig config;
  config.topk_method = method;
  config.n_routed_experts = experts;
  config.num_experts_per_tok = k;
  config.n_group = groups;
  config.topk_group = topk_group;
  config.routed_scaling_factor = scaling;
  config.norm_topk_prob = norm;
  return config;
}

TEST(MoeRoutingTest, GreedyTakesTopKScaled) {
  const ModelConfig config = Routing(TopkMethod::kGreedy, 6, 2, 1, 1, 2.0, false);
  const float scores[6] = {0.1f, 0.3f, 0.05f, 0.25f, 0.2f, 0.1f};
  int32_t ids[2];
  float weights[2];
  SelectExperts(config, scores, ids, weights);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 3);
  EXPECT_FLOAT_EQ(weights[0], 0.6f);
  EXPECT_FLOAT_EQ(weights[1], 0.5f);
}

TEST(MoeRoutingTest, GroupLimitedKeepsBestGroupsByMaxScore) {
  // 4 groups of 3. Group maxima: g0 0.20, g1 0.15, g2 0.14, g3 0.16.
  // Group 1 holds three good experts (sum 0.39) but loses on its max to
  // groups 0 and 3 with topk_group = 2, so its experts are never chosen.
  const ModelConfig config = Routing(TopkMethod::kGroupLimitedGreedy, 12, 3, 4, 2, 16.0, false);
  const float scores[12] = {0.20f, 0.01f, 0.01f, 0.13f, 0.15f, 0.11f,
                            0.14f, 0.01f, 0.01f, 0.16f, 0.02f, 0.05f};
  int32_t ids[3];
  float weights[3];
  SelectExperts(config, scores, ids, weights);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 9);
  EXPECT_EQ(ids[2], 11);
  EXPECT_FLOAT_EQ(weights[0], 0.20f * 16);
  EXPECT_FLOAT_EQ(weights[2], 0.05f * 16);
  // Greedy over the same scores would take expert 9, 4 and 0.
  SelectExperts(Routing(TopkMethod::kGreedy, 12, 3, 1, 1, 1.0, false), scores, ids, weights);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 9);
  EXPECT_EQ(ids[2], 4);
}

TEST(MoeRoutingTest, NormTopkProbRenormalizesWithoutScaling) {
  const ModelConfig config = Routing(TopkMethod::kGreedy, 4, 2, 1, 1, 16.0, true);
  const float scores[4] = {0.1f, 0.4f, 0.3f, 0.2f};
  int32_t ids[2];
  float weights[2];
  SelectExperts(config, scores, ids, weights);
  EXPECT_FLOAT_EQ(weights[0], 0.4f / 0.7f);
  EXPECT_FLOAT_EQ(weights[1], 0.3f / 0.7f);
  // With k = 1 the remote code does not renormalize: it scales.
  const ModelConfig single = Routing(TopkMethod::kGreedy, 4, 1, 1, 1, 16.0, true);
  SelectExperts(single, scores, ids, weights);
  EXPECT_FLOAT_EQ(weights[0], 0.4f * 16);
}

TEST(MoeRoutingTest, TiesGoToLowerIds) {
  const ModelConfig config = Routing(TopkMethod::kGreedy, 4, 2, 1, 1, 1.0, false);
  const float scores[4] = {0.25f, 0.25f, 0.25f, 0.25f};
  int32_t ids[2];
  float weights[2];
  SelectExperts(config, scores, ids, weights);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
}

// RouteTokens is softmax + SelectExperts per token.
TEST(RouteTokensTest, MatchesSoftmaxThenSelectExperts) {
  const ModelConfig config = Routing(TopkMethod::kGroupLimitedGreedy, 8, 2, 4, 2, 16.0, false);
  std::vector<float> logits = {0.5f, -1.0f, 2.0f,  0.25f, 1.5f, -0.5f, 0.0f,  3.0f,
                               1.0f, 1.0f,  -2.0f, 0.5f,  0.0f, 2.5f,  -1.0f, 0.1f};
  std::vector<float> scores = logits;
  std::vector<int32_t> ids(4), expected_ids(4);
  std::vector<float> weights(4), expected_weights(4);
  for (int t = 0; t < 2; ++t) {
    cpu::Softmax(&scores[t * 8], 8);
    SelectExperts(config, &scores[t * 8], &expected_ids[t * 2], &expected_weights[t * 2]);
  }
  ASSERT_TRUE(RouteTokens(config, 3, logits.data(), 2, ids.data(), weights.data()).ok());
  EXPECT_EQ(ids, expected_ids);
  EXPECT_EQ(weights, expected_weights);
  EXPECT_EQ(logits, scores);
}

// A NaN or an infinity among a token's router logits (weights or
// activations that overflowed) is an error naming the layer, the token and
// the expert, instead of a routing chosen by comparisons with NaN.
TEST(RouteTokensTest, NonFiniteScoresAreAnInternalErrorNamingLayerTokenAndExpert) {
  const ModelConfig config = Routing(TopkMethod::kGreedy, 4, 2, 1, 1, 1.0, false);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<int32_t> ids(4);
  std::vector<float> weights(4);
  std::vector<float> logits = {0.1f, 0.2f, 0.3f, 0.4f, 0.1f, 0.2f, nan, 0.4f};
  absl::Status status = RouteTokens(config, 7, logits.data(), 2, ids.data(), weights.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(status.message()),
              ::testing::StartsWith(
                  "layer 7: non-finite router scores for token 1 (expert 0 is nan); the model's "
                  "weights or activations overflow"));
  // +inf makes the softmax inf/inf = NaN for that expert (and 0 - inf for
  // the max subtraction elsewhere): still caught.
  logits = {0.1f, inf, 0.3f, 0.4f, 0.1f, 0.2f, 0.3f, 0.4f};
  status = RouteTokens(config, 2, logits.data(), 2, ids.data(), weights.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(),
              ::testing::HasSubstr("layer 2: non-finite router scores for token 0"));
}

}  // namespace
}  // namespace dsv2
