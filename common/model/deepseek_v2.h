// The DeepSeek-V2 forward pass on the CPU: embedding, pre-norm decoder layers
// of MLA attention and a dense or MoE SwiGLU FFN, final norm and LM head, in
// float32 arithmetic over weights read in their stored dtype.
//
// Attention comes in two exact forms [model reference §2]:
//  - decompressed: K and V of every cached position are rebuilt from the
//    latent cache through kv_b (cheap when many queries share them: prefill);
//  - absorbed: W_UK is folded into the query and W_UV into the output, so
//    attention is MQA over the 576-wide latents (cheap for decode).
// kAuto picks the one with fewer multiply-adds for the call at hand.
//
// Usage:
//   ASSIGN_OR_RETURN(auto model, DeepseekV2Model::Load("/models/DeepSeek-V2-Lite"));
//   LatentKvCache cache(model->config(), /*capacity=*/4096);
//   std::vector<float> logits;
//   RETURN_IF_ERROR(model->Forward(prompt, cache, {}, &logits));      // prefill
//   RETURN_IF_ERROR(model->Forward({next}, cache, {}, &logits));      // one decode step
//
// Thread safety: Forward is const and may run concurrently for different
// caches; it uses the process-wide ThreadPool for its kernels.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "common/model/latent_kv_cache.h"
#include "common/model/rope.h"
#include "common/model/weights.h"

namespace dsv2 {

enum class AttentionForm { kAuto, kDecompressed, kAbsorbed };

struct ForwardOptions {
  AttentionForm attention = AttentionForm::kAuto;
  // Logits for every new position, or only for the last one.
  bool all_logits = false;
};

class DeepseekV2Model {
 public:
  // Reads config.json and the safetensors checkpoint of `dir`, and checks
  // that every tensor the config implies is present with its shape.
  static absl::StatusOr<std::unique_ptr<DeepseekV2Model>> Load(const std::string& dir);

  const ModelConfig& config() const { return config_; }
  const Checkpoint& checkpoint() const { return checkpoint_; }

  // Runs `tokens` at positions cache.size() … cache.size() + n − 1, appends
  // their latents to `cache`, and writes logits, [n, vocab] or [1, vocab],
  // to `logits`. Token ids outside the vocabulary or a full cache are
  // InvalidArgument / OutOfRange and leave the cache unchanged.
  absl::Status Forward(std::span<const int32_t> tokens, LatentKvCache& cache,
                       const ForwardOptions& options, std::vector<float>* logits) const;

  // Whether kAuto uses the absorbed form for n new tokens over a context of
  // `context` positions (including the new ones).
  bool PrefersAbsorbed(int64_t n, int64_t context) const;

 private:
  DeepseekV2Model(ModelConfig config, Checkpoint checkpoint, ModelWeights weights);

  // x [n, hidden] (normed) → out [n, hidden]; writes the n latents of `layer`.
  void Attention(int64_t layer, const float* x, int64_t n, LatentKvCache& cache, bool absorbed,
                 const std::vector<float>& cos, const std::vector<float>& sin, float* out) const;
  // x [n, hidden] (normed) → out [n, hidden].
  void Ffn(int64_t layer, const float* x, int64_t n, float* out) const;
  void Mlp(const MlpWeights& mlp, const float* x, int64_t n, float* out) const;

  ModelConfig config_;
  Checkpoint checkpoint_;  // Owns the mappings that weights_ points into.
  ModelWeights weights_;
  RotaryEmbedding rope_;
  float softmax_scale_;
};

}  // namespace dsv2
