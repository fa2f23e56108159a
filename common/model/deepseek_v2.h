// The DeepSeek-V2 forward pass: embedding, pre-norm decoder layers of MLA
// attention and a dense or MoE SwiGLU FFN, final norm and LM head, in
// float32 activations over weights read in their stored dtype, computed by a
// Backend (backend.h: the CPU by default, the GPU in CUDA builds).
//
// A step runs the new tokens of several sequences together: projections,
// norms and experts over all tokens at once, attention per sequence over its
// own cache. Every per-token computation is independent of the others in
// the batch, so a sequence's numbers are the same alone or batched.
//
// Attention comes in two exact forms [model reference §2]:
//  - decompressed: K and V of every cached position are rebuilt from the
//    latent cache through kv_b (cheap when many queries share them: prefill);
//  - absorbed: W_UK is folded into the query and W_UV into the output, so
//    attention is MQA over the latents (cheap for decode).
// They agree to float32 rounding; kAuto picks the one with fewer
// multiply-adds for the chunk at hand.
//
// Usage:
//   ASSIGN_OR_RETURN(auto model, DeepseekV2Model::Load("/models/DeepSeek-V2-Lite"));
//   LatentKvCache cache(model->config(), /*capacity=*/4096);
//   std::vector<float> logits;
//   RETURN_IF_ERROR(model->Forward(prompt, cache, {}, &logits));      // prefill
//   RETURN_IF_ERROR(model->Forward({next}, cache, {}, &logits));      // one decode step
//
// Caches handed to Forward must store their latents in the backend's memory
// (LatentKvCache and the engine's PagedKvCache take the backend).
//
// Thread safety: Forward/ForwardBatch are const and may run concurrently for
// different caches; on the CPU they use the process-wide ThreadPool for
// their kernels.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/backend.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/kv_cache_view.h"
#include "common/model/rope.h"
#include "common/model/routed_experts.h"
#include "common/model/weight_check.h"
#include "common/model/weights.h"

namespace dsv2 {

enum class AttentionForm { kAuto, kDecompressed, kAbsorbed };

// Which logits a chunk wants.
enum class ChunkLogits { kLast, kAll, kNone };

// One sequence's share of a batched step.
struct SequenceChunk {
  std::span<const int32_t> tokens;  // Run at positions cache->size() … + n − 1.
  KvCacheView* cache = nullptr;
  AttentionForm attention = AttentionForm::kAuto;
  ChunkLogits logits = ChunkLogits::kLast;
};

enum class WeightResidency { kAll, kAllButRoutedExperts, kOnFirstUse };

struct ModelLoadOptions {
  // Which weights are scanned for NaN and infinity (weight_check.h).
  WeightCheck weight_check = WeightCheck::kCheap;
  // Under WeightCheck::kFull, the tensors this process will read (all when
  // null), so that a full check reads nothing the process would not.
  std::function<bool(std::string_view name)> full_check_filter;
  // Where the model computes (CpuBackendInstance() when null); must outlive
  // the model.
  Backend* backend = nullptr;
  // Which weights Load makes resident on the backend (Backend::Prepare); the
  // others are uploaded when first used. An attention worker never computes
  // the routed experts; an expert worker computes only those its placement
  // gives it.
  WeightResidency residency = WeightResidency::kAll;
};

struct ForwardOptions {
  AttentionForm attention = AttentionForm::kAuto;
  bool all_logits = false;
};

class DeepseekV2Model {
 public:
  // Reads config.json (bounded: config.h) and the safetensors checkpoint of
  // `dir`, checks that every tensor the config implies is present with its
  // shape before anything is sized from the config, and scans the weights
  // `options` selects for non-finite values. Model files that are not
  // regular files (a FIFO, a directory, a device) are InvalidArgument.
  static absl::StatusOr<std::unique_ptr<DeepseekV2Model>> Load(
      const std::string& dir, const ModelLoadOptions& options = {});
  // Releases the weights' resident copies on the backend.
  ~DeepseekV2Model();

  const ModelConfig& config() const { return config_; }
  const Checkpoint& checkpoint() const { return checkpoint_; }
  const ModelWeights& weights() const { return weights_; }
  Backend& backend() const { return backend_; }

  // Routes the routed experts through `experts` instead of computing them
  // here (the default). Not thread-safe against running forwards.
  void SetRoutedExperts(std::shared_ptr<RoutedExperts> experts) { experts_ = std::move(experts); }

  // Runs each chunk's tokens, appends their latents to its cache, and writes
  // the logits rows the chunks ask for, in chunk order ([n, vocab], [1,
  // vocab] or none each).
  // Token ids outside the vocabulary, an empty chunk, a cache of another
  // backend, two chunks on one cache or a full cache are InvalidArgument /
  // OutOfRange and change no cache. Non-finite router
  // scores (weights or activations that overflow) are Internal naming the
  // layer (see RouteTokens).
  absl::Status ForwardBatch(std::span<const SequenceChunk> chunks,
                            std::vector<float>* logits) const;

  // One sequence.
  absl::Status Forward(std::span<const int32_t> tokens, KvCacheView& cache,
                       const ForwardOptions& options, std::vector<float>* logits) const;

  // Whether kAuto uses the absorbed form for n new tokens over a context of
  // `context` positions (including the new ones).
  bool PrefersAbsorbed(int64_t n, int64_t context) const;

 private:
  DeepseekV2Model(ModelConfig config, Checkpoint checkpoint, ModelWeights weights,
                  Backend& backend);

  // x [n, hidden] (normed) → out [n, hidden], backend memory.
  absl::Status Ffn(int64_t layer, const float* x, int64_t n, float* out) const;

  ModelConfig config_;
  Checkpoint checkpoint_;  // Owns the mappings that weights_ points into.
  ModelWeights weights_;
  Backend& backend_;
  RotaryEmbedding rope_;
  MlaShape mla_;
  std::shared_ptr<RoutedExperts> experts_;
};

}  // namespace dsv2
