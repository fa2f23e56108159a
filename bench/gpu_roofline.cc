#include "bench/gpu_roofline.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"

namespace dsv2::bench {
namespace {

// A failed CUDA call after the probe was created: the device is in an
// unknown state and the benchmark cannot go on.
#define DSV2_BENCH_CUDA_CHECK(call)                                                     \
  do {                                                                                  \
    const cudaError_t bench_error = (call);                                             \
    if (bench_error != cudaSuccess) {                                                   \
      DSV2_LOG(FATAL) << #call << " failed: " << cudaGetErrorName(bench_error) << " (" \
                      << cudaGetErrorString(bench_error) << ")";                        \
    }                                                                                   \
  } while (0)

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // Clears a non-sticky error (a failed allocation).
  const std::string message =
      absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")");
  return error == cudaErrorMemoryAllocation ? absl::ResourceExhaustedError(message)
                                            : absl::FailedPreconditionError(message);
}

absl::Status RequireDevice() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) return CudaStatus(error, "cudaGetDeviceCount");
  if (count == 0) return absl::FailedPreconditionError("no CUDA device is visible");
  return absl::OkStatus();
}

// Uniform bf16 values in [-1, 1), truncated from float32 (xorshift64; the
// values only keep the tensor cores from seeing zeros).
std::vector<uint16_t> RandomBf16(int64_t count, uint64_t seed) {
  std::vector<uint16_t> out(count);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (uint16_t& value : out) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const float f = static_cast<float>(state >> 40) * (2.0f / 16777216.0f) - 1.0f;
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    value = static_cast<uint16_t>(bits >> 16);
  }
  return out;
}

// Milliseconds between two events recorded around the work.
float ElapsedMs(cudaEvent_t start, cudaEvent_t stop) {
  DSV2_BENCH_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  DSV2_BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  return ms;
}

}  // namespace

absl::StatusOr<std::string> GpuDescription() {
  if (absl::Status status = RequireDevice(); !status.ok()) return status;
  int device = 0;
  if (absl::Status status = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !status.ok()) {
    return status;
  }
  cudaDeviceProp prop;
  if (absl::Status status = CudaStatus(cudaGetDeviceProperties(&prop, device),
                                       "cudaGetDeviceProperties");
      !status.ok()) {
    return status;
  }
  return absl::StrFormat("%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor,
                         prop.multiProcessorCount,
                         static_cast<double>(prop.totalGlobalMem) / (1 << 30));
}

// ---- DeviceCopyProbe ------------------------------------------------------------

absl::StatusOr<std::unique_ptr<DeviceCopyProbe>> DeviceCopyProbe::Create(int64_t bytes) {
  if (absl::Status status = RequireDevice(); !status.ok()) return status;
  std::unique_ptr<DeviceCopyProbe> probe(new DeviceCopyProbe());
  probe->bytes_ = std::max<int64_t>(bytes >> 20, 1) << 20;
  for (void** buffer : {&probe->src_, &probe->dst_}) {
    if (absl::Status status = CudaStatus(cudaMalloc(buffer, probe->bytes_),
                                         "cudaMalloc of the copy probe's buffers");
        !status.ok()) {
      *buffer = nullptr;
      return status;
    }
  }
  absl::Status status = CudaStatus(cudaMemset(probe->src_, 0x5a, probe->bytes_), "cudaMemset");
  if (status.ok()) {
    status = CudaStatus(cudaStreamCreateWithFlags(&probe->stream_, cudaStreamNonBlocking),
                        "cudaStreamCreate");
  }
  if (status.ok()) status = CudaStatus(cudaEventCreate(&probe->start_), "cudaEventCreate");
  if (status.ok()) status = CudaStatus(cudaEventCreate(&probe->stop_), "cudaEventCreate");
  if (!status.ok()) return status;
  return probe;
}

DeviceCopyProbe::~DeviceCopyProbe() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (start_ != nullptr) cudaEventDestroy(start_);
  if (stop_ != nullptr) cudaEventDestroy(stop_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  if (src_ != nullptr) cudaFree(src_);
  if (dst_ != nullptr) cudaFree(dst_);
}

