#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/model/moe_routing.h"
#include "common/tensor/q8.h"
#include "kernels/cuda/cuda_check.h"

namespace dsv2 {
namespace {

constexpr int64_t kInitialStagingBytes = int64_t{4} << 20;

int64_t WeightBytes(cuda::WeightType type, int64_t count) {
  return count * (type == cuda::WeightType::kBF16 ? 2 : 4);
}

// cuBLAS takes int dimensions.
int Dim(int64_t value, const char* what) {
  DSV2_CHECK(value >= 0 && value <= INT32_MAX) << what << " = " << value << " exceeds cuBLAS's int";
  return static_cast<int>(value);
}

// Every weight and norm vector of `model` (norm vectors as 1-row f32
// matrices), the routed experts when `routed_experts`.
std::vector<WeightMatrix> WeightsOf(const ModelWeights& model, bool routed_experts) {
  std::vector<WeightMatrix> weights = {model.embed, model.lm_head};
  auto vector = [&](const std::vector<float>& v) {
    weights.push_back(WeightMatrix{DType::kF32, 1, static_cast<int64_t>(v.size()), v.data(),
                                   nullptr});
  };
  vector(model.final_norm);
  for (const LayerWeights& layer : model.layers) {
    weights.insert(weights.end(), {layer.q_a, layer.q_b, layer.q, layer.kv_a, layer.kv_b,
                                   layer.o, layer.router});
    for (const MlpWeights* mlp : {&layer.dense, &layer.shared}) {
      weights.insert(weights.end(), {mlp->gate, mlp->up, mlp->down});
    }
    if (routed_experts) {
      for (const MlpWeights& expert : layer.experts) {
        weights.insert(weights.end(), {expert.gate, expert.up, expert.down});
      }
    }
    for (const std::vector<float>* v : {&layer.input_norm, &layer.post_attention_norm,
                                        &layer.q_a_norm, &layer.kv_a_norm}) {
      vector(*v);
    }
  }
  return weights;
}

}  // namespace


absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device) {
  return Create(device, Options());
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device,
                                                                 const Options& options) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA backend unavailable: cudaGetDeviceCount failed with ", cudaGetErrorName(error), " (",
        cudaGetErrorString(error), "); is an NVIDIA driver installed and a GPU visible?"));
  }
  if (count == 0) {
    return absl::FailedPreconditionError("CUDA backend unavailable: no CUDA device is visible");
  }
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA backend unavailable: device ", device, " requested, ", count,
                     " visible"));
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend(device, options));
  if (absl::Status status = backend->Init(); !status.ok()) return status;
  return backend;
}

absl::Status CudaBackend::Init() {
  cudaError_t error = cudaSetDevice(device_);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_);
  }
  if (error == cudaSuccess) error = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
  if (error == cudaSuccess) {
    // Freed activations stay in the pool for the next step (AllocateFloats).
    cudaMemPool_t pool = nullptr;
    error = cudaDeviceGetDefaultMemPool(&pool, device_);
    uint64_t keep = UINT64_MAX;
    if (error == cudaSuccess) {
      error = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    }
  }
  if (error == cudaSuccess) error = cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming);
  if (error != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA backend unavailable on device ", device_, ": ", cudaGetErrorName(error),
                     " (", cudaGetErrorString(error), ")"));
  }
  if (cublasCreate(&cublas_) != CUBLAS_STATUS_SUCCESS) {
    cublas_ = nullptr;
    return absl::ResourceExhaustedError(
        absl::StrCat("CUDA backend: cublasCreate failed on device ", device_));
  }
  DSV2_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  DSV2_CUBLAS_CHECK(cublasSetPointerMode(cublas_, CUBLAS_POINTER_MODE_HOST));
  return absl::OkStatus();
}

