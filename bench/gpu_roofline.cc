#include "bench/gpu_roofline.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "kernels/cuda/cuda_check.h"

namespace dsv2::bench {
namespace {

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

// The best of `reps` passes after a warm-up pass.
template <typename Pass>
double BestOf(int reps, Pass pass) {
  pass();
  double best = 0;
  for (int r = 0; r < reps; ++r) best = std::max(best, pass());
  return best;
}

}  // namespace

absl::StatusOr<std::unique_ptr<StreamTimer>> StreamTimer::Create() {
  std::unique_ptr<StreamTimer> timer(new StreamTimer());
  absl::Status status = CudaStatus(
      cudaStreamCreateWithFlags(&timer->stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  if (status.ok()) status = CudaStatus(cudaEventCreate(&timer->start_), "cudaEventCreate");
  if (status.ok()) status = CudaStatus(cudaEventCreate(&timer->stop_), "cudaEventCreate");
  if (!status.ok()) return status;
  return timer;
}

StreamTimer::~StreamTimer() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (start_ != nullptr) cudaEventDestroy(start_);
  if (stop_ != nullptr) cudaEventDestroy(stop_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

double StreamTimer::Seconds(absl::FunctionRef<void()> queue) {
  DSV2_CUDA_CHECK(cudaEventRecord(start_, stream_));
  queue();
  DSV2_CUDA_CHECK(cudaEventRecord(stop_, stream_));
  DSV2_CUDA_CHECK(cudaEventSynchronize(stop_));
  float ms = 0;
  DSV2_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
  return ms * 1e-3;
}

std::vector<uint16_t> RandomBf16(int64_t count, std::mt19937& rng, float scale) {
  std::uniform_real_distribution<float> uniform(-scale, scale);
  std::vector<uint16_t> out(count);
  for (uint16_t& v : out) {
    const float f = uniform(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    v = static_cast<uint16_t>(bits >> 16);
  }
  return out;
}

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
  if (absl::Status status = CudaStatus(cudaMemset(probe->src_, 0x5a, probe->bytes_), "cudaMemset");
      !status.ok()) {
    return status;
  }
  absl::StatusOr<std::unique_ptr<StreamTimer>> timer = StreamTimer::Create();
  if (!timer.ok()) return timer.status();
  probe->timer_ = *std::move(timer);
  return probe;
}

DeviceCopyProbe::~DeviceCopyProbe() {
  timer_.reset();  // Waits for the stream.
  if (src_ != nullptr) cudaFree(src_);
  if (dst_ != nullptr) cudaFree(dst_);
}

double DeviceCopyProbe::Pass() {
  const double seconds = timer_->Seconds([&] {
    DSV2_CUDA_CHECK(
        cudaMemcpyAsync(dst_, src_, bytes_, cudaMemcpyDeviceToDevice, timer_->stream()));
  });
  return 2.0 * static_cast<double>(bytes_) / seconds / 1e9;
}

double DeviceCopyProbe::Best(int reps) {
  return BestOf(reps, [&] { return Pass(); });
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
  std::mt19937 rng(1);
  const std::vector<uint16_t> host = RandomBf16(count, rng, 1.0f);
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
  if (!status.ok()) return status;
  absl::StatusOr<std::unique_ptr<StreamTimer>> timer = StreamTimer::Create();
  if (!timer.ok()) return timer.status();
  probe->timer_ = *std::move(timer);
  if (cublasCreate(&probe->cublas_) != CUBLAS_STATUS_SUCCESS) {
    probe->cublas_ = nullptr;
    return absl::ResourceExhaustedError("cublasCreate failed");
  }
  if (cublasSetStream(probe->cublas_, probe->timer_->stream()) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cublasSetStream failed");
  }
  return probe;
}

Bf16GemmProbe::~Bf16GemmProbe() {
  timer_.reset();  // Waits for the stream.
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  for (void* buffer : {a_, b_, c_}) {
    if (buffer != nullptr) cudaFree(buffer);
  }
}

double Bf16GemmProbe::Pass() {
  const float one = 1.0f, zero = 0.0f;
  const int n = static_cast<int>(size_);
  const double seconds = timer_->Seconds([&] {
    DSV2_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a_,
                                   CUDA_R_16BF, n, b_, CUDA_R_16BF, n, &zero, c_, CUDA_R_32F, n,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
  const double flops = 2.0 * static_cast<double>(size_) * size_ * size_;
  return flops / seconds / 1e12;
}

double Bf16GemmProbe::Best(int reps) {
  return BestOf(reps, [&] { return Pass(); });
}

}  // namespace dsv2::bench
