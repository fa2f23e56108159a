// The latent KV cache of one sequence: for every layer and position, the
// normalized compressed KV c (kv_lora_rank values) followed by the roped
// shared key k_pe (qk_rope_head_dim values) — 576 float32 values per token
// per layer for the published models, instead of 2·H·d_h for MHA.
//
// Layout [layer][position][latent_dim], contiguous, with a fixed capacity.
// Not thread-safe; one sequence is advanced by one caller at a time.
#pragma once

#include <cstdint>
#include <vector>

#include "common/model/config.h"

namespace dsv2 {

class LatentKvCache {
 public:
  LatentKvCache(const ModelConfig& config, int64_t capacity)
      : layers_(config.num_hidden_layers),
        latent_dim_(config.latent_dim()),
        capacity_(capacity),
        data_(static_cast<size_t>(layers_ * capacity * latent_dim_)) {}

  int64_t size() const { return size_; }  // Positions stored.
  int64_t capacity() const { return capacity_; }
  int64_t latent_dim() const { return latent_dim_; }

  // The latent vector of `pos` in `layer`; rows of a layer are latent_dim() apart.
  float* At(int64_t layer, int64_t pos) {
    return data_.data() + (layer * capacity_ + pos) * latent_dim_;
  }
  const float* At(int64_t layer, int64_t pos) const {
    return data_.data() + (layer * capacity_ + pos) * latent_dim_;
  }

  // Called by the forward pass once all layers of new positions are written.
  void set_size(int64_t size) { size_ = size; }
  // Forgets positions from `size` on (e.g. to re-run a suffix).
  void Truncate(int64_t size) { size_ = size < size_ ? size : size_; }

 private:
  int64_t layers_;
  int64_t latent_dim_;
  int64_t capacity_;
  int64_t size_ = 0;
  std::vector<float> data_;
};

}  // namespace dsv2