CudaBackend::~CudaBackend() {
  // Errors are ignored here: a backend whose Init failed is destroyed too.
  absl::MutexLock lock(&mutex_);
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [host, weight] : weights_) cudaFree(weight.data);
  for (ScratchBuffer& buffer : scratch_) {
    if (buffer.data != nullptr) cudaFree(buffer.data);
  }
  if (staging_ != nullptr) cudaFreeHost(staging_);
  if (staged_ != nullptr) cudaEventDestroy(staged_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void CudaBackend::Enter() { DSV2_CUDA_CHECK(cudaSetDevice(device_)); }

// ---- Memory -------------------------------------------------------------------

// Activations come from the device's stream-ordered pool (cudaMallocAsync on
// the backend's stream, which Init keeps from returning memory to the
// driver): a Buffer freed while ops that read it are still queued is reused
// only by ops queued after them, and no call synchronizes.
float* CudaBackend::AllocateFloats(int64_t count) {
  if (count <= 0) return nullptr;
  void* data = nullptr;
  DSV2_CUDA_CHECK(cudaSetDevice(device_));
  const cudaError_t error = cudaMallocAsync(&data, count * sizeof(float), stream_);
  if (error != cudaSuccess) {
    DSV2_LOG(FATAL) << "CUDA backend: cudaMallocAsync of " << count * sizeof(float)
                    << " bytes failed: " << cudaGetErrorString(error);
  }
  return static_cast<float*>(data);
}

void CudaBackend::Free(float* data) {
  DSV2_CUDA_CHECK(cudaSetDevice(device_));
  DSV2_CUDA_CHECK(cudaFreeAsync(data, stream_));
}

cudaError_t CudaBackend::DeviceMalloc(void** data, int64_t bytes) {
  cudaError_t error = cudaMalloc(data, bytes);
  if (error != cudaErrorMemoryAllocation) return error;
  // The activation pool keeps what it freed (Init): give that back and retry.
  cudaGetLastError();  // Clears the (non-sticky) allocation error.
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
  cudaMemPool_t pool = nullptr;
  DSV2_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
  DSV2_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
  return cudaMalloc(data, bytes);
}

void* CudaBackend::ScratchBytes(Scratch slot, int64_t bytes) {
  ScratchBuffer& buffer = scratch_[static_cast<int>(slot)];
  if (bytes <= buffer.bytes) return buffer.data;
  // Earlier ops on the stream may still read the old buffer.
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (buffer.data != nullptr) DSV2_CUDA_CHECK(cudaFree(buffer.data));
  const int64_t grown = std::max(bytes, buffer.bytes + buffer.bytes / 2);
  buffer.data = nullptr;
  buffer.bytes = 0;
  const cudaError_t error = DeviceMalloc(&buffer.data, grown);
  if (error != cudaSuccess) {
    DSV2_LOG(FATAL) << "CUDA backend: cudaMalloc of " << grown
                    << " bytes of scratch failed: " << cudaGetErrorString(error);
  }
  buffer.bytes = grown;
  return buffer.data;
}

void* CudaBackend::UploadArgs(Scratch slot, const void* host, int64_t bytes) {
  void* dst = ScratchBytes(slot, std::max<int64_t>(bytes, 1));
  if (bytes == 0) return dst;
  const int64_t aligned = (bytes + 255) / 256 * 256;
  if (staging_used_ + aligned > staging_bytes_) {
    // Every copy out of the ring is done once the last one is.
    DSV2_CUDA_CHECK(cudaEventSynchronize(staged_));
    staging_used_ = 0;
    if (aligned > staging_bytes_) {
      if (staging_ != nullptr) DSV2_CUDA_CHECK(cudaFreeHost(staging_));
      staging_bytes_ = std::max({aligned, kInitialStagingBytes, 2 * staging_bytes_});
      void* pinned = nullptr;
      DSV2_CUDA_CHECK(cudaMallocHost(&pinned, staging_bytes_));
      staging_ = static_cast<char*>(pinned);
    }
  }
  char* stage = staging_ + staging_used_;
  staging_used_ += aligned;
  std::memcpy(stage, host, bytes);
  DSV2_CUDA_CHECK(cudaMemcpyAsync(dst, stage, bytes, cudaMemcpyHostToDevice, stream_));
  DSV2_CUDA_CHECK(cudaEventRecord(staged_, stream_));
  return dst;
}

void CudaBackend::DownloadBytes(const void* src, void* host, int64_t bytes) {
  if (bytes <= 0) return;
  DSV2_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, stream_));
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::Upload(const float* host, float* dst, int64_t count) {
  if (count <= 0) return;
  absl::MutexLock lock(&mutex_);
  Enter();
  DSV2_CUDA_CHECK(
      cudaMemcpyAsync(dst, host, count * sizeof(float), cudaMemcpyHostToDevice, stream_));
  // The caller may reuse `host` when this returns.
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::Download(const float* src, float* host, int64_t count) {
  absl::MutexLock lock(&mutex_);
  Enter();
  DownloadBytes(src, host, count * int64_t{sizeof(float)});
}

// ---- Weights ------------------------------------------------------------------

absl::StatusOr<CudaBackend::DeviceWeight> CudaBackend::UploadWeight(const void* host, DType dtype,
                                                                    int64_t rows, int64_t cols,
                                                                    const float* scales) {
  DeviceWeight weight;
  weight.rows = rows;
  weight.cols = cols;
  weight.host_dtype = dtype;
  weight.type = dtype == DType::kBF16 || dtype == DType::kI8 ? cuda::WeightType::kBF16
                                                             : cuda::WeightType::kF32;
  const int64_t count = rows * cols;
  const int64_t bytes = WeightBytes(weight.type, count);
  auto exhausted = [&](int64_t wanted) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "CUDA backend: a weight of ", rows, "x", cols, " (", std::string(DTypeName(dtype)), ") needs ", wanted,
        " bytes of device memory that are not free; ", resident_bytes_,
        " bytes of weights are resident"));
  };
  if (DeviceMalloc(&weight.data, std::max<int64_t>(bytes, 1)) != cudaSuccess) {
    cudaGetLastError();  // Clears the (non-sticky) allocation error.
    return exhausted(bytes);
  }
  if (dtype == DType::kBF16 || dtype == DType::kF32) {
    DSV2_CUDA_CHECK(cudaMemcpyAsync(weight.data, host, bytes, cudaMemcpyHostToDevice, stream_));
  } else {
    // Converted on the device from a temporary copy of the stored bytes
    // (int8: the integers, then the scales at the next 4-byte boundary).
    const int64_t raw_bytes = count * DTypeSize(dtype);
    const int64_t scales_at = (raw_bytes + 3) / 4 * 4;
    const int64_t scale_bytes = dtype == DType::kI8 ? rows * Q8Blocks(cols) * 4 : 0;
    void* raw = nullptr;
    if (DeviceMalloc(&raw, std::max<int64_t>(scales_at + scale_bytes, 1)) != cudaSuccess) {
      cudaGetLastError();
      DSV2_CUDA_CHECK(cudaFree(weight.data));
      return exhausted(bytes + scales_at + scale_bytes);
    }
    DSV2_CUDA_CHECK(cudaMemcpyAsync(raw, host, raw_bytes, cudaMemcpyHostToDevice, stream_));
    if (dtype == DType::kI8) {
      auto* device_scales = reinterpret_cast<float*>(static_cast<char*>(raw) + scales_at);
      DSV2_CUDA_CHECK(cudaMemcpyAsync(device_scales, scales, scale_bytes, cudaMemcpyHostToDevice,
                                      stream_));
      DSV2_CUDA_CHECK(cuda::LaunchDequantQ8ToBf16(static_cast<const int8_t*>(raw), device_scales,
                                                  rows, cols, static_cast<uint16_t*>(weight.data),
                                                  stream_));
    } else {
      DSV2_CUDA_CHECK(cuda::LaunchF16ToF32(static_cast<const uint16_t*>(raw), count,
                                           static_cast<float*>(weight.data), stream_));
    }
    DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
    DSV2_CUDA_CHECK(cudaFree(raw));
  }
  // On the backend's stream (non-blocking, so not ordered with plain
  // cudaMemcpy), complete before the host data may go.
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
  resident_bytes_ += bytes;
  return weight;
}

