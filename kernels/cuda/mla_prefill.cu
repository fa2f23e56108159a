// MLA attention in the decompressed form (prefill): K_nope and V of every
// position come rebuilt through kv_b (a cuBLAS GEMM by the caller), k_pe from
// the cached latents; causal attention with an online softmax over key tiles.
#include "kernels/cuda/device_util.cuh"

namespace dsv2::cuda {
namespace {

constexpr int kQueryTile = 16;                     // Queries per block.
constexpr int kWarps = 4;                          // Each warp: 4 queries.
constexpr int kQueriesPerWarp = kQueryTile / kWarps;
constexpr int kKeyTile = kWarp;                    // One key per lane.
constexpr int kMaxV = 256;                         // Accumulator: kMaxV / 32 per lane and query.

// Grid (ceil(n / 16), H), 128 threads. Shared memory: queries [16, pitch],
// keys [32, pitch] (pitch = qk rounded up to odd, so lanes reading one
// column of different keys hit different banks), values [32, v].
__global__ void PrefillAttentionKernel(MlaPrefillParams p) {
  extern __shared__ float shared[];
  const int64_t qk = p.nope + p.rope, pitch = qk | 1, kvw = p.nope + p.v;
  float* queries = shared;
  float* keys = queries + kQueryTile * pitch;
  float* values = keys + kKeyTile * pitch;
  const int64_t first = blockIdx.x * int64_t{kQueryTile}, h = blockIdx.y;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t last_query = min(first + kQueryTile, p.n) - 1;
  const int64_t context = p.start + last_query + 1;  // Keys any query here sees.

  for (int64_t idx = threadIdx.x; idx < kQueryTile * qk; idx += blockDim.x) {
    const int64_t t = first + idx / qk;
    queries[(idx / qk) * pitch + idx % qk] = t < p.n ? p.q[(t * p.heads + h) * qk + idx % qk] : 0.0f;
  }
  float acc[kQueriesPerWarp][kMaxV / kWarp];
  float run_max[kQueriesPerWarp], run_sum[kQueriesPerWarp];
#pragma unroll
  for (int a = 0; a < kQueriesPerWarp; ++a) {
    run_max[a] = -INFINITY;
    run_sum[a] = 0.0f;
#pragma unroll
    for (int m = 0; m < kMaxV / kWarp; ++m) acc[a][m] = 0.0f;
  }

  for (int64_t base = 0; base < context; base += kKeyTile) {
    __syncthreads();
    for (int64_t idx = threadIdx.x; idx < kKeyTile * qk; idx += blockDim.x) {
      const int64_t j = idx / qk, d = idx % qk, pos = base + j;
      float value = 0.0f;
      if (pos < context) {
        value = d < p.nope ? p.kv[(pos * p.heads + h) * kvw + d]
                           : p.latents[pos][p.rank + d - p.nope];
      }
      keys[j * pitch + d] = value;
    }
    for (int64_t idx = threadIdx.x; idx < kKeyTile * p.v; idx += blockDim.x) {
      const int64_t j = idx / p.v, pos = base + j;
      values[idx] = pos < context ? p.kv[(pos * p.heads + h) * kvw + p.nope + idx % p.v] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int a = 0; a < kQueriesPerWarp; ++a) {
      const int64_t t = first + warp * kQueriesPerWarp + a;
      if (t >= p.n) continue;
      const int64_t visible = p.start + t + 1;
      if (base >= visible) continue;
      // Lane j scores key base + j.
      const float* query = queries + (warp * kQueriesPerWarp + a) * pitch;
      const float* key = keys + lane * pitch;
      float dot = 0.0f;
      for (int64_t d = 0; d < qk; ++d) dot = fmaf(query[d], key[d], dot);
      const float score = base + lane < visible ? p.softmax_scale * dot : -INFINITY;
      const float new_max = fmaxf(run_max[a], WarpMax(score));
      const float correction = expf(run_max[a] - new_max);
      const float weight = expf(score - new_max);
      run_sum[a] = run_sum[a] * correction + WarpSum(weight);
#pragma unroll
      for (int m = 0; m < kMaxV / kWarp; ++m) acc[a][m] *= correction;
      for (int j = 0; j < kKeyTile; ++j) {
        const float w = __shfl_sync(0xffffffffu, weight, j);
#pragma unroll
        for (int m = 0; m < kMaxV / kWarp; ++m) {
          const int64_t d = lane + m * kWarp;
          if (d < p.v) acc[a][m] = fmaf(w, values[j * p.v + d], acc[a][m]);
        }
      }
      run_max[a] = new_max;
    }
  }
#pragma unroll
  for (int a = 0; a < kQueriesPerWarp; ++a) {
    const int64_t t = first + warp * kQueriesPerWarp + a;
    if (t >= p.n) continue;
    const float inv = 1.0f / run_sum[a];
#pragma unroll
    for (int m = 0; m < kMaxV / kWarp; ++m) {
      const int64_t d = lane + m * kWarp;
      if (d < p.v) p.o[(t * p.heads + h) * p.v + d] = acc[a][m] * inv;
    }
  }
}

}  // namespace

cudaError_t LaunchMlaPrefill(const MlaPrefillParams& p, cudaStream_t stream) {
  if (p.n <= 0 || p.heads <= 0) return cudaSuccess;
  if (p.v > kMaxV || p.heads > 65535) return cudaErrorInvalidValue;
  const int64_t pitch = (p.nope + p.rope) | 1;
  const size_t shared = ((kQueryTile + kKeyTile) * pitch + kKeyTile * p.v) * sizeof(float);
  if (shared > 48 * 1024) {
    const cudaError_t error = cudaFuncSetAttribute(
        PrefillAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
    if (error != cudaSuccess) return error;
  }
  const dim3 grid(static_cast<unsigned>((p.n + kQueryTile - 1) / kQueryTile),
                  static_cast<unsigned>(p.heads));
  PrefillAttentionKernel<<<grid, kWarps * kWarp, shared, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv2::cuda
