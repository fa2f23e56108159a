// Embedding, RMSNorm, residual add, SiluMul and RoPE (kernels.h).
#include "kernels/cuda/device_util.cuh"

namespace dsv2::cuda {
namespace {

__global__ void EmbeddingKernel(const void* table, WeightType type, int64_t cols,
                                const int32_t* ids, float* out) {
  const int64_t row = ids[blockIdx.x];
  float* dst = out + static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dst[c] = LoadWeight(table, type, row * cols + c);
  }
}

// One block per row: the sum of squares, then the scaled row. The CPU takes
// the same steps (mean square, 1/sqrt, w · (x · inv)); only the order of the
// sum of squares differs.
__global__ void RmsNormKernel(const float* x, const float* weight, int64_t dim, float eps,
                              float* y) {
  __shared__ float scratch[kWarp];
  const float* in = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* out = y + static_cast<int64_t>(blockIdx.x) * dim;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum = fmaf(in[i], in[i], sum);
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) out[i] = weight[i] * (in[i] * inv);
}

__global__ void AddKernel(const float* x, float* y, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] += x[i];
  }
}

__global__ void SiluMulKernel(const float* gate, const float* up, float* out, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// One thread per (row, pair).
__global__ void RopeKernel(float* x, int64_t rows, int64_t rows_per_token, int64_t stride,
                           int64_t offset, int64_t half, const float* cos, const float* sin) {
  const int64_t total = rows * half;
  for (int64_t task = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; task < total;
       task += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = task / half, i = task % half, t = r / rows_per_token;
    float* v = x + r * stride + offset;
    const float c = cos[t * half + i], s = sin[t * half + i];
    const float a = v[2 * i], b = v[2 * i + 1];
    // Explicit roundings: no fused multiply-add, so the result is the CPU's
    // bit for bit (rope.cc is compiled without contraction).
    v[2 * i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    v[2 * i + 1] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
  }
}

int ThreadsForRow(int64_t dim) {
  int threads = 32;
  while (threads < 1024 && threads < dim) threads *= 2;
  return threads;
}

}  // namespace

cudaError_t LaunchEmbedding(const void* table, WeightType type, int64_t cols, const int32_t* ids,
                            int64_t n, float* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  EmbeddingKernel<<<static_cast<unsigned>(n), ThreadsForRow(cols), 0, stream>>>(table, type, cols,
                                                                                  ids, out);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
                          float* y, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  RmsNormKernel<<<static_cast<unsigned>(n), ThreadsForRow(dim), 0, stream>>>(x, weight, dim, eps,
                                                                              y);
  return cudaGetLastError();
}

cudaError_t LaunchAdd(const float* x, float* y, int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  AddKernel<<<GridFor(count, 256), 256, 0, stream>>>(x, y, count);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate, const float* up, float* out, int64_t count,
                          cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  SiluMulKernel<<<GridFor(count, 256), 256, 0, stream>>>(gate, up, out, count);
  return cudaGetLastError();
}

cudaError_t LaunchRope(float* x, int64_t rows, int64_t rows_per_token, int64_t stride,
                       int64_t offset, int64_t half, const float* cos, const float* sin,
                       cudaStream_t stream) {
  if (rows <= 0 || half <= 0) return cudaSuccess;
  RopeKernel<<<GridFor(rows * half, 256), 256, 0, stream>>>(x, rows, rows_per_token, stride,
                                                            offset, half, cos, sin);
  return cudaGetLastError();
}

}  // namespace dsv2::cuda
