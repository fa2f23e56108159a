#include "common/model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace dsv2 {
namespace {

// The rotary-pair index at which a wavelength completes `rotations` turns
// within the original context [REMOTE yarn_find_correction_dim].
double CorrectionDim(double rotations, int64_t dim, double base, int64_t original_max) {
  return dim * std::log(original_max / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
}

}  // namespace

RotaryEmbedding::RotaryEmbedding(const ModelConfig& config) {
  const int64_t dim = config.qk_rope_head_dim;
  const int64_t half = dim / 2;
  const float base = static_cast<float>(config.rope_theta);
  // base ** (arange(0, dim, 2) / dim) in float32, as torch computes it.
  std::vector<float> pos_freqs(half);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    pos_freqs[i] = std::pow(base, exponent);
  }
  inv_freq_.resize(half);
  if (!config.rope_scaling) {
    for (int64_t i = 0; i < half; ++i) inv_freq_[i] = 1.0f / pos_freqs[i];
    return;
  }
  const YarnScaling& yarn = *config.rope_scaling;
  const int64_t original = yarn.original_max_position_embeddings;
  low_ = std::max(std::floor(CorrectionDim(yarn.beta_fast, dim, config.rope_theta, original)), 0.0);
  high_ = std::min(std::ceil(CorrectionDim(yarn.beta_slow, dim, config.rope_theta, original)),
                   static_cast<double>(dim - 1));
  const float low = static_cast<float>(low_);
  float high = static_cast<float>(high_);
  if (low == high) high += 0.001f;  // Avoids a zero-width ramp [REMOTE].
  const float factor = static_cast<float>(yarn.factor);
  for (int64_t i = 0; i < half; ++i) {
    const float extrapolated = 1.0f / pos_freqs[i];
    const float interpolated = 1.0f / (factor * pos_freqs[i]);
    const float ramp = std::clamp((static_cast<float>(i) - low) / (high - low), 0.0f, 1.0f);
    const float keep = 1.0f - ramp;  // The remote code's inv_freq_mask.
    inv_freq_[i] = interpolated * (1.0f - keep) + extrapolated * keep;
  }
  cos_sin_scale_ = static_cast<float>(YarnMscale(yarn.factor, yarn.mscale) /
                                      YarnMscale(yarn.factor, yarn.mscale_all_dim));
}

void RotaryEmbedding::CosSin(int64_t pos, float* cos, float* sin) const {
  const float p = static_cast<float>(pos);
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    const float angle = p * inv_freq_[i];  // Rounded to float32 like the references.
    cos[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * cos_sin_scale_;
    sin[i] = static_cast<float>(std::sin(static_cast<double>(angle))) * cos_sin_scale_;
  }
}

void RotaryEmbedding::Apply(const float* cos, const float* sin, int64_t half_dim, float* x) {
  for (int64_t i = 0; i < half_dim; ++i) {
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * cos[i] - b * sin[i];
    x[2 * i + 1] = b * cos[i] + a * sin[i];
  }
}

}  // namespace dsv2
