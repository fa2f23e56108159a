// The hyper-parameters of a DeepSeek-V2-family model, parsed from the
// config.json published with its checkpoint (DeepseekV2ForCausalLM, model_type
// "deepseek_v2", or "deepseek" in the first V2-Chat revision).
//
// Parsing checks every value the engine relies on and rejects what it does
// not implement with a message naming the field and the value, so a model the
// engine cannot run exactly fails at load, not with wrong numbers later.
// Field defaults for absent optional keys follow the original remote code
// (modeling_deepseek.py / configuration_deepseek.py).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace dsv2 {

enum class TopkMethod { kGreedy, kGroupLimitedGreedy };

// rope_scaling of type "yarn" (the only kind the published models use).
struct YarnScaling {
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

struct ModelConfig {
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // Dense FFN width.
  int64_t moe_intermediate_size = 0;  // Width of one routed or shared expert.
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // Must equal num_attention_heads (MLA).
  int64_t n_shared_experts = 0;
  int64_t n_routed_experts = 0;  // 0 when the config says null: every layer dense.
  int64_t num_experts_per_tok = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  TopkMethod topk_method = TopkMethod::kGreedy;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;
  int64_t q_lora_rank = 0;  // 0 when null: a plain q_proj (V2-Lite).
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  double rope_theta = 10000.0;
  std::optional<YarnScaling> rope_scaling;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  int64_t bos_token_id = -1;  // -1 when absent.
  int64_t eos_token_id = -1;
  bool tie_word_embeddings = false;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Values cached per token per layer: the normalized compressed KV and the
  // roped shared key (576 for the published models).
  int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  bool has_q_lora() const { return q_lora_rank > 0; }
  // Layer i is MoE when experts exist, i >= first_k_dense_replace and
  // i % moe_layer_freq == 0 [REMOTE DeepseekV2DecoderLayer].
  bool IsMoeLayer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  int64_t experts_per_group() const { return n_routed_experts / n_group; }
  // The attention softmax scale: qk_head_dim^-1/2 times mscale(factor,
  // mscale_all_dim)^2 under YaRN (0.1147214 for the published configs).
  double SoftmaxScale() const;
};

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// YaRN's attention-temperature helper: 0.1·m·ln(s) + 1 for s > 1, else 1.
double YarnMscale(double scale, double mscale);

}  // namespace dsv2
