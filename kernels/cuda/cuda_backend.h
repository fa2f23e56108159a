// The CUDA backend: every op of backend.h on one GPU, with the kernels of
// kernels/cuda (kernels.h) and cuBLAS for the Linear layers.
//
// Weights. Prepare copies every weight of a ModelWeights to the device,
// keyed by its host address (WeightMatrix::data, a norm vector's data()), so
// ops handed the host descriptors find the resident copy; a weight not
// prepared is uploaded on its first use. The host data must stay alive and
// unchanged while it is resident (true for the checkpoint mapping);
// EvictWeights drops every resident copy. Storage: bf16 as is; f32 as is;
// f16 widened to f32 (exact, twice the memory); int8 (dsv2-int8) dequantized
// to bf16, q · scale rounded once (not the CPU's integer arithmetic: see
// docs/gpu.md for the tolerance).
//
// Linear. cuBLAS GEMMs with float32 accumulation. Against bf16 weights the
// float32 activations become bf16 on the device: for up to
// Options::split_activation_max_rows rows as two bf16 halves (hi + lo, one
// GEMM over 2n rows, then summed), which keeps ~16 significant bits of the
// activation at no extra weight traffic (decode is bound by reading the
// weights); above it as one bf16 rounding (prefill, compute-bound). f32
// weights run an f32 GEMM (no TF32).
//
// Memory: Allocate takes from the device's stream-ordered pool
// (cudaMallocAsync / cudaFreeAsync on the backend's stream: nothing
// synchronizes, freed memory is kept for the next step); an allocation
// failure, which cannot return a status, aborts naming the size. Upload and
// Download copy through the backend's stream, Download waits for it.
//
// Thread safety: all methods may be called from any thread. One stream and
// one cuBLAS handle serve every caller; each op is enqueued under a mutex,
// so ops from several threads are serialized on the device in the order
// they were issued. CUDA or cuBLAS errors inside ops are not recoverable (a
// GPU fault) and abort with DSV2_LOG(FATAL) naming the call.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/model/backend.h"
#include "kernels/cuda/kernels.h"

struct cublasContext;

namespace dsv2 {

class CudaBackend final : public Backend {
 public:
  struct Options {
    // Linear against bf16 weights splits activations into hi + lo bf16
    // halves for calls of at most this many rows (0: never).
    int64_t split_activation_max_rows = 64;
  };

  // FailedPrecondition naming what is missing when no driver or no device
  // `device` is present; ResourceExhausted when the stream or the cuBLAS
  // handle cannot be created.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device = 0);
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device, const Options& options);
  ~CudaBackend() override;

  std::string_view name() const override { return "cuda"; }

  void Upload(const float* host, float* dst, int64_t count) override;
  void Download(const float* src, float* host, int64_t count) override;
  // Every weight and norm vector of `model` onto the device.
  // ResourceExhausted naming the tensor's size and what is already resident
  // when one does not fit.
  absl::Status Prepare(const ModelWeights& model, bool routed_experts) override;

  void Embedding(const WeightMatrix& table, const int32_t* host_ids, int64_t n,
                 float* out) override;
  void RmsNorm(const float* x, std::span<const float> weight, int64_t n, int64_t dim, float eps,
               float* y) override;
  void Linear(const float* x, int64_t n, const WeightMatrix& w, float* y) override;
  void Add(const float* x, float* y, int64_t count) override;
  void SiluMul(const float* gate, const float* up, float* out, int64_t count) override;
  void MlaAttention(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                    std::span<const float> kv_a_norm, std::span<const MlaChunk> chunks, float* q,
                    const float* kv_a, const float* cos, const float* sin, float* o) override;
  absl::Status Route(const ModelConfig& config, int64_t layer, float* logits, int64_t n,
                     int32_t* host_ids, float* host_weights) override;
  void ExpertRows(std::span<const MlpWeights> experts, int64_t hidden, const float* x,
                  std::span<const int32_t> source, int64_t k, const int32_t* host_ids,
                  const float* host_weights, float* partials) override;