absl::Status CudaBackend::MakeResident(const WeightMatrix& w) {
  if (w.data == nullptr || w.rows * w.cols == 0) return absl::OkStatus();
  auto it = weights_.find(w.data);
  if (it != weights_.end()) {
    const DeviceWeight& have = it->second;
    if (have.rows == w.rows && have.cols == w.cols && have.host_dtype == w.dtype) {
      return absl::OkStatus();
    }
    // The host address now holds another tensor (or a row slice of one was
    // uploaded first): replace the copy.
    DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
    DSV2_CUDA_CHECK(cudaFree(have.data));
    resident_bytes_ -= WeightBytes(have.type, have.rows * have.cols);
    weights_.erase(it);
  }
  absl::StatusOr<DeviceWeight> weight = UploadWeight(w.data, w.dtype, w.rows, w.cols, w.scales);
  if (!weight.ok()) return weight.status();
  weights_.emplace(w.data, *weight);
  return absl::OkStatus();
}

absl::Status CudaBackend::MakeResident(std::span<const float> v) {
  return MakeResident(WeightMatrix{DType::kF32, 1, static_cast<int64_t>(v.size()), v.data(),
                                   nullptr});
}

CudaBackend::DeviceWeight CudaBackend::Resident(const WeightMatrix& w) {
  if (absl::Status status = MakeResident(w); !status.ok()) {
    DSV2_LOG(FATAL) << "CUDA backend: uploading a weight on first use failed: " << status;
  }
  return weights_.at(w.data);
}

