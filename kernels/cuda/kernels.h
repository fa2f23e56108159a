// Host launchers of the CUDA kernels behind CudaBackend (cuda_backend.h).
// A plain C++ header: .cc files call these without nvcc. Each launcher takes
// device pointers, a plain parameter list or struct and a stream, enqueues
// its kernel(s) and returns cudaGetLastError() of the launch (the caller
// names the launcher when it is not cudaSuccess). Nothing here synchronizes
// or allocates.
//
// Numbers: activations are float32 in memory and every sum is accumulated in
// float32 (double where the host reference uses double: sampling). Weights
// read by these kernels directly (embedding rows, W_UK / W_UV in the absorbed
// attention) are bf16 or float32 on the device (WeightType). What each kernel
// computes, its launch shape and its tolerance against the CPU reference:
// docs/gpu.md.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace dsv2::cuda {

// How a weight is stored on the device: bf16 as in the checkpoint (int8
// weights are dequantized to it), or float32 (f32 weights, and f16 ones
// widened exactly).
enum class WeightType : int { kBF16 = 0, kF32 = 1 };

// ---- elementwise.cu -----------------------------------------------------------
// out[i, :] = float32(table[ids[i], :]) for n device ids; table [*, cols].
cudaError_t LaunchEmbedding(const void* table, WeightType type, int64_t cols, const int32_t* ids,
                            int64_t n, float* out, cudaStream_t stream);
// y[r] = w ⊙ x[r] / sqrt(mean(x[r]²) + eps) for n rows of dim; y may be x.
cudaError_t LaunchRmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
                          float* y, cudaStream_t stream);
// y[i] += x[i].
cudaError_t LaunchAdd(const float* x, float* y, int64_t count, cudaStream_t stream);
// out[i] = silu(gate[i]) · up[i]; out may alias gate or up.
cudaError_t LaunchSiluMul(const float* gate, const float* up, float* out, int64_t count,
                          cudaStream_t stream);
// RoPE in place on `rows` vectors x + r·stride + offset of 2·half floats,
// adjacent pairs (x[2i], x[2i+1]) rotated by cos/sin[t, i], where
// t = r / rows_per_token and cos/sin are [tokens, half] (rope.h's Apply).
cudaError_t LaunchRope(float* x, int64_t rows, int64_t rows_per_token, int64_t stride,
                       int64_t offset, int64_t half, const float* cos, const float* sin,
                       cudaStream_t stream);

// ---- convert.cu ---------------------------------------------------------------
// Activations for a bf16 GEMM: hi[r, c] = bf16(x[r·x_stride + c]) for n rows
// of cols (round to nearest even) and, when lo is not null, the remainder
// lo = bf16(x − hi), so that hi + lo carries ~16 significant bits.
cudaError_t LaunchSplitBf16(const float* x, int64_t n, int64_t cols, int64_t x_stride,
                            uint16_t* hi, uint16_t* lo, cudaStream_t stream);
// y[i] = a[i] + b[i] (the hi and lo halves of a split GEMM).
cudaError_t LaunchAddHalves(const float* a, const float* b, int64_t count, float* y,
                            cudaStream_t stream);
// out = bf16(q · scale) for an int8 matrix [rows, cols] with per-32-column
// block scales [rows, ceil(cols / 32)] (common/tensor/q8.h).
cudaError_t LaunchDequantQ8ToBf16(const int8_t* q, const float* scales, int64_t rows, int64_t cols,
                                  uint16_t* out, cudaStream_t stream);
// out = float32(half) for count f16 values (exact).
cudaError_t LaunchF16ToF32(const uint16_t* in, int64_t count, float* out, cudaStream_t stream);

// ---- routing.cu ---------------------------------------------------------------
struct RouteParams {
  int64_t n = 0;        // Tokens.
  int64_t experts = 0;  // n_routed_experts (≤ 1024).
  int64_t k = 0;        // num_experts_per_tok (≤ 32).
  bool group_limited = false;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
};
// Per token (one block each): logits [n, experts] → softmax scores in place;
// status[t] = 0, or 1 when a score or a weight is not finite (ids and weights
// of that token are then meaningless); otherwise ids/weights [n, k] as
// moe_routing.cc's SelectExperts: group-limited masking to 0, top-k with the
// lower id on ties, s / (Σs + 1e-20) when norm_topk_prob and k > 1, else
// s · routed_scaling_factor.
cudaError_t LaunchRoute(const RouteParams& params, float* logits, int32_t* ids, float* weights,
                        int32_t* status, cudaStream_t stream);

