// The two ceilings of one GPU that the CUDA backend is measured against, the
// GPU counterpart of roofline.h (CUDA builds only). A benchmark measures
// them in the same process as its own figures:
//
//  - device memory bandwidth: one large device-to-device cudaMemcpy, counted
//    as (bytes read + bytes written) / time, the traffic the DRAM carries
//    (the buffers are far larger than the L2 cache);
//  - bf16 tensor-core peak: one cublasGemmEx of bf16 × bf16 → f32 with
//    CUBLAS_COMPUTE_32F at size³, counted as 2·size³ / time.
//
// Each figure comes with the time of one pass, so callers take the best of
// several passes (a warm-up pass first) or interleave passes with their own
// measurements. Times are cudaEvents around the work on a stream of the
// probe's own, so they do not include host launch overhead.
//
// Thread safety: a probe is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

struct CUstream_st;
struct CUevent_st;
struct cublasContext;

namespace dsv2::bench {

// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" for the device
// CUDA uses now; FailedPrecondition when there is none.
absl::StatusOr<std::string> GpuDescription();

// bf16 bits of uniform values in [-scale, scale) (float32 truncated).
std::vector<uint16_t> RandomBf16(int64_t count, std::mt19937& rng, float scale);

// A stream of its own and two events that time the work queued on it.
class StreamTimer {
 public:
  static absl::StatusOr<std::unique_ptr<StreamTimer>> Create();
  ~StreamTimer();
  StreamTimer(const StreamTimer&) = delete;
  StreamTimer& operator=(const StreamTimer&) = delete;

  CUstream_st* stream() const { return stream_; }
  // Seconds the work `queue` puts on stream() takes on the device.
  double Seconds(absl::FunctionRef<void()> queue);

 private:
  StreamTimer() = default;
  CUstream_st* stream_ = nullptr;
  CUevent_st* start_ = nullptr;
  CUevent_st* stop_ = nullptr;
};

// Two device buffers of `bytes` each (rounded down to whole MiB), copied one
// into the other.
class DeviceCopyProbe {
 public:
  // ResourceExhausted when the buffers do not fit; FailedPrecondition
  // without a device.
  static absl::StatusOr<std::unique_ptr<DeviceCopyProbe>> Create(int64_t bytes);
  ~DeviceCopyProbe();
  DeviceCopyProbe(const DeviceCopyProbe&) = delete;
  DeviceCopyProbe& operator=(const DeviceCopyProbe&) = delete;

  int64_t bytes() const { return bytes_; }
  // One copy; GB/s (1e9 bytes/s) of read + write traffic.
  double Pass();
  // The best of `reps` passes after one warm-up pass.
  double Best(int reps);

 private:
  DeviceCopyProbe() = default;
  void* src_ = nullptr;
  void* dst_ = nullptr;
  int64_t bytes_ = 0;
  std::unique_ptr<StreamTimer> timer_;
};

// C [size, size] f32 = A · B, A and B random bf16, on cuBLAS.
class Bf16GemmProbe {
 public:
  static absl::StatusOr<std::unique_ptr<Bf16GemmProbe>> Create(int64_t size);
  ~Bf16GemmProbe();
  Bf16GemmProbe(const Bf16GemmProbe&) = delete;
  Bf16GemmProbe& operator=(const Bf16GemmProbe&) = delete;

  int64_t size() const { return size_; }
  // One GEMM; TFLOP/s (1e12 flop/s, a multiply-add counts 2).
  double Pass();
  // The best of `reps` passes after one warm-up pass.
  double Best(int reps);

 private:
  Bf16GemmProbe() = default;
  int64_t size_ = 0;
  void* a_ = nullptr;
  void* b_ = nullptr;
  void* c_ = nullptr;
  cublasContext* cublas_ = nullptr;
  std::unique_ptr<StreamTimer> timer_;
};

}  // namespace dsv2::bench