const float* CudaBackend::Resident(std::span<const float> v) {
  if (v.empty()) return nullptr;
  if (absl::Status status = MakeResident(v); !status.ok()) {
    DSV2_LOG(FATAL) << "CUDA backend: uploading a norm vector on first use failed: " << status;
  }
  return static_cast<const float*>(weights_.at(v.data()).data);
}

absl::Status CudaBackend::Prepare(const ModelWeights& model, bool routed_experts) {
  absl::MutexLock lock(&mutex_);
  Enter();
  for (const WeightMatrix& w : WeightsOf(model, routed_experts)) {
    if (absl::Status status = MakeResident(w); !status.ok()) return status;
  }
  return absl::OkStatus();
}

void CudaBackend::Release(const ModelWeights& model) {
  absl::MutexLock lock(&mutex_);
  Enter();
  // Ops queued before may still read them.
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (const WeightMatrix& w : WeightsOf(model, /*routed_experts=*/true)) {
    auto it = weights_.find(w.data);
    if (it == weights_.end()) continue;
    DSV2_CUDA_CHECK(cudaFree(it->second.data));
    resident_bytes_ -= WeightBytes(it->second.type, it->second.rows * it->second.cols);
    weights_.erase(it);
  }
}

int64_t CudaBackend::resident_bytes() const {
  absl::MutexLock lock(&mutex_);
  return resident_bytes_;
}

// ---- Ops ----------------------------------------------------------------------

void CudaBackend::Embedding(const WeightMatrix& table, const int32_t* host_ids, int64_t n,
                            float* out) {
  if (n <= 0) return;
  absl::MutexLock lock(&mutex_);
  Enter();
  const DeviceWeight w = Resident(table);
  const auto* ids = static_cast<const int32_t*>(
      UploadArgs(Scratch::kHostArgs, host_ids, n * int64_t{sizeof(int32_t)}));
  DSV2_CUDA_CHECK(cuda::LaunchEmbedding(w.data, w.type, w.cols, ids, n, out, stream_));
}

void CudaBackend::RmsNorm(const float* x, std::span<const float> weight, int64_t n, int64_t dim,
                          float eps, float* y) {
  absl::MutexLock lock(&mutex_);
  Enter();
  DSV2_CUDA_CHECK(cuda::LaunchRmsNorm(x, Resident(weight), n, dim, eps, y, stream_));
}

void CudaBackend::Add(const float* x, float* y, int64_t count) {
  absl::MutexLock lock(&mutex_);
  Enter();
  DSV2_CUDA_CHECK(cuda::LaunchAdd(x, y, count, stream_));
}

void CudaBackend::SiluMul(const float* gate, const float* up, float* out, int64_t count) {
  absl::MutexLock lock(&mutex_);
  Enter();
  DSV2_CUDA_CHECK(cuda::LaunchSiluMul(gate, up, out, count, stream_));
}

void CudaBackend::Linear(const float* x, int64_t n, const WeightMatrix& w, float* y) {
  absl::MutexLock lock(&mutex_);
  Enter();
  if (n <= 0 || w.rows <= 0) return;
  if (w.cols == 0) {
    DSV2_CUDA_CHECK(cudaMemsetAsync(y, 0, n * w.rows * sizeof(float), stream_));
    return;
  }
  LinearLocked(x, n, w.cols, Resident(w), y);
}

