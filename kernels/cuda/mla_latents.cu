// Writing the new latents into the cache and gathering cached ones (kernels.h).
#include "kernels/cuda/device_util.cuh"

namespace dsv2::cuda {
namespace {

// One block per new token: [RMSNorm(c) ⊙ norm | RoPE(k_pe)] into its cache slot.
__global__ void WriteLatentsKernel(const float* kv_a, int64_t rank, int64_t rope,
                                   const float* norm, float eps, const float* cos,
                                   const float* sin, float* const* dst) {
  __shared__ float scratch[kWarp];
  const int64_t i = blockIdx.x, half = rope / 2;
  const float* in = kv_a + i * (rank + rope);
  float* out = dst[i];
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < rank; c += blockDim.x) sum = fmaf(in[c], in[c], sum);
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(rank) + eps);
  for (int64_t c = threadIdx.x; c < rank; c += blockDim.x) out[c] = norm[c] * (in[c] * inv);
  for (int64_t p = threadIdx.x; p < half; p += blockDim.x) {
    const float a = in[rank + 2 * p], b = in[rank + 2 * p + 1];
    const float co = cos[i * half + p], si = sin[i * half + p];
    out[rank + 2 * p] = __fsub_rn(__fmul_rn(a, co), __fmul_rn(b, si));
    out[rank + 2 * p + 1] = __fadd_rn(__fmul_rn(b, co), __fmul_rn(a, si));
  }
}

__global__ void GatherLatentsKernel(const float* const* table, int64_t width, float* out) {
  const float* src = table[blockIdx.x];
  float* dst = out + static_cast<int64_t>(blockIdx.x) * width;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src[c];
}

}  // namespace

cudaError_t LaunchMlaWriteLatents(const float* kv_a, int64_t n, int64_t rank, int64_t rope,
                                  const float* norm, float eps, const float* cos, const float* sin,
                                  float* const* dst, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  WriteLatentsKernel<<<static_cast<unsigned>(n), 256, 0, stream>>>(kv_a, rank, rope, norm, eps,
                                                                   cos, sin, dst);
  return cudaGetLastError();
}

cudaError_t LaunchGatherLatents(const float* const* table, int64_t count, int64_t width, float* out,
                                cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  GatherLatentsKernel<<<static_cast<unsigned>(count), 128, 0, stream>>>(table, width, out);
  return cudaGetLastError();
}

}  // namespace dsv2::cuda
