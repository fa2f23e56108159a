// The hyper-parameters of a DeepSeek-V2-family model, parsed from the
// config.json published with its checkpoint (DeepseekV2ForCausalLM, model_type
// "deepseek_v2", or "deepseek" in the first V2-Chat revision).
//
// Parsing checks every value the engine relies on and rejects what it does
// not implement with a message naming the field and the value, so a model the
// engine cannot run exactly fails at load, not with wrong numbers later.
// Field defaults for absent optional keys follow the original remote code
// (modeling_deepseek.py / configuration_deepseek.py).
//
// config.json is input: every number in it is bounded (config_limits below)
// before anything is sized from it, so a hostile or corrupt file is an
// InvalidArgument naming the field, its value and the bound, never a huge
// allocation or an overflowed size.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace dsv2 {

// Upper bounds on config.json's numbers. Each leaves several times the
// headroom over the largest published DeepSeek-V2-family value (DeepSeek-V2,
// V2.5, Coder-V2 and their Lite versions; V3-sized models noted for scale),
// and together they keep every size computed from a config — parameter
// counts, tensor bytes, KV cache bytes per token and per block, the forward
// pass's buffers — far inside int64 (config_test parses a config at every
// bound and checks those sizes exactly). docs/architecture.md lists them.
namespace config_limits {
inline constexpr int64_t kMaxVocabSize = int64_t{1} << 20;            // V2 102400, V3 129280
inline constexpr int64_t kMaxHiddenSize = int64_t{1} << 15;           // V2 5120, V3 7168
inline constexpr int64_t kMaxIntermediateSize = int64_t{1} << 17;     // V2 12288, V3 18432
inline constexpr int64_t kMaxMoeIntermediateSize = int64_t{1} << 15;  // V2 1536, V3 2048
inline constexpr int64_t kMaxLayers = 512;                            // V2 60, V3 61
inline constexpr int64_t kMaxAttentionHeads = 1024;                   // V2 128
inline constexpr int64_t kMaxRoutedExperts = 1024;                    // V2 160, V3 256
inline constexpr int64_t kMaxSharedExperts = 64;                      // V2 2
inline constexpr int64_t kMaxExpertsPerToken = 64;                    // V2 6, V3 8
inline constexpr int64_t kMaxLoraRank = int64_t{1} << 14;             // q 1536, kv 512
inline constexpr int64_t kMaxHeadDim = 1024;                          // nope 128, rope 64, v 128
// RoPE computes angles from float32 positions, which are exact up to 2^24.
inline constexpr int64_t kMaxPositionEmbeddings = int64_t{1} << 24;  // V2 163840
inline constexpr double kMaxRopeTheta = 1e9;                         // V2 1e4
inline constexpr double kMaxRopeFactor = 1024;                       // V2 40
inline constexpr double kMaxYarnBeta = 1024;                         // V2 32 and 1
inline constexpr double kMaxYarnMscale = 100;                        // V2 0.707
inline constexpr double kMaxRoutedScalingFactor = 1024;              // V2 16
inline constexpr double kMaxRmsNormEps = 1;                          // V2 1e-6
}  // namespace config_limits

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
  // "quantization_config": {"quant_method": "dsv2-int8", "group_size": 32}:
  // the linear layers' weights may be int8 with per-block scales (the
  // format: common/tensor/q8.h; which tensors: weights.h).
  bool int8_weights = false;

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