// ---- mla_latents.cu -----------------------------------------------------------
// The new latents of n tokens: dst[i] = [RMSNorm(kv_a[i, :rank]) ⊙ norm |
// RoPE(kv_a[i, rank:])] with kv_a [n, rank + rope], dst a device table of n
// pointers to latent vectors.
cudaError_t LaunchMlaWriteLatents(const float* kv_a, int64_t n, int64_t rank, int64_t rope,
                                  const float* norm, float eps, const float* cos, const float* sin,
                                  float* const* dst, cudaStream_t stream);
// out[j, :width] = table[j][:width] for j < count (a contiguous copy of
// latents read through a pointer table).
cudaError_t LaunchGatherLatents(const float* const* table, int64_t count, int64_t width, float* out,
                                cudaStream_t stream);

// ---- mla_decode.cu (absorbed form) --------------------------------------------
struct MlaDecodeParams {
  int64_t n = 0, heads = 0, nope = 0, rope = 0, v = 0, rank = 0;
  int64_t start = 0;  // Cache positions before the n new ones.
  float softmax_scale = 0.0f;
  const float* q = nullptr;      // [n, H, nope + rope], roped.
  const void* kv_b = nullptr;    // [H·(nope + v), rank]: per head W_UK rows, then W_UV rows.
  WeightType kv_b_type = WeightType::kBF16;
  const float* const* latents = nullptr;  // [start + n] pointers to [rank + rope].
  int64_t splits = 1;      // Split-KV: from MlaDecodeSplits.
  int64_t split_size = 0;  // Positions per split.
  // Scratch: query [n, H, rank + rope]; per split partial accumulators
  // [n, H, splits, rank] and (max, sum) [n, H, splits, 2]; o_latent [n, H, rank].
  float* query = nullptr;
  float* partial_acc = nullptr;
  float* partial_ml = nullptr;
  float* o_latent = nullptr;
  float* o = nullptr;  // [n, H, v]
};
// Splits of the KV positions so that the attention kernel fills `sm_count`
// multiprocessors: writes the split size, returns the split count.
int64_t MlaDecodeSplits(int64_t n, int64_t heads, int64_t context, int sm_count,
                        int64_t* split_size);
// query = [W_UK[h]ᵀ q_nope | q_pe]; per split, online-softmax partials over
// the latents; combine; o = W_UV[h] · o_latent.
cudaError_t LaunchMlaDecode(const MlaDecodeParams& params, cudaStream_t stream);

// ---- mla_prefill.cu (decompressed form) ---------------------------------------
struct MlaPrefillParams {
  int64_t n = 0, heads = 0, nope = 0, rope = 0, v = 0, rank = 0;
  int64_t start = 0;
  float softmax_scale = 0.0f;
  const float* q = nullptr;               // [n, H, nope + rope], roped.
  const float* kv = nullptr;              // [start + n, H, nope + v]: kv_b · c per position.
  const float* const* latents = nullptr;  // [start + n]: k_pe at offset rank.
  float* o = nullptr;                     // [n, H, v]
};
// Causal attention, query tiles against key tiles with an online softmax.
cudaError_t LaunchMlaPrefill(const MlaPrefillParams& params, cudaStream_t stream);

// ---- experts.cu ---------------------------------------------------------------
// out[i, :] = x[rows[i], :] for m rows of `hidden`.
cudaError_t LaunchGatherRows(const float* x, const int32_t* rows, int64_t m, int64_t hidden,
                             float* out, cudaStream_t stream);
// partials[r, :] = Σ_j w[r, j] · y[slot[r, j], :] over the k slots of row r in
// order (slot -1 skipped), starting from zero, as fused multiply-adds.
cudaError_t LaunchCombineSlots(const float* y, const int32_t* slot, const float* w, int64_t rows,
                               int64_t k, int64_t hidden, float* partials, cudaStream_t stream);

// ---- sampling.cu --------------------------------------------------------------
// out[r] = index of the largest logits[r, :], the lowest among equals.
cudaError_t LaunchArgMax(const float* logits, int64_t rows, int64_t vocab, int32_t* out,
                         cudaStream_t stream);
struct SampleRowParams {
  float temperature = 1.0f;  // > 0 (rows with 0 are greedy).
  float top_p = 1.0f;        // In (0, 1].
  float min_p = 0.0f;        // In [0, 1].
  int64_t top_k = 0;         // 0: every token.
  float uniform = 0.0f;      // The row's draw in [0, 1), given by the caller.
};
// Per row (one block): common/sampling Sampler::Sample's choice with the
// draw `uniform` · kept mass instead of its generator: candidates by
// descending logit (ties: lower id) cut to top_k; probabilities
// exp((l − max) / T) in double; the smallest prefix reaching top_p; those at
// least min_p times the best; the first candidate whose running mass exceeds
// the draw. `params` is a device array [rows].
cudaError_t LaunchSample(const float* logits, int64_t rows, int64_t vocab,
                         const SampleRowParams* params, int32_t* out, cudaStream_t stream);

}  // namespace dsv2::cuda
