#include "common/tensor/dtype.h"

#include <cmath>

namespace dsv2 {

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kF32: return "F32";
    case DType::kI8: return "I8";
  }
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  if (name == "BF16") return DType::kBF16;
  if (name == "F16") return DType::kF16;
  if (name == "F32") return DType::kF32;
  if (name == "I8") return DType::kI8;
  return std::nullopt;
}

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // Zero or subnormal.
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  }
  uint32_t out;
  std::memcpy(&out, &magnitude, sizeof(out));
  out |= sign;
  float value;
  std::memcpy(&value, &out, sizeof(value));
  return value;
}

uint16_t FloatToF16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const float magnitude = std::fabs(value);
  if (std::isnan(value)) return sign | 0x7e00u;
  if (magnitude >= 65520.0f) return sign | 0x7c00u;  // Rounds to infinity.
  if (magnitude < 6.103515625e-05f) {
    // Subnormal range: units of 2^-24, round to nearest even.
    return sign | static_cast<uint16_t>(std::nearbyint(magnitude * 16777216.0f));
  }
  int exponent;
  const float fraction = std::frexp(magnitude, &exponent);  // magnitude = fraction * 2^exponent
  // fraction in [0.5, 1): 11 significant bits.
  uint32_t significand = static_cast<uint32_t>(std::nearbyint(fraction * 2048.0f));
  if (significand == 2048) {
    significand = 1024;
    ++exponent;
  }
  if (exponent + 14 >= 31) return sign | 0x7c00u;
  return sign | static_cast<uint16_t>((static_cast<uint32_t>(exponent + 14) << 10) |
                                      (significand & 0x3ffu));
}

void ConvertToFloat(const void* data, DType dtype, int64_t n, float* out) {
  switch (dtype) {
    case DType::kBF16: {
      const auto* in = static_cast<const uint16_t*>(data);
      for (int64_t i = 0; i < n; ++i) out[i] = BF16ToFloat(in[i]);
      return;
    }
    case DType::kF16: {
      const auto* in = static_cast<const uint16_t*>(data);
      for (int64_t i = 0; i < n; ++i) out[i] = F16ToFloat(in[i]);
      return;
    }
    case DType::kF32:
      std::memcpy(out, data, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kI8: {
      const auto* in = static_cast<const int8_t*>(data);
      for (int64_t i = 0; i < n; ++i) out[i] = in[i];
      return;
    }
  }
}

void ConvertFromFloat(const float* data, int64_t n, DType dtype, void* out) {
  switch (dtype) {
    case DType::kBF16: {
      auto* o = static_cast<uint16_t*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = FloatToBF16(data[i]);
      return;
    }
    case DType::kF16: {
      auto* o = static_cast<uint16_t*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = FloatToF16(data[i]);
      return;
    }
    case DType::kF32:
      std::memcpy(out, data, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kI8: {
      auto* o = static_cast<int8_t*>(out);
      for (int64_t i = 0; i < n; ++i) {
        const float v = std::nearbyint(data[i]);
        o[i] = static_cast<int8_t>(v >= 127.0f ? 127 : v <= -127.0f ? -127 : v == v ? v : 0);
      }
      return;
    }
  }
}

}  // namespace dsv2