void CudaBackend::LinearLocked(const float* x, int64_t n, int64_t x_stride, const DeviceWeight& w,
                               float* y) {
  if (n <= 0 || w.rows <= 0) return;
  const float one = 1.0f, zero = 0.0f;
  const int m = Dim(w.rows, "rows"), k = Dim(w.cols, "cols");
  // Row-major y [n, rows] = x [n, cols] · wᵀ is, column-major,
  // y (rows × n) = wᵀ(cols × rows)ᵀ · x (cols × n).
  if (w.type == cuda::WeightType::kF32) {
    DSV2_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, Dim(n, "n"), k, &one,
                                   w.data, CUDA_R_32F, k, x, CUDA_R_32F, Dim(x_stride, "stride"),
                                   &zero, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    return;
  }
  const bool split = n <= options_.split_activation_max_rows;
  const int64_t gemm_rows = split ? 2 * n : n;
  auto* input = static_cast<uint16_t*>(
      ScratchBytes(Scratch::kGemmInput, gemm_rows * w.cols * int64_t{sizeof(uint16_t)}));
  DSV2_CUDA_CHECK(cuda::LaunchSplitBf16(x, n, w.cols, x_stride, input,
                                        split ? input + n * w.cols : nullptr, stream_));
  float* out = split ? ScratchFloats(Scratch::kGemmOutput, gemm_rows * w.rows) : y;
  DSV2_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, Dim(gemm_rows, "n"), k, &one,
                                 w.data, CUDA_R_16BF, k, input, CUDA_R_16BF, k, &zero, out,
                                 CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (split) {
    DSV2_CUDA_CHECK(cuda::LaunchAddHalves(out, out + n * w.rows, n * w.rows, y, stream_));
  }
}

void CudaBackend::MlaAttention(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                               std::span<const float> kv_a_norm, std::span<const MlaChunk> chunks,
                               float* q, const float* kv_a, const float* cos, const float* sin,
                               float* o) {
  absl::MutexLock lock(&mutex_);
  Enter();
  const int64_t heads = shape.heads, half = shape.rope / 2;
  for (const MlaChunk& c : chunks) {
    if (c.n <= 0) continue;
    MlaChunkLocked(shape, layer, kv_b, kv_a_norm, *c.cache, c.n, c.absorbed,
                   q + c.row * heads * shape.qk(), kv_a + c.row * shape.latent(),
                   cos + c.row * half, sin + c.row * half, o + c.row * heads * shape.v);
  }
}

void CudaBackend::MlaChunkLocked(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                                 std::span<const float> kv_a_norm, KvCacheView& cache, int64_t n,
                                 bool absorbed, float* q, const float* kv_a, const float* cos,
                                 const float* sin, float* o) {
  const int64_t heads = shape.heads, nope = shape.nope, rope = shape.rope, rank = shape.rank;
  const int64_t half = rope / 2, qk = shape.qk();
  const int64_t start = cache.size(), context = start + n;
  DSV2_CHECK(context <= cache.capacity()) << context << " positions, capacity " << cache.capacity();

  // The layer's latent pointers for positions [0, context): the kernels read
  // the cache through them, contiguous or paged alike.
  table_.resize(context);
  for (int64_t pos = 0; pos < context; ++pos) table_[pos] = cache.At(layer, pos);
  auto* table = static_cast<float* const*>(
      UploadArgs(Scratch::kTable, table_.data(), context * int64_t{sizeof(float*)}));
  const DeviceWeight w = Resident(kv_b);
  const float* norm = Resident(kv_a_norm);

  DSV2_CUDA_CHECK(cuda::LaunchRope(q, n * heads, heads, qk, nope, half, cos, sin, stream_));
  DSV2_CUDA_CHECK(cuda::LaunchMlaWriteLatents(kv_a, n, rank, rope, norm, shape.latent_norm_eps,
                                              cos, sin, table + start, stream_));
  if (absorbed) {
    cuda::MlaDecodeParams p;
    p.n = n, p.heads = heads, p.nope = nope, p.rope = rope, p.v = shape.v, p.rank = rank;
    p.start = start;
    p.softmax_scale = shape.softmax_scale;
    p.q = q;
    p.kv_b = w.data;
    p.kv_b_type = w.type;
    p.latents = table;
    p.splits = cuda::MlaDecodeSplits(n, heads, context, sm_count_, &p.split_size);
    p.query = ScratchFloats(Scratch::kMlaQuery, n * heads * shape.latent());
    p.partial_acc = ScratchFloats(Scratch::kMlaPartialAcc, n * heads * p.splits * rank);
    p.partial_ml = ScratchFloats(Scratch::kMlaPartialMl, n * heads * p.splits * 2);
    p.o_latent = ScratchFloats(Scratch::kMlaLatent, n * heads * rank);
    p.o = o;
    DSV2_CUDA_CHECK(cuda::LaunchMlaDecode(p, stream_));
    return;
  }
  // K_nope and V of every position: [context, H, nope + v] = c · kv_bᵀ.
  float* latents = ScratchFloats(Scratch::kMlaLatent, context * rank);
  DSV2_CUDA_CHECK(cuda::LaunchGatherLatents(table, context, rank, latents, stream_));
  float* kv = ScratchFloats(Scratch::kMlaKv, context * w.rows);
  LinearLocked(latents, context, rank, w, kv);
  cuda::MlaPrefillParams p;
  p.n = n, p.heads = heads, p.nope = nope, p.rope = rope, p.v = shape.v, p.rank = rank;
  p.start = start;
  p.softmax_scale = shape.softmax_scale;
  p.q = q;
  p.kv = kv;
  p.latents = table;
  p.o = o;
  DSV2_CUDA_CHECK(cuda::LaunchMlaPrefill(p, stream_));
}

