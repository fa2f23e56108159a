// The latent KV cache of one sequence, contiguous, with a fixed capacity:
// layout [layer][position][latent_dim] in float32, in a backend's memory.
// Used by the `dsv2` tool and the tests; the serving engine uses the paged
// cache instead.
#pragma once

#include <cstdint>

#include "common/model/backend.h"
#include "common/model/config.h"
#include "common/model/kv_cache_view.h"

namespace dsv2 {

class LatentKvCache final : public KvCacheView {
 public:
  // The latents live in `backend`'s memory (the model's backend).
  LatentKvCache(const ModelConfig& config, int64_t capacity,
                Backend& backend = CpuBackendInstance())
      : latent_dim_(config.latent_dim()),
        capacity_(capacity),
        data_(backend.Allocate(config.num_hidden_layers * capacity * latent_dim_)) {}

  int64_t size() const override { return size_; }
  int64_t capacity() const override { return capacity_; }
  float* At(int64_t layer, int64_t pos) override {
    return data_.data() + (layer * capacity_ + pos) * latent_dim_;
  }
  int64_t ContiguousFrom(int64_t pos) const override { return capacity_ - pos; }
  void set_size(int64_t size) override { size_ = size; }
  const Backend* backend() const override { return data_.backend(); }

 private:
  int64_t latent_dim_;
  int64_t capacity_;
  int64_t size_ = 0;
  Buffer data_;
};

}  // namespace dsv2
