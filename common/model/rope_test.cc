#include "common/model/rope.h"

#include <cmath>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

ModelConfig PublishedRope() {
  ModelConfig config;
  config.qk_rope_head_dim = 64;
  config.rope_theta = 10000;
  config.rope_scaling = YarnScaling{.factor = 40,
                                    .original_max_position_embeddings = 4096,
                                    .beta_fast = 32,
                                    .beta_slow = 1,
                                    .mscale = 0.707,
                                    .mscale_all_dim = 0.707};
  return config;
}

TEST(RopeTest, PublishedYarnRangeAndBlend) {
  const RotaryEmbedding rope(PublishedRope());
  // low = max(floor(corr(32)), 0) = 10, high = min(ceil(corr(1)), 63) = 23 [model reference §2].
  EXPECT_EQ(rope.correction_range().first, 10);
  EXPECT_EQ(rope.correction_range().second, 23);
  EXPECT_EQ(rope.cos_sin_scale(), 1.0f);
  ASSERT_EQ(rope.inv_freq().size(), 32u);
  for (int i = 0; i < 32; ++i) {
    const double extra = std::pow(10000.0, -2.0 * i / 64);
    const double inter = extra / 40;
    const double ramp = std::clamp((i - 10.0) / 13.0, 0.0, 1.0);
    const double expected = inter * ramp + extra * (1 - ramp);
    EXPECT_NEAR(rope.inv_freq()[i], expected, 2e-7 * expected) << i;
  }
}

TEST(RopeTest, CosSinScaleWhenMscalesDiffer) {
  ModelConfig config = PublishedRope();
  config.rope_scaling->mscale = 1.0;
  const RotaryEmbedding rope(config);
  const double expected = (0.1 * std::log(40.0) + 1) / (0.0707 * std::log(40.0) + 1);
  EXPECT_NEAR(rope.cos_sin_scale(), expected, 1e-6);
}

TEST(RopeTest, NoScalingUsesPlainFrequencies) {
  ModelConfig config = PublishedRope();
  config.rope_scaling.reset();
  const RotaryEmbedding rope(config);
  for (int i = 0; i < 32; ++i) {
    EXPECT_NEAR(rope.inv_freq()[i], std::pow(10000.0, -2.0 * i / 64), 1e-7 * std::pow(10000.0, -2.0 * i / 64));
  }
}

TEST(RopeTest, RotatesAdjacentPairsByPositionTimesFrequency) {
  const RotaryEmbedding rope(PublishedRope());
  const int64_t pos = 5000;
  std::vector<float> cos(32), sin(32);
  rope.CosSin(pos, cos.data(), sin.data());
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = 0.1f * i - 3.0f;
  std::vector<float> y = x;
  RotaryEmbedding::Apply(cos.data(), sin.data(), 32, y.data());
  for (int i = 0; i < 32; ++i) {
    const float angle = static_cast<float>(pos) * rope.inv_freq()[i];
    const double c = std::cos(angle), s = std::sin(angle);
    EXPECT_NEAR(y[2 * i], x[2 * i] * c - x[2 * i + 1] * s, 1e-5);
    EXPECT_NEAR(y[2 * i + 1], x[2 * i + 1] * c + x[2 * i] * s, 1e-5);
    // A rotation keeps each pair's length.
    EXPECT_NEAR(std::hypot(y[2 * i], y[2 * i + 1]), std::hypot(x[2 * i], x[2 * i + 1]), 1e-5);
  }
}

}  // namespace
}  // namespace dsv2
