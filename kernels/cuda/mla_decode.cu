// MLA attention in the absorbed form (decode): MQA over the cached latents
// with W_UK folded into the query and W_UV into the output [model reference
// §2, "Decode with weight absorption"], split over the KV positions as
// FlashMLA does: each split keeps an online-softmax partial (max, sum,
// unnormalized accumulator), a combine kernel merges them.
#include "kernels/cuda/device_util.cuh"

namespace dsv2::cuda {
namespace {

constexpr int kHeadsPerBlock = 8;   // One warp per head.
constexpr int kTile = 8;            // Positions per shared-memory tile.
constexpr int kMaxRank = 1024;      // Accumulator registers: kMaxRank / 32 per lane.
constexpr int64_t kMinSplit = 32;   // Fewest positions worth a split.
constexpr int64_t kMaxSplits = 64;

// query[i, h] = [Σ_d q_nope[d] · W_UK[h][d, :] | q_pe]: grid (H, n), each
// thread a few of the rank columns, the rows summed in order with fused
// multiply-adds (the CPU's LinearTransposedAccumulate does the same).
__global__ void AbsorbQueryKernel(MlaDecodeParams p) {
  extern __shared__ float q_nope[];
  const int64_t h = blockIdx.x, i = blockIdx.y, qk = p.nope + p.rope, latent = p.rank + p.rope;
  const float* q = p.q + (i * p.heads + h) * qk;
  for (int64_t d = threadIdx.x; d < p.nope; d += blockDim.x) q_nope[d] = q[d];
  __syncthreads();
  const int64_t row0 = h * (p.nope + p.v);
  float* query = p.query + (i * p.heads + h) * latent;
  for (int64_t c = threadIdx.x; c < p.rank; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t d = 0; d < p.nope; ++d) {
      acc = fmaf(q_nope[d], LoadWeight(p.kv_b, p.kv_b_type, (row0 + d) * p.rank + c), acc);
    }
    query[c] = acc;
  }
  for (int64_t c = threadIdx.x; c < p.rope; c += blockDim.x) query[p.rank + c] = q[p.nope + c];
}

// Grid (splits, ceil(H / 8), n), 8 warps: warp w is head blockIdx.y·8 + w.
// Shared memory: the 8 queries [8, latent], a tile of latents [kTile, latent]
// and its pointers.
__global__ void SplitAttentionKernel(MlaDecodeParams p) {
  extern __shared__ float shared[];
  const int64_t latent = p.rank + p.rope;
  float* queries = shared;
  float* tile = shared + kHeadsPerBlock * latent;
  __shared__ const float* tile_ptr[kTile];
  const int64_t split = blockIdx.x, i = blockIdx.z;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t h = blockIdx.y * int64_t{kHeadsPerBlock} + warp;
  const bool active = h < p.heads;
  const int64_t visible = p.start + i + 1;  // Causal: positions 0 … start + i.
  const int64_t begin = split * p.split_size;
  const int64_t end = min(begin + p.split_size, visible);
  const int64_t out = ((i * p.heads + h) * p.splits + split);

  if (begin >= end) {  // Nothing visible in this split (uniform over the block).
    if (active) {
      for (int64_t d = lane; d < p.rank; d += kWarp) p.partial_acc[out * p.rank + d] = 0.0f;
      if (lane == 0) p.partial_ml[out * 2] = -INFINITY, p.partial_ml[out * 2 + 1] = 0.0f;
    }
    return;
  }
  for (int64_t idx = threadIdx.x; idx < kHeadsPerBlock * latent; idx += blockDim.x) {
    const int64_t head = blockIdx.y * int64_t{kHeadsPerBlock} + idx / latent;
    queries[idx] = head < p.heads ? p.query[(i * p.heads + head) * latent + idx % latent] : 0.0f;
  }

  float acc[kMaxRank / kWarp];
#pragma unroll
  for (int m = 0; m < kMaxRank / kWarp; ++m) acc[m] = 0.0f;
  float run_max = -INFINITY, run_sum = 0.0f;
  const float* my_query = queries + warp * latent;

  for (int64_t base = begin; base < end; base += kTile) {
    __syncthreads();  // The previous tile is no longer read.
    if (threadIdx.x < kTile) {
      tile_ptr[threadIdx.x] = base + threadIdx.x < end ? p.latents[base + threadIdx.x] : nullptr;
    }
    __syncthreads();
    for (int64_t idx = threadIdx.x; idx < kTile * latent; idx += blockDim.x) {
      const float* src = tile_ptr[idx / latent];
      tile[idx] = src != nullptr ? src[idx % latent] : 0.0f;
    }
    __syncthreads();
    if (!active) continue;
    float scores[kTile];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      float dot = 0.0f;
      for (int64_t d = lane; d < latent; d += kWarp) dot = fmaf(my_query[d], tile[j * latent + d], dot);
      dot = WarpSum(dot);
      scores[j] = base + j < end ? p.softmax_scale * dot : -INFINITY;
      tile_max = fmaxf(tile_max, scores[j]);
    }
    const float new_max = fmaxf(run_max, tile_max);
    const float correction = expf(run_max - new_max);  // 0 on the first tile.
    run_sum *= correction;
#pragma unroll
    for (int m = 0; m < kMaxRank / kWarp; ++m) acc[m] *= correction;
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      const float weight = expf(scores[j] - new_max);
      run_sum += weight;
#pragma unroll
      for (int m = 0; m < kMaxRank / kWarp; ++m) {
        const int64_t d = lane + m * kWarp;
        if (d < p.rank) acc[m] = fmaf(weight, tile[j * latent + d], acc[m]);
      }
    }
    run_max = new_max;
  }
  if (!active) return;