absl::Status CudaBackend::Route(const ModelConfig& config, int64_t layer, float* logits, int64_t n,
                                int32_t* host_ids, float* host_weights) {
  if (n <= 0) return absl::OkStatus();
  absl::MutexLock lock(&mutex_);
  Enter();
  const int64_t experts = config.n_routed_experts, k = config.num_experts_per_tok;
  cuda::RouteParams p;
  p.n = n;
  p.experts = experts;
  p.k = k;
  p.group_limited = config.topk_method == TopkMethod::kGroupLimitedGreedy;
  p.n_group = config.n_group;
  p.topk_group = config.topk_group;
  p.norm_topk_prob = config.norm_topk_prob;
  p.routed_scaling_factor = static_cast<float>(config.routed_scaling_factor);
  // The raw logits, for the host's error message if a score is not finite.
  float* raw = ScratchFloats(Scratch::kRouteRaw, n * experts);
  DSV2_CUDA_CHECK(cudaMemcpyAsync(raw, logits, n * experts * sizeof(float),
                                  cudaMemcpyDeviceToDevice, stream_));
  auto* ids = static_cast<int32_t*>(ScratchBytes(Scratch::kRouteIds, n * k * 4));
  float* weights = ScratchFloats(Scratch::kRouteWeights, n * k);
  auto* status = static_cast<int32_t*>(ScratchBytes(Scratch::kRouteStatus, n * 4));
  DSV2_CUDA_CHECK(cuda::LaunchRoute(p, logits, ids, weights, status, stream_));
  std::vector<int32_t> host_status(n);
  DSV2_CUDA_CHECK(
      cudaMemcpyAsync(host_ids, ids, n * k * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  DSV2_CUDA_CHECK(cudaMemcpyAsync(host_weights, weights, n * k * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream_));
  DownloadBytes(status, host_status.data(), n * int64_t{sizeof(int32_t)});
  if (std::all_of(host_status.begin(), host_status.end(), [](int32_t s) { return s == 0; })) {
    return absl::OkStatus();
  }
  // A non-finite score or weight: the CPU reference decides, with its
  // message (moe_routing.h), from the same logits.
  std::vector<float> host_logits(n * experts);
  DownloadBytes(raw, host_logits.data(), n * experts * int64_t{sizeof(float)});
  return RouteTokens(config, layer, host_logits.data(), n, host_ids, host_weights);
}

void CudaBackend::ExpertRows(std::span<const MlpWeights> experts, int64_t hidden, const float* x,
                             std::span<const int32_t> source, int64_t k, const int32_t* host_ids,
                             const float* host_weights, float* partials) {
  const int64_t rows = static_cast<int64_t>(source.size());
  if (rows == 0) return;
  absl::MutexLock lock(&mutex_);
  Enter();
  const int64_t num_experts = static_cast<int64_t>(experts.size());
  // Slots by expert, rows ascending within each; the gathered matrix holds
  // the experts' rows in ascending expert order, so a row's slots sorted by
  // their place in it are sorted by expert id (the CPU's summation order).
  std::vector<std::vector<int64_t>> by_expert(num_experts);
  for (int64_t slot = 0; slot < rows * k; ++slot) {
    if (host_ids[slot] >= 0) {
      DSV2_CHECK(host_ids[slot] < num_experts) << "expert " << host_ids[slot];
      by_expert[host_ids[slot]].push_back(slot);
    }
  }
  std::vector<int32_t> gather, place(rows * k, -1);
  int64_t width = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (by_expert[e].empty()) continue;
    width = std::max(width, experts[e].gate.rows);
    for (int64_t slot : by_expert[e]) {
      place[slot] = static_cast<int32_t>(gather.size());
      gather.push_back(source[slot / k]);
    }
  }
  const int64_t total = static_cast<int64_t>(gather.size());
  if (total == 0) {
    DSV2_CUDA_CHECK(cudaMemsetAsync(partials, 0, rows * hidden * sizeof(float), stream_));
    return;
  }
  const auto* gather_device = static_cast<const int32_t*>(
      UploadArgs(Scratch::kHostArgs, gather.data(), total * int64_t{sizeof(int32_t)}));
  float* gathered = ScratchFloats(Scratch::kExpertX, total * hidden);
  DSV2_CUDA_CHECK(cuda::LaunchGatherRows(x, gather_device, total, hidden, gathered, stream_));
  float* gate = ScratchFloats(Scratch::kExpertGate, total * width);
  float* up = ScratchFloats(Scratch::kExpertUp, total * width);
  float* out = ScratchFloats(Scratch::kExpertOut, total * hidden);
  int64_t offset = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t m = static_cast<int64_t>(by_expert[e].size());
    if (m == 0) continue;
    const MlpWeights& mlp = experts[e];
    const int64_t w = mlp.gate.rows;
    const float* in = gathered + offset * hidden;
    LinearLocked(in, m, hidden, Resident(mlp.gate), gate + offset * width);
    LinearLocked(in, m, hidden, Resident(mlp.up), up + offset * width);
    DSV2_CUDA_CHECK(cuda::LaunchSiluMul(gate + offset * width, up + offset * width,
                                        gate + offset * width, m * w, stream_));
    LinearLocked(gate + offset * width, m, w, Resident(mlp.down), out + offset * hidden);
    offset += m;
  }
  // Per row: its slots' places ascending, with their weights.
  std::vector<int32_t> slots(rows * k, -1);
  std::vector<float> slot_weights(rows * k, 0.0f);
  std::vector<std::pair<int32_t, float>> row;
  for (int64_t r = 0; r < rows; ++r) {
    row.clear();
    for (int64_t j = 0; j < k; ++j) {
      if (place[r * k + j] >= 0) row.emplace_back(place[r * k + j], host_weights[r * k + j]);
    }
    std::sort(row.begin(), row.end());
    for (size_t j = 0; j < row.size(); ++j) {
      slots[r * k + j] = row[j].first;
      slot_weights[r * k + j] = row[j].second;
    }
  }
  const auto* slots_device = static_cast<const int32_t*>(
      UploadArgs(Scratch::kSlots, slots.data(), rows * k * int64_t{sizeof(int32_t)}));
  const auto* weights_device = static_cast<const float*>(
      UploadArgs(Scratch::kSlotWeights, slot_weights.data(), rows * k * int64_t{sizeof(float)}));
  DSV2_CUDA_CHECK(cuda::LaunchCombineSlots(out, slots_device, weights_device, rows, k, hidden,
                                           partials, stream_));
}

