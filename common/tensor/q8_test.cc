#include "common/tensor/q8.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

TEST(Q8Test, BlocksOf32WithAPartialLastBlock) {
  EXPECT_EQ(Q8Blocks(0), 0);
  EXPECT_EQ(Q8Blocks(1), 1);
  EXPECT_EQ(Q8Blocks(32), 1);
  EXPECT_EQ(Q8Blocks(33), 2);
  // Block 0: absmax 2 at element 5; block 1 (3 elements): absmax 0.5.
  std::vector<float> x(35, 0.25f);
  x[5] = -2.0f;
  x[33] = 0.5f;
  std::vector<int8_t> q(35);
  std::vector<float> scales(2);
  ASSERT_TRUE(QuantizeQ8(x.data(), 35, q.data(), scales.data()));
  EXPECT_EQ(scales[0], 2.0f / 127.0f);
  EXPECT_EQ(scales[1], 0.5f / 127.0f);
  EXPECT_EQ(q[5], -127);
  EXPECT_EQ(q[0], 16);  // 0.25 · 63.5 = 15.875.
  EXPECT_EQ(q[33], 127);
  EXPECT_EQ(q[32], 64);  // 0.25 · 254 = 63.5: half to even.
}

TEST(Q8Test, RoundsToNearestWithinHalfAStep) {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> x(1000);
  for (float& v : x) v = dist(rng);
  std::vector<int8_t> q(x.size());
  std::vector<float> scales(Q8Blocks(1000));
  ASSERT_TRUE(QuantizeQ8(x.data(), 1000, q.data(), scales.data()));
  for (size_t i = 0; i < x.size(); ++i) {
    const float scale = scales[i / kQ8Block];
    ASSERT_LE(std::abs(q[i]), 127);
    ASSERT_LE(std::fabs(q[i] * scale - x[i]), 0.5001f * scale) << i;
  }
}

TEST(Q8Test, ZeroAndNonFiniteBlocks) {
  std::vector<float> x(64, 0.0f);
  x[40] = NAN;
  std::vector<int8_t> q(64, 1);
  std::vector<float> scales(2);
  EXPECT_FALSE(QuantizeQ8(x.data(), 64, q.data(), scales.data()));
  EXPECT_EQ(scales[0], 0.0f);
  EXPECT_TRUE(std::isnan(scales[1]));
  for (int8_t v : q) EXPECT_EQ(v, 0);
  x[40] = INFINITY;
  EXPECT_FALSE(QuantizeQ8(x.data(), 64, q.data(), scales.data()));
  EXPECT_TRUE(std::isnan(scales[1]));
}

}  // namespace
}  // namespace dsv2
