// Conversions around the cuBLAS GEMMs and the weight upload (kernels.h).
#include <cuda_fp16.h>

#include "kernels/cuda/device_util.cuh"

namespace dsv2::cuda {
namespace {

__global__ void SplitBf16Kernel(const float* x, int64_t n, int64_t cols, int64_t x_stride,
                                uint16_t* hi, uint16_t* lo) {
  const int64_t total = n * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float value = x[r * x_stride + c];
    const uint16_t h = FloatToBf16(value);
    hi[i] = h;
    // value − hi is exact in float32 (Sterbenz-like: both share the top bits).
    if (lo != nullptr) lo[i] = FloatToBf16(value - Bf16ToFloat(h));
  }
}

__global__ void AddHalvesKernel(const float* a, const float* b, int64_t count, float* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = a[i] + b[i];
  }
}

__global__ void DequantQ8Kernel(const int8_t* q, const float* scales, int64_t rows, int64_t cols,
                                uint16_t* out) {
  const int64_t blocks = (cols + 31) / 32;
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = FloatToBf16(static_cast<float>(q[i]) * scales[r * blocks + c / 32]);
  }
}

__global__ void F16ToF32Kernel(const uint16_t* in, int64_t count, float* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = __half2float(__ushort_as_half(in[i]));
  }
}

}  // namespace

cudaError_t LaunchSplitBf16(const float* x, int64_t n, int64_t cols, int64_t x_stride,
                            uint16_t* hi, uint16_t* lo, cudaStream_t stream) {
  if (n <= 0 || cols <= 0) return cudaSuccess;
  SplitBf16Kernel<<<GridFor(n * cols, 256), 256, 0, stream>>>(x, n, cols, x_stride, hi, lo);
  return cudaGetLastError();
}

cudaError_t LaunchAddHalves(const float* a, const float* b, int64_t count, float* y,
                            cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  AddHalvesKernel<<<GridFor(count, 256), 256, 0, stream>>>(a, b, count, y);
  return cudaGetLastError();
}

cudaError_t LaunchDequantQ8ToBf16(const int8_t* q, const float* scales, int64_t rows, int64_t cols,
                                  uint16_t* out, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  DequantQ8Kernel<<<GridFor(rows * cols, 256), 256, 0, stream>>>(q, scales, rows, cols, out);
  return cudaGetLastError();
}

cudaError_t LaunchF16ToF32(const uint16_t* in, int64_t count, float* out, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  F16ToF32Kernel<<<GridFor(count, 256), 256, 0, stream>>>(in, count, out);
  return cudaGetLastError();
}

}  // namespace dsv2::cuda
