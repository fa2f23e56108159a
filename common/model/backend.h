// The compute backend under the model: every operation of the layer math,
// the memory its activations live in, and the residency of the weights.
// DeepseekV2Model, the routed experts and the expert server compute only
// through a Backend, so the same forward pass runs on the CPU (CpuBackend,
// cpu_backend.h: the kernels of kernels/cpu, the reference numbers) or on a
// GPU (CudaBackend, kernels/cuda/cuda_backend.h, CUDA builds).
//
// Memory. Activation pointers passed to the ops ("backend memory") come
// from Allocate: host memory for the CPU, device memory for CUDA. Weights
// are passed as the host descriptors of the checkpoint (WeightMatrix over the
// mapping, norm vectors in ModelWeights); a backend that computes elsewhere
// keeps its own resident copy of each, made by Prepare before the first
// forward. The latent KV cache's storage is backend memory too: a KvCacheView
// handed to MlaAttention returns backend pointers from At().
//
// Ordering. Ops run in the order they are issued (the CUDA backend queues
// them on one stream); Download waits for everything issued before it. Host arguments (token
// ids, routing results, expert row lists) are read before the call returns.
//
// Numbers. CpuBackend is the reference: each op's numbers are those of the
// kernels in kernels/cpu, bit for bit. Other backends are tested against it
// per op and through the model with stated tolerances (docs/gpu.md).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "common/model/config.h"
#include "common/model/kv_cache_view.h"
#include "common/model/weights.h"
#include "kernels/cpu/weight_matrix.h"

namespace dsv2 {

class Backend;

// Backend memory for `count` floats, freed with the buffer.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend* backend, float* data, int64_t count)
      : backend_(backend), data_(data), count_(count) {}
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  float* data() const { return data_; }
  int64_t size() const { return count_; }
  Backend* backend() const { return backend_; }

 private:
  Backend* backend_ = nullptr;
  float* data_ = nullptr;
  int64_t count_ = 0;
};

// The shape of one MLA layer's attention.
struct MlaShape {
  int64_t heads = 0;
  int64_t nope = 0;     // qk_nope_head_dim
  int64_t rope = 0;     // qk_rope_head_dim
  int64_t v = 0;        // v_head_dim
  int64_t rank = 0;     // kv_lora_rank
  float softmax_scale = 0.0f;
  float latent_norm_eps = 0.0f;  // kv_a_layernorm's epsilon
  int64_t qk() const { return nope + rope; }
  int64_t latent() const { return rank + rope; }
};

// One sequence's share of an MlaAttention call (see there).
struct MlaChunk {
  KvCacheView* cache = nullptr;
  int64_t row = 0;  // Its first row of the call's q, kv_a, cos, sin and o.
  int64_t n = 0;
  bool absorbed = false;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda".
  virtual std::string_view name() const = 0;
  // What the model's load line says it computes on: the name, and for the
  // CPU the kernels in use ("cpu, avx512 kernels").
  virtual std::string Description() const { return std::string(name()); }
  // Whether backend memory is host memory (the CPU): callers that hand
  // activations to host code (remote experts, the data plane) copy them
  // only when it is not.
  virtual bool host_memory() const { return false; }

  // ---- Memory -------------------------------------------------------------
  Buffer Allocate(int64_t count) { return Buffer(this, AllocateFloats(count), count); }
  // Host → backend and backend → host copies of `count` floats. Download
  // waits for the ops issued before it.
  virtual void Upload(const float* host, float* dst, int64_t count) = 0;
  virtual void Download(const float* src, float* host, int64_t count) = 0;
  // Makes the weights of `model` resident where the ops read them, the
  // routed experts too when `routed_experts` (nothing for the CPU, which
  // reads the checkpoint mapping). Weights left out are made resident when
  // an op first reads them. ResourceExhausted when they do not fit.
  virtual absl::Status Prepare(const ModelWeights& model, bool routed_experts) {
    return absl::OkStatus();
  }
  // Drops what Prepare (or a first use) made resident of `model`: its host
  // weights are about to go (the model is destroyed), and their addresses
  // may be reused by another model's.
  virtual void Release(const ModelWeights& model) {}

