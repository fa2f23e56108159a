// config.json parsing: the whole input is the file. A config that parses
// must be within the documented bounds (config.h) and consistent, and what
// is computed from it must be finite and must not overflow (UBSan reports
// signed overflow): the softmax scale, RoPE's frequencies and angles at the
// first and last position, the tensor list's shapes and parameter counts,
// and the KV cache's size. Errors must be InvalidArgument from checked
// accessors.
#include <cmath>
#include <string_view>
#include <vector>

#include "common/fuzz/fuzz_target.h"
#include "common/model/config.h"
#include "common/model/rope.h"
#include "common/model/weights.h"

namespace dsv2::fuzz {

void FuzzOneInput(const uint8_t* data, size_t size) {
  namespace limits = config_limits;
  auto parsed = ParseModelConfig(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!parsed.ok()) {
    Require(parsed.status().code() == absl::StatusCode::kInvalidArgument,
            "a bad config.json is InvalidArgument");
    RequireCheckedJsonReads();
    return;
  }
  const ModelConfig& c = *parsed;
  Require(c.vocab_size >= 1 && c.vocab_size <= limits::kMaxVocabSize, "vocab_size is bounded");
  Require(c.hidden_size >= 1 && c.hidden_size <= limits::kMaxHiddenSize, "hidden_size is bounded");
  Require(c.num_hidden_layers >= 1 && c.num_hidden_layers <= limits::kMaxLayers,
          "num_hidden_layers is bounded");
  Require(c.num_attention_heads >= 1 && c.num_attention_heads <= limits::kMaxAttentionHeads,
          "num_attention_heads is bounded");
  Require(c.n_routed_experts >= 0 && c.n_routed_experts <= limits::kMaxRoutedExperts,
          "n_routed_experts is bounded");
  Require(c.kv_lora_rank >= 1 && c.kv_lora_rank <= limits::kMaxLoraRank, "kv_lora_rank is bounded");
  Require(
      c.max_position_embeddings >= 1 && c.max_position_embeddings <= limits::kMaxPositionEmbeddings,
      "max_position_embeddings is bounded");
  Require(c.qk_rope_head_dim % 2 == 0, "the rope dimension is even");
  Require(c.bos_token_id >= -1 && c.bos_token_id < c.vocab_size, "bos is a token or absent");
  Require(c.eos_token_id >= -1 && c.eos_token_id < c.vocab_size, "eos is a token or absent");

  const double scale = c.SoftmaxScale();
  Require(std::isfinite(scale) && scale > 0, "the softmax scale is finite and positive");
  const RotaryEmbedding rope(c);
  Require(std::isfinite(rope.cos_sin_scale()), "the cos/sin scale is finite");
  for (float f : rope.inv_freq()) Require(std::isfinite(f), "inverse frequencies are finite");
  std::vector<float> cos(c.qk_rope_head_dim / 2), sin(c.qk_rope_head_dim / 2);
  for (int64_t pos : {int64_t{0}, c.max_position_embeddings - 1}) {
    rope.CosSin(pos, cos.data(), sin.data());
    for (size_t i = 0; i < cos.size(); ++i) {
      Require(std::isfinite(cos[i]) && std::isfinite(sin[i]), "cos and sin are finite");
    }
  }
  // The KV cache of the longest sequence (float32).
  const int64_t kv_bytes = c.latent_dim() * c.num_hidden_layers * c.max_position_embeddings * 4;
  Require(kv_bytes > 0, "the KV cache size is positive");

  // The tensor list is walked (and counted) when it is small enough for a
  // fuzzing iteration; config_test covers the largest config.
  const int64_t moe_layers = c.n_routed_experts > 0 ? c.num_hidden_layers : 0;
  if (moe_layers * c.n_routed_experts > 4096) return;
  int64_t total = 0;
  ForEachExpectedTensor(c, [&](const TensorSpec& spec) {
    for (int64_t d : spec.shape) Require(d >= 1, "every tensor dimension is positive");
    total += spec.numel();
    return true;
  });
  const ParameterCounts counts = CountParameters(c);
  Require(counts.total == total && counts.total > 0, "the parameter count is the tensors' sum");
  Require(counts.activated > 0 && counts.activated <= counts.total,
          "activated parameters are part of the total");
}

}  // namespace dsv2::fuzz