double DeviceCopyProbe::Pass() {
  DSV2_BENCH_CUDA_CHECK(cudaEventRecord(start_, stream_));
  DSV2_BENCH_CUDA_CHECK(cudaMemcpyAsync(dst_, src_, bytes_, cudaMemcpyDeviceToDevice, stream_));
  DSV2_BENCH_CUDA_CHECK(cudaEventRecord(stop_, stream_));
  const double seconds = ElapsedMs(start_, stop_) * 1e-3;
  return 2.0 * static_cast<double>(bytes_) / seconds / 1e9;
}

double DeviceCopyProbe::Best(int reps) {
  Pass();
  double best = 0;
  for (int r = 0; r < reps; ++r) best = std::max(best, Pass());
  return best;
}

// ---- Bf16GemmProbe ----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Bf16GemmProbe>> Bf16GemmProbe::Create(int64_t size) {
  if (absl::Status status = RequireDevice(); !status.ok()) return status;
  std::unique_ptr<Bf16GemmProbe> probe(new Bf16GemmProbe());
  probe->size_ = size;
  const int64_t count = size * size;
  absl::Status status = absl::OkStatus();
  for (void** buffer : {&probe->a_, &probe->b_}) {
    if (status.ok()) {
      status = CudaStatus(cudaMalloc(buffer, count * 2), "cudaMalloc of the GEMM probe's inputs");
    }
  }
  if (status.ok()) {
    status = CudaStatus(cudaMalloc(&probe->c_, count * 4), "cudaMalloc of the GEMM probe's output");
  }
  if (!status.ok()) return status;
  const std::vector<uint16_t> host = RandomBf16(count, 1);
  status = CudaStatus(cudaMemcpy(probe->a_, host.data(), count * 2, cudaMemcpyHostToDevice),
                      "cudaMemcpy");
  // B is A shifted by one element, so that the two differ.
  if (status.ok()) {
    status = CudaStatus(cudaMemcpy(probe->b_, host.data() + 1, (count - 1) * 2,
                                   cudaMemcpyHostToDevice),
                        "cudaMemcpy");
  }
  if (status.ok()) status = CudaStatus(cudaMemset(static_cast<char*>(probe->b_) + (count - 1) * 2,
                                                  0, 2), "cudaMemset");
  if (status.ok()) {
    status = CudaStatus(cudaStreamCreateWithFlags(&probe->stream_, cudaStreamNonBlocking),
                        "cudaStreamCreate");
  }
  if (status.ok()) status = CudaStatus(cudaEventCreate(&probe->start_), "cudaEventCreate");
  if (status.ok()) status = CudaStatus(cudaEventCreate(&probe->stop_), "cudaEventCreate");
  if (!status.ok()) return status;
  if (cublasCreate(&probe->cublas_) != CUBLAS_STATUS_SUCCESS) {
    probe->cublas_ = nullptr;
    return absl::ResourceExhaustedError("cublasCreate failed");
  }
  if (cublasSetStream(probe->cublas_, probe->stream_) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cublasSetStream failed");
  }
  return probe;
}

Bf16GemmProbe::~Bf16GemmProbe() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (start_ != nullptr) cudaEventDestroy(start_);
  if (stop_ != nullptr) cudaEventDestroy(stop_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  for (void* buffer : {a_, b_, c_}) {
    if (buffer != nullptr) cudaFree(buffer);
  }
}

double Bf16GemmProbe::Pass() {
  const float one = 1.0f, zero = 0.0f;
  const int n = static_cast<int>(size_);
  DSV2_BENCH_CUDA_CHECK(cudaEventRecord(start_, stream_));
  const cublasStatus_t status =
      cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a_, CUDA_R_16BF, n, b_,
                   CUDA_R_16BF, n, &zero, c_, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) {
    DSV2_LOG(FATAL) << "cublasGemmEx (bf16 peak probe) failed: " << cublasGetStatusName(status);
  }
  DSV2_BENCH_CUDA_CHECK(cudaEventRecord(stop_, stream_));
  const double seconds = ElapsedMs(start_, stop_) * 1e-3;
  const double flops = 2.0 * static_cast<double>(size_) * size_ * size_;
  return flops / seconds / 1e12;
}

double Bf16GemmProbe::Best(int reps) {
  Pass();
  double best = 0;
  for (int r = 0; r < reps; ++r) best = std::max(best, Pass());
  return best;
}

}  // namespace dsv2::bench
