#include "common/tensor/q8.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace dsv2 {

bool QuantizeQ8(const float* x, int64_t n, int8_t* q, float* scales) {
  bool finite = true;
  for (int64_t begin = 0; begin < n; begin += kQ8Block) {
    const int64_t end = std::min(n, begin + kQ8Block);
    float absmax = 0.0f;
    bool block_finite = true;
    for (int64_t i = begin; i < end; ++i) {
      absmax = std::max(absmax, std::fabs(x[i]));
      block_finite &= std::isfinite(x[i]);
    }
    float* scale = &scales[begin / kQ8Block];
    if (!block_finite || absmax == 0.0f) {
      *scale = block_finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      std::fill(q + begin, q + end, int8_t{0});
      finite &= block_finite;
      continue;
    }
    *scale = absmax / 127.0f;
    const float inverse = 127.0f / absmax;
    for (int64_t i = begin; i < end; ++i) {
      // Adding and subtracting 1.5 · 2^23 rounds a float of magnitude below
      // 2^22 to an integer, half to even, as nearbyint does, but in plain
      // arithmetic that vectorizes (activations are quantized at every
      // Linear). |x · inverse| ≤ 127 up to one rounding; the clamp keeps it so.
      constexpr float kRound = 12582912.0f;
      const float v = std::clamp((x[i] * inverse + kRound) - kRound, -127.0f, 127.0f);
      q[i] = static_cast<int8_t>(v);
    }
  }
  return finite;
}

}  // namespace dsv2
