// Rotary position embedding of DeepSeek-V2: RoPE on the qk_rope_head_dim
// slice of queries and the shared key, with YaRN frequency interpolation and
// DeepSeek's cos/sin mscale [REMOTE DeepseekV2YarnRotaryEmbedding; model
// reference §2 "YaRN frequencies"].
//
// Frequencies and angles are computed in float32 exactly as the reference
// implementations do (float32 inverse frequencies, float32 position × ω), so
// angles agree with them bit for bit at every position, including far beyond
// the original context where float32 rounding of the angle is visible.
//
// Layout: each adjacent pair (x[2i], x[2i+1]) is rotated by pos·ω_i and kept
// in place (the interleaved layout of HF, vLLM and llama.cpp). The remote code
// stores the result de-interleaved; attention scores are identical.
#pragma once

#include <cstdint>
#include <vector>

#include "common/model/config.h"

namespace dsv2 {

class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const ModelConfig& config);

  int64_t rotary_dim() const { return 2 * static_cast<int64_t>(inv_freq_.size()); }
  // ω_i for i in [0, rotary_dim/2).
  const std::vector<float>& inv_freq() const { return inv_freq_; }
  // The factor on cos and sin: g(s, mscale) / g(s, mscale_all_dim), 1.0 for
  // the published configs.
  float cos_sin_scale() const { return cos_sin_scale_; }
  // The YaRN correction range [low, high] in pair indices (for inspection
  // and tests); {0, 0} without YaRN.
  std::pair<double, double> correction_range() const { return {low_, high_}; }

  // cos and sin of pos·ω_i times cos_sin_scale(), each [rotary_dim/2].
  void CosSin(int64_t pos, float* cos, float* sin) const;
  // Rotates x [rotary_dim] in place with a row from CosSin.
  static void Apply(const float* cos, const float* sin, int64_t half_dim, float* x);

 private:
  std::vector<float> inv_freq_;
  float cos_sin_scale_ = 1.0f;
  double low_ = 0.0, high_ = 0.0;
};

}  // namespace dsv2