  // ---- Operations (all pointers are backend memory unless named host) -------
  // out[i] = table[ids[i]] for n host ids, as float32 rows.
  virtual void Embedding(const WeightMatrix& table, const int32_t* host_ids, int64_t n,
                         float* out) = 0;
  // Row-wise RMSNorm: y = weight ⊙ x / sqrt(mean(x²) + eps); in place when y == x.
  virtual void RmsNorm(const float* x, std::span<const float> weight, int64_t n, int64_t dim,
                       float eps, float* y) = 0;
  // y[n, w.rows] = x[n, w.cols] · wᵀ in the weight's stored dtype.
  virtual void Linear(const float* x, int64_t n, const WeightMatrix& w, float* y) = 0;
  // y[i] += x[i] (the residual stream).
  virtual void Add(const float* x, float* y, int64_t count) = 0;
  // out[i] = silu(gate[i]) · up[i]; out may alias gate.
  virtual void SiluMul(const float* gate, const float* up, float* out, int64_t count) = 0;

  // MLA attention of `layer` for the new tokens of one or more sequences
  // (chunks; each chunk's n tokens at rows [row, row + n) of q, kv_a, cos,
  // sin and o, at positions cache.size() … + n − 1 of its own cache): q
  // [rows, H, qk] (before RoPE) and kv_a [rows, rank + rope] (the
  // kv_a_proj_with_mqa outputs) with cos/sin [rows, rope/2] of the new
  // positions. Writes the new latents [RMSNorm(c) | RoPE(k_pe)] into each
  // cache (its size is not changed), ropes q in place, and writes o [rows,
  // H, v] attending causally over each chunk's cache. A chunk's `absorbed`
  // picks its form (both exact, deepseek_v2.h): MQA over the latents with
  // W_UK / W_UV folded in (decode), or K and V rebuilt from the latents
  // through kv_b (prefill). One call for a whole batch lets a backend read
  // each head's W_UK / W_UV once for all the batch's decode tokens.
  virtual void MlaAttention(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                            std::span<const float> kv_a_norm, std::span<const MlaChunk> chunks,
                            float* q, const float* kv_a, const float* cos, const float* sin,
                            float* o) = 0;

  // The MoE gate of `layer` for n tokens: router logits [n, E] (overwritten)
  // → host expert ids and weights [n, k] (moe_routing.h, including its
  // non-finite checks and their INTERNAL errors).
  virtual absl::Status Route(const ModelConfig& config, int64_t layer, float* logits, int64_t n,
                             int32_t* host_ids, float* host_weights) = 0;

  // The grouped expert FFN (routed_experts.h's ComputeExpertRows): for each
  // of the `source.size()` rows with k host slots (ids, -1 pads; weights),
  // partials[r] = Σ_slots (ascending) w · E_id(x[source[r]]), each expert
  // run once over all its rows. x and partials are backend memory.
  virtual void ExpertRows(std::span<const MlpWeights> experts, int64_t hidden, const float* x,
                          std::span<const int32_t> source, int64_t k, const int32_t* host_ids,
                          const float* host_weights, float* partials) = 0;

  // Dense SwiGLU MLP: out [n, out] = down(silu(gate·x) ⊙ up·x).
  void Mlp(const MlpWeights& mlp, const float* x, int64_t n, float* out);

 protected:
  virtual float* AllocateFloats(int64_t count) = 0;
  virtual void Free(float* data) = 0;
  friend class Buffer;
};

// The process-wide CPU backend (thread-safe; cpu_backend.cc). Backends by
// flag value: kernels/backends.h.
Backend& CpuBackendInstance();
// A CPU backend of its own: the same ops, its own allocations (e.g. for a
// second model whose caches must not mix with the first's).
std::unique_ptr<Backend> NewCpuBackend();

}  // namespace dsv2