  // ---- Token selection on the device (not yet part of Backend) -----------
  // host_out[r] = arg-max of logits [rows, vocab] (lowest index on ties).
  void ArgMax(const float* logits, int64_t rows, int64_t vocab, int32_t* host_out);
  // host_out[r] = the token Sampler::Sample would pick for row r with the
  // draw params[r].uniform (kernels.h, LaunchSample).
  void Sample(const float* logits, int64_t rows, int64_t vocab,
              std::span<const cuda::SampleRowParams> params, int32_t* host_out);

  // Frees the device copies of `model`'s weights.
  void Release(const ModelWeights& model) override;

  // Bytes of weights resident on the device.
  int64_t resident_bytes() const;

 protected:
  float* AllocateFloats(int64_t count) override;
  void Free(float* data) override;

 private:
  // A weight (or norm vector: rows 1) as stored on the device.
  struct DeviceWeight {
    cuda::WeightType type = cuda::WeightType::kBF16;
    int64_t rows = 0, cols = 0;
    void* data = nullptr;
    // What it was made from, to notice a host address reused for another tensor.
    DType host_dtype = DType::kF32;
  };
  // Growable device scratch, one per purpose.
  enum class Scratch : int {
    kGemmInput, kGemmOutput, kHostArgs, kTable, kMlaQuery, kMlaPartialAcc, kMlaPartialMl,
    kMlaLatent, kMlaKv, kRouteRaw, kRouteIds, kRouteWeights, kRouteStatus, kExpertX,
    kExpertGate, kExpertUp, kExpertOut, kSlots, kSlotWeights, kSampleParams, kSampleOut,
    kCount
  };

  CudaBackend(int device, const Options& options) : device_(device), options_(options) {}
  absl::Status Init();

  // Everything below runs with mutex_ held.
  void Enter() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::StatusOr<DeviceWeight> UploadWeight(const void* host, DType dtype, int64_t rows,
                                            int64_t cols, const float* scales)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::Status MakeResident(const WeightMatrix& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::Status MakeResident(std::span<const float> v) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  DeviceWeight Resident(const WeightMatrix& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  const float* Resident(std::span<const float> v) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // cudaMalloc, trimming the activation pool and retrying when memory is short.
  cudaError_t DeviceMalloc(void** data, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void* ScratchBytes(Scratch slot, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  float* ScratchFloats(Scratch slot, int64_t count) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return static_cast<float*>(ScratchBytes(slot, count * int64_t{sizeof(float)}));
  }
  // Copies `bytes` host bytes to device scratch `slot` through the pinned
  // staging ring (the host data may change once this returns).
  void* UploadArgs(Scratch slot, const void* host, int64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // MlaAttention for one sequence's n new tokens (q, kv_a, cos, sin and o at its rows).
  void MlaChunkLocked(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                      std::span<const float> kv_a_norm, KvCacheView& cache, int64_t n,
                      bool absorbed, float* q, const float* kv_a, const float* cos,
                      const float* sin, float* o) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // y[n, w.rows] = x[n, w.cols] (rows x_stride apart) · wᵀ.
  void LinearLocked(const float* x, int64_t n, int64_t x_stride, const DeviceWeight& w, float* y)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void DownloadBytes(const void* src, void* host, int64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const int device_;
  const Options options_;
  int sm_count_ = 0;
  // Owned; created by Init, destroyed with the backend.
  struct CUstream_st* stream_ = nullptr;
  cublasContext* cublas_ = nullptr;

  mutable absl::Mutex mutex_;
  absl::flat_hash_map<const void*, DeviceWeight> weights_ ABSL_GUARDED_BY(mutex_);
  int64_t resident_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  struct ScratchBuffer {
    void* data = nullptr;
    int64_t bytes = 0;
  };
  ScratchBuffer scratch_[static_cast<int>(Scratch::kCount)] ABSL_GUARDED_BY(mutex_);
  // Pinned staging ring for host arguments; `staged_` is recorded after the
  // last copy out of it.
  char* staging_ ABSL_GUARDED_BY(mutex_) = nullptr;
  int64_t staging_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t staging_used_ ABSL_GUARDED_BY(mutex_) = 0;
  struct CUevent_st* staged_ ABSL_GUARDED_BY(mutex_) = nullptr;
  // Host-side lists reused between calls.
  std::vector<const float*> table_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dsv2