// ---- Token selection ----------------------------------------------------------

void CudaBackend::ArgMax(const float* logits, int64_t rows, int64_t vocab, int32_t* host_out) {
  if (rows <= 0) return;
  absl::MutexLock lock(&mutex_);
  Enter();
  auto* out = static_cast<int32_t*>(ScratchBytes(Scratch::kSampleOut, rows * 4));
  DSV2_CUDA_CHECK(cuda::LaunchArgMax(logits, rows, vocab, out, stream_));
  DownloadBytes(out, host_out, rows * int64_t{sizeof(int32_t)});
}

void CudaBackend::Sample(const float* logits, int64_t rows, int64_t vocab,
                         std::span<const cuda::SampleRowParams> params, int32_t* host_out) {
  if (rows <= 0) return;
  DSV2_CHECK(static_cast<int64_t>(params.size()) == rows) << params.size() << " params, " << rows;
  absl::MutexLock lock(&mutex_);
  Enter();
  const auto* device_params = static_cast<const cuda::SampleRowParams*>(UploadArgs(
      Scratch::kSampleParams, params.data(), rows * int64_t{sizeof(cuda::SampleRowParams)}));
  auto* out = static_cast<int32_t*>(ScratchBytes(Scratch::kSampleOut, rows * 4));
  DSV2_CUDA_CHECK(cuda::LaunchSample(logits, rows, vocab, device_params, out, stream_));
  DownloadBytes(out, host_out, rows * int64_t{sizeof(int32_t)});
}

}  // namespace dsv2
