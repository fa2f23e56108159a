#include "common/tensor/dtype.h"

#include <cmath>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

TEST(DTypeTest, BF16RoundTripAndRounding) {
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f)), 1.0f);
  EXPECT_EQ(BF16ToFloat(FloatToBF16(-3.5f)), -3.5f);
  // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  // Slightly above halfway rounds up.
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20))),
            1.0f + std::ldexp(1.0f, -7));
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(NAN))));
}

TEST(DTypeTest, F16MatchesIeeeHalf) {
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(F16ToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(F16ToFloat(0x7c00)));
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {
    ASSERT_EQ(FloatToF16(F16ToFloat(static_cast<uint16_t>(bits))), bits) << bits;
  }
  EXPECT_EQ(FloatToF16(1e6f), 0x7c00);
}

TEST(DTypeTest, ParseNames) {
  EXPECT_EQ(ParseDType("BF16"), DType::kBF16);
  EXPECT_EQ(ParseDType("F16"), DType::kF16);
  EXPECT_EQ(ParseDType("F32"), DType::kF32);
  EXPECT_EQ(ParseDType("I8"), DType::kI8);
  EXPECT_EQ(DTypeSize(DType::kI8), 1);
  EXPECT_EQ(DTypeName(DType::kI8), "I8");
  EXPECT_FALSE(ParseDType("F64").has_value());
  EXPECT_FALSE(ParseDType("bf16").has_value());
  float out[3];
  const uint16_t in[3] = {0x3f80, 0x4000, 0xbf80};
  ConvertToFloat(in, DType::kBF16, 3, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 2.0f);
  EXPECT_EQ(out[2], -1.0f);
}

// Without its scales an int8 tensor converts to its stored integers.
TEST(DTypeTest, I8ConvertsItsIntegers) {
  const int8_t in[3] = {-127, 0, 5};
  float out[3];
  ConvertToFloat(in, DType::kI8, 3, out);
  EXPECT_EQ(out[0], -127.0f);
  EXPECT_EQ(out[2], 5.0f);
  EXPECT_EQ(LoadAsFloat(in, DType::kI8, 2), 5.0f);
  const float values[4] = {2.5f, -300.0f, 126.6f, NAN};
  int8_t back[4];
  ConvertFromFloat(values, 4, DType::kI8, back);
  EXPECT_EQ(back[0], 2);  // Half to even.
  EXPECT_EQ(back[1], -127);
  EXPECT_EQ(back[2], 127);
  EXPECT_EQ(back[3], 0);
}

}  // namespace
}  // namespace dsv2
