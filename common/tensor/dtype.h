// Element types of checkpoint tensors and their conversions to float32, the
// type all arithmetic runs in. kI8 is the integer part of a dsv2-int8 weight
// (common/tensor/q8.h): its value is the integer times its block's scale, so
// the conversions here, which have no scales, give the stored integers; the
// int8 kernels apply the scales, and nothing else reads int8 data.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace dsv2 {

enum class DType : uint8_t { kBF16, kF16, kF32, kI8 };

// Bytes per element.
inline constexpr int64_t DTypeSize(DType dtype) {
  return dtype == DType::kF32 ? 4 : dtype == DType::kI8 ? 1 : 2;
}

// The safetensors spelling: "BF16", "F16", "F32", "I8".
std::string_view DTypeName(DType dtype);

// Parses a safetensors dtype string; nullopt for anything this engine cannot
// compute with (the caller names the tensor in its error).
std::optional<DType> ParseDType(std::string_view name);

inline float BF16ToFloat(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

// Round to nearest even, as torch's .to(torch.bfloat16); NaN stays NaN.
inline uint16_t FloatToBF16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToFloat(uint16_t bits);
uint16_t FloatToF16(float value);

// Reads element `index` of a buffer of `dtype` as float32.
inline float LoadAsFloat(const void* data, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kBF16: return BF16ToFloat(static_cast<const uint16_t*>(data)[index]);
    case DType::kF16: return F16ToFloat(static_cast<const uint16_t*>(data)[index]);
    case DType::kF32: return static_cast<const float*>(data)[index];
    case DType::kI8: return static_cast<const int8_t*>(data)[index];  // Unscaled.
  }
  return 0.0f;
}

// Converts `n` elements of `dtype` starting at `data` to float32.
void ConvertToFloat(const void* data, DType dtype, int64_t n, float* out);
// Converts `n` float32 values to `dtype` (rounding to nearest even; for kI8,
// to the nearest integer, saturated to [-127, 127], NaN to 0).
void ConvertFromFloat(const float* data, int64_t n, DType dtype, void* out);

}  // namespace dsv2
