// Row gather and the weighted combine of the grouped expert FFN (kernels.h).
#include "kernels/cuda/device_util.cuh"

namespace dsv2::cuda {
namespace {

__global__ void GatherRowsKernel(const float* x, const int32_t* rows, int64_t hidden, float* out) {
  const float* src = x + static_cast<int64_t>(rows[blockIdx.x]) * hidden;
  float* dst = out + static_cast<int64_t>(blockIdx.x) * hidden;
  for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) dst[c] = src[c];
}

// One block per row; the slots in the order given (ascending expert ids),
// each added as partial = fma(w, y, partial) like the CPU's Axpy.
__global__ void CombineSlotsKernel(const float* y, const int32_t* slot, const float* w, int64_t k,
                                   int64_t hidden, float* partials) {
  const int64_t r = blockIdx.x;
  float* out = partials + r * hidden;
  for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) {
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t s = slot[r * k + j];
      if (s >= 0) sum = fmaf(w[r * k + j], y[static_cast<int64_t>(s) * hidden + c], sum);
    }
    out[c] = sum;
  }
}

}  // namespace

cudaError_t LaunchGatherRows(const float* x, const int32_t* rows, int64_t m, int64_t hidden,
                             float* out, cudaStream_t stream) {
  if (m <= 0) return cudaSuccess;
  GatherRowsKernel<<<static_cast<unsigned>(m), 256, 0, stream>>>(x, rows, hidden, out);
  return cudaGetLastError();
}

cudaError_t LaunchCombineSlots(const float* y, const int32_t* slot, const float* w, int64_t rows,
                               int64_t k, int64_t hidden, float* partials, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  CombineSlotsKernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(y, slot, w, k, hidden,
                                                                      partials);
  return cudaGetLastError();
}

}  // namespace dsv2::cuda
