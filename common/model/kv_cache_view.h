// Where the forward pass reads and writes the latent KV cache of one
// sequence: per layer and position, kv_lora_rank values of normalized c
// followed by qk_rope_head_dim values of roped k_pe (latent_dim in all).
// LatentKvCache stores one sequence contiguously; the serving engine's paged
// cache maps positions to fixed-size blocks. Not thread-safe.
#pragma once

#include <cstdint>

namespace dsv2 {

class Backend;

class KvCacheView {
 public:
  virtual ~KvCacheView() = default;

  // Positions whose latents are stored (all layers).
  virtual int64_t size() const = 0;
  // Positions that can be stored: the forward pass writes [size, size + n)
  // and requires size + n <= capacity.
  virtual int64_t capacity() const = 0;
  // The latent vector of `pos` in `layer`.
  virtual float* At(int64_t layer, int64_t pos) = 0;
  // How many positions from `pos` on are stored consecutively, latent_dim
  // floats apart, so that kernels can read them as one matrix.
  virtual int64_t ContiguousFrom(int64_t pos) const = 0;
  // Called by the forward pass once every layer of the new positions is written.
  virtual void set_size(int64_t size) = 0;
  // The backend whose memory holds the latents: the model's (ForwardBatch
  // refuses a cache of another backend).
  virtual const Backend* backend() const = 0;
};

}  // namespace dsv2
