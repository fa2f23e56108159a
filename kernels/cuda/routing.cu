// The MoE gate's softmax and expert selection, one block per token (kernels.h).
#include "kernels/cuda/device_util.cuh"

namespace dsv2::cuda {
namespace {

constexpr int kThreads = 256;

// The better of two (value, id) candidates: larger value, then lower id.
__device__ __forceinline__ bool Better(float v, int id, float best_v, int best_id) {
  return v > best_v || (v == best_v && id < best_id);
}

// The best (value, id) over values[0, count) of shared memory; every thread
// gets it. `scratch_v` / `scratch_id` hold 32 entries.
__device__ int BlockArgMax(const float* values, int count, float* scratch_v, int* scratch_id) {
  float best_v = -INFINITY;
  int best_id = INT32_MAX;
  for (int e = threadIdx.x; e < count; e += blockDim.x) {
    if (Better(values[e], e, best_v, best_id)) best_v = values[e], best_id = e;
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best_v, offset);
    const int id = __shfl_xor_sync(0xffffffffu, best_id, offset);
    if (Better(v, id, best_v, best_id)) best_v = v, best_id = id;
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __syncthreads();
  if (lane == 0) scratch_v[warp] = best_v, scratch_id[warp] = best_id;
  __syncthreads();
  best_v = -INFINITY;
  best_id = INT32_MAX;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) {
    if (Better(scratch_v[w], scratch_id[w], best_v, best_id)) best_v = scratch_v[w], best_id = scratch_id[w];
  }
  return best_id;
}

// Dynamic shared memory: scores [E], candidates [E].
__global__ void RouteKernel(RouteParams p, float* logits, int32_t* ids, float* weights,
                            int32_t* status) {
  extern __shared__ float shared[];
  float* scores = shared;
  float* candidates = shared + p.experts;
  __shared__ float scratch[kWarp];
  __shared__ float scratch_v[kWarp];
  __shared__ int scratch_id[kWarp];
  __shared__ bool kept_group[64];
  const int E = static_cast<int>(p.experts), k = static_cast<int>(p.k);
  float* row = logits + static_cast<int64_t>(blockIdx.x) * E;

  // Softmax as cpu::Softmax: max-subtracted exponentials times 1 / sum.
  float max = -INFINITY;
  for (int e = threadIdx.x; e < E; e += blockDim.x) max = fmaxf(max, row[e]);
  max = BlockMax(max, scratch);
  float sum = 0.0f;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    scores[e] = expf(row[e] - max);
    sum += scores[e];
  }
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sum;
  int bad = 0;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    scores[e] *= inv;
    row[e] = scores[e];
    candidates[e] = scores[e];
    bad |= !isfinite(scores[e]);
  }
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) status[blockIdx.x] = 1;
    return;
  }

  if (p.group_limited) {
    // Groups scored by their best expert; the topk_group best kept (lower
    // group on ties), the others' candidates zeroed as the remote code does.
    const int groups = static_cast<int>(p.n_group), size = E / groups;
    __shared__ float group_best[64];
    if (threadIdx.x < groups) {
      float best = -INFINITY;
      for (int e = threadIdx.x * size; e < (threadIdx.x + 1) * size; ++e) best = fmaxf(best, scores[e]);
      group_best[threadIdx.x] = best;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int g = 0; g < groups; ++g) kept_group[g] = false;
      for (int pick = 0; pick < p.topk_group; ++pick) {
        int best = -1;
        for (int g = 0; g < groups; ++g) {
          if (!kept_group[g] && (best < 0 || group_best[g] > group_best[best])) best = g;
        }
        kept_group[best] = true;
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      if (!kept_group[e / size]) candidates[e] = 0.0f;
    }
    __syncthreads();
  }

  // Top-k by repeated arg-max; a taken expert's candidate becomes -inf
  // (every candidate is ≥ 0, zeroed ones included, as in the CPU's sort).
  __shared__ int32_t chosen[32];
  for (int j = 0; j < k; ++j) {
    const int best = BlockArgMax(candidates, E, scratch_v, scratch_id);
    if (threadIdx.x == 0) {
      chosen[j] = best;
      candidates[best] = -INFINITY;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    int32_t* out_ids = ids + static_cast<int64_t>(blockIdx.x) * k;
    float* out_w = weights + static_cast<int64_t>(blockIdx.x) * k;
    float total = 0.0f;
    for (int j = 0; j < k; ++j) {
      out_ids[j] = chosen[j];
      out_w[j] = scores[chosen[j]];
      total += out_w[j];
    }
    if (k > 1 && p.norm_topk_prob) {
      for (int j = 0; j < k; ++j) out_w[j] /= total + 1e-20f;
    } else {
      for (int j = 0; j < k; ++j) out_w[j] *= p.routed_scaling_factor;
    }
    int weights_bad = 0;
    for (int j = 0; j < k; ++j) weights_bad |= !isfinite(out_w[j]);
    status[blockIdx.x] = weights_bad;
  }
}

}  // namespace

cudaError_t LaunchRoute(const RouteParams& params, float* logits, int32_t* ids, float* weights,
                        int32_t* status, cudaStream_t stream) {
  if (params.n <= 0) return cudaSuccess;
  if (params.experts > 1024 || params.k > 32 || params.k > params.experts ||
      (params.group_limited && (params.n_group > 64 || params.topk_group > params.n_group))) {
    return cudaErrorInvalidValue;
  }
  const size_t shared = 2 * params.experts * sizeof(float);
  RouteKernel<<<static_cast<unsigned>(params.n), kThreads, shared, stream>>>(params, logits, ids,
                                                                             weights, status);
  return cudaGetLastError();
}

}  // namespace dsv2::cuda