#pragma unroll
  for (int m = 0; m < kMaxRank / kWarp; ++m) {
    const int64_t d = lane + m * kWarp;
    if (d < p.rank) p.partial_acc[out * p.rank + d] = acc[m];
  }
  if (lane == 0) p.partial_ml[out * 2] = run_max, p.partial_ml[out * 2 + 1] = run_sum;
}

// o_latent[i, h] = Σ_s e^(m_s − M) acc_s / Σ_s e^(m_s − M) l_s: grid (H, n).
__global__ void CombineKernel(MlaDecodeParams p) {
  const int64_t h = blockIdx.x, i = blockIdx.y;
  const int64_t first = (i * p.heads + h) * p.splits;
  float max = -INFINITY;
  for (int64_t s = 0; s < p.splits; ++s) {
    if (p.partial_ml[(first + s) * 2 + 1] > 0.0f) max = fmaxf(max, p.partial_ml[(first + s) * 2]);
  }
  float total = 0.0f;
  for (int64_t s = 0; s < p.splits; ++s) {
    const float l = p.partial_ml[(first + s) * 2 + 1];
    if (l > 0.0f) total += l * expf(p.partial_ml[(first + s) * 2] - max);
  }
  const float inv = 1.0f / total;
  float* o_latent = p.o_latent + (i * p.heads + h) * p.rank;
  for (int64_t d = threadIdx.x; d < p.rank; d += blockDim.x) {
    float sum = 0.0f;
    for (int64_t s = 0; s < p.splits; ++s) {
      const float l = p.partial_ml[(first + s) * 2 + 1];
      if (l > 0.0f) {
        sum = fmaf(expf(p.partial_ml[(first + s) * 2] - max), p.partial_acc[(first + s) * p.rank + d], sum);
      }
    }
    o_latent[d] = sum * inv;
  }
}

// o[i, h, r] = W_UV[h][r, :] · o_latent[i, h]: grid (H, n), a warp per row.
__global__ void OutputKernel(MlaDecodeParams p) {
  extern __shared__ float o_latent[];
  const int64_t h = blockIdx.x, i = blockIdx.y;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  for (int64_t d = threadIdx.x; d < p.rank; d += blockDim.x) {
    o_latent[d] = p.o_latent[(i * p.heads + h) * p.rank + d];
  }
  __syncthreads();
  const int64_t row0 = h * (p.nope + p.v) + p.nope;
  for (int64_t r = warp; r < p.v; r += warps) {
    float dot = 0.0f;
    for (int64_t d = lane; d < p.rank; d += kWarp) {
      dot = fmaf(LoadWeight(p.kv_b, p.kv_b_type, (row0 + r) * p.rank + d), o_latent[d], dot);
    }
    dot = WarpSum(dot);
    if (lane == 0) p.o[(i * p.heads + h) * p.v + r] = dot;
  }
}

}  // namespace

int64_t MlaDecodeSplits(int64_t n, int64_t heads, int64_t context, int sm_count,
                        int64_t* split_size) {
  const int64_t blocks = n * ((heads + kHeadsPerBlock - 1) / kHeadsPerBlock);
  const int64_t wanted = (2 * int64_t{sm_count} + blocks - 1) / blocks;  // Two waves' worth.
  const int64_t most = (context + kMinSplit - 1) / kMinSplit;
  int64_t splits = wanted < most ? wanted : most;
  if (splits > kMaxSplits) splits = kMaxSplits;
  if (splits < 1) splits = 1;
  *split_size = (context + splits - 1) / splits;
  return (context + *split_size - 1) / *split_size;
}

cudaError_t LaunchMlaDecode(const MlaDecodeParams& p, cudaStream_t stream) {
  if (p.n <= 0 || p.heads <= 0) return cudaSuccess;
  if (p.rank > kMaxRank || p.splits < 1 || p.split_size < 1) return cudaErrorInvalidValue;
  const dim3 per_head(static_cast<unsigned>(p.heads), static_cast<unsigned>(p.n));
  AbsorbQueryKernel<<<per_head, 256, p.nope * sizeof(float), stream>>>(p);
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return error;

  const int64_t latent = p.rank + p.rope;
  const size_t shared = (kHeadsPerBlock + kTile) * latent * sizeof(float);
  if (shared > 48 * 1024) {
    error = cudaFuncSetAttribute(SplitAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(shared));
    if (error != cudaSuccess) return error;
  }
  const dim3 grid(static_cast<unsigned>(p.splits),
                  static_cast<unsigned>((p.heads + kHeadsPerBlock - 1) / kHeadsPerBlock),
                  static_cast<unsigned>(p.n));
  SplitAttentionKernel<<<grid, kHeadsPerBlock * kWarp, shared, stream>>>(p);
  error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  CombineKernel<<<per_head, 128, 0, stream>>>(p);
  error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  OutputKernel<<<per_head, 128, p.rank * sizeof(float), stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv2::cuda
