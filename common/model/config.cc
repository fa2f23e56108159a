#include "common/model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using Json = nlohmann::json;

absl::Status Unsupported(std::string_view field, const Json& value, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("config field '", std::string(field), "' = ", value.dump(),
                   " is not supported: ", std::string(why)));
}

absl::Status Invalid(std::string_view field, const Json& value, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("config field '", std::string(field), "' = ", value.dump(),
                   " is invalid: ", std::string(why)));
}

// Reads an integer field; absent or null fields take `fallback`, or are an
// error when `fallback` is nullopt.
absl::StatusOr<int64_t> GetInt(const Json& config, const char* field,
                               std::optional<int64_t> fallback) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat("config field '", field, "' is missing"));
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float()) {
    const double value = it->get<double>();
    if (value == std::floor(value) && std::fabs(value) < 9e15) return static_cast<int64_t>(value);
  }
  return Invalid(field, *it, "expected an integer");
}

absl::StatusOr<double> GetDouble(const Json& config, const char* field, double fallback) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return fallback;
  if (it->is_number()) return it->get<double>();
  return Invalid(field, *it, "expected a number");
}

absl::StatusOr<bool> GetBool(const Json& config, const char* field, bool fallback) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return fallback;
  if (it->is_boolean()) return it->get<bool>();
  return Invalid(field, *it, "expected true or false");
}

absl::StatusOr<std::string> GetString(const Json& config, const char* field,
                                      std::optional<std::string> fallback) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat("config field '", field, "' is missing"));
  }
  if (it->is_string()) return it->get<std::string>();
  return Invalid(field, *it, "expected a string");
}

// Token ids may be written as a list (several EOS ids); the first is the one
// the engine uses to stop by default.
absl::StatusOr<int64_t> GetTokenId(const Json& config, const char* field) {
  auto it = config.find(field);
  if (it != config.end() && it->is_array()) {
    if (it->empty() || !(*it)[0].is_number_integer()) {
      return Invalid(field, *it, "expected an integer or a list of integers");
    }
    return (*it)[0].get<int64_t>();
  }
  return GetInt(config, field, -1);
}

absl::Status RequirePositive(const char* field, int64_t value) {
  if (value <= 0) return Invalid(field, value, "must be positive");
  return absl::OkStatus();
}

absl::StatusOr<std::optional<YarnScaling>> ParseRopeScaling(const Json& config) {
  auto it = config.find("rope_scaling");
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) return Invalid("rope_scaling", *it, "expected an object or null");
  const Json& rope = *it;
  // Published files say "type"; newer transformers write "rope_type".
  const char* type_key = rope.contains("type") ? "type" : "rope_type";
  ASSIGN_OR_RETURN(std::string type, GetString(rope, type_key, std::nullopt));
  if (type != "yarn") {
    return Unsupported(absl::StrCat("rope_scaling.", type_key), type, "only \"yarn\" is implemented");
  }
  YarnScaling yarn;
  ASSIGN_OR_RETURN(yarn.factor, GetDouble(rope, "factor", 1.0));
  ASSIGN_OR_RETURN(yarn.original_max_position_embeddings,
                   GetInt(rope, "original_max_position_embeddings", std::nullopt));
  ASSIGN_OR_RETURN(yarn.beta_fast, GetDouble(rope, "beta_fast", 32.0));
  ASSIGN_OR_RETURN(yarn.beta_slow, GetDouble(rope, "beta_slow", 1.0));
  ASSIGN_OR_RETURN(yarn.mscale, GetDouble(rope, "mscale", 1.0));
  ASSIGN_OR_RETURN(yarn.mscale_all_dim, GetDouble(rope, "mscale_all_dim", 0.0));
  if (!(yarn.factor >= 1.0)) return Invalid("rope_scaling.factor", yarn.factor, "must be >= 1");
  if (yarn.original_max_position_embeddings <= 0) {
    return Invalid("rope_scaling.original_max_position_embeddings",
                   yarn.original_max_position_embeddings, "must be positive");
  }
  if (!(yarn.beta_fast > 0 && yarn.beta_slow > 0)) {
    return Invalid("rope_scaling.beta_fast", yarn.beta_fast, "beta_fast and beta_slow must be > 0");
  }
  if (rope.contains("attention_factor") && !rope["attention_factor"].is_null()) {
    return Unsupported("rope_scaling.attention_factor", rope["attention_factor"],
                       "DeepSeek-V2 derives it from mscale and mscale_all_dim");
  }
  if (rope.contains("truncate") && rope["truncate"] != true) {
    return Unsupported("rope_scaling.truncate", rope["truncate"],
                       "DeepSeek-V2 truncates the YaRN correction range");
  }
  return yarn;
}

}  // namespace

double YarnMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

double ModelConfig::SoftmaxScale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope_scaling && rope_scaling->mscale_all_dim != 0.0) {
    const double m = YarnMscale(rope_scaling->factor, rope_scaling->mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  Json config = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return absl::InvalidArgumentError("config.json is not valid JSON");
  if (!config.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");

  ModelConfig c;
  ASSIGN_OR_RETURN(c.model_type, GetString(config, "model_type", std::nullopt));
  if (c.model_type != "deepseek_v2" && c.model_type != "deepseek") {
    return Unsupported("model_type", c.model_type, "expected \"deepseek_v2\" (or \"deepseek\")");
  }
  if (config.contains("quantization_config")) {
    return Unsupported("quantization_config", config["quantization_config"],
                       "quantized checkpoints are not implemented; use the bf16 release");
  }
  ASSIGN_OR_RETURN(c.vocab_size, GetInt(config, "vocab_size", std::nullopt));
  ASSIGN_OR_RETURN(c.hidden_size, GetInt(config, "hidden_size", std::nullopt));
  ASSIGN_OR_RETURN(c.intermediate_size, GetInt(config, "intermediate_size", std::nullopt));
  ASSIGN_OR_RETURN(c.num_hidden_layers, GetInt(config, "num_hidden_layers", std::nullopt));
  ASSIGN_OR_RETURN(c.num_attention_heads, GetInt(config, "num_attention_heads", std::nullopt));
  ASSIGN_OR_RETURN(c.num_key_value_heads,
                   GetInt(config, "num_key_value_heads", c.num_attention_heads));
  ASSIGN_OR_RETURN(c.n_routed_experts, GetInt(config, "n_routed_experts", 0));
  ASSIGN_OR_RETURN(c.n_shared_experts, GetInt(config, "n_shared_experts", 0));
  ASSIGN_OR_RETURN(c.moe_intermediate_size, GetInt(config, "moe_intermediate_size", 0));
  ASSIGN_OR_RETURN(c.num_experts_per_tok, GetInt(config, "num_experts_per_tok", 0));
  ASSIGN_OR_RETURN(c.first_k_dense_replace, GetInt(config, "first_k_dense_replace", 0));
  ASSIGN_OR_RETURN(c.moe_layer_freq, GetInt(config, "moe_layer_freq", 1));
  ASSIGN_OR_RETURN(c.n_group, GetInt(config, "n_group", 1));
  ASSIGN_OR_RETURN(c.topk_group, GetInt(config, "topk_group", 1));
  ASSIGN_OR_RETURN(c.routed_scaling_factor, GetDouble(config, "routed_scaling_factor", 1.0));
  ASSIGN_OR_RETURN(c.norm_topk_prob, GetBool(config, "norm_topk_prob", false));
  ASSIGN_OR_RETURN(c.q_lora_rank, GetInt(config, "q_lora_rank", 0));
  ASSIGN_OR_RETURN(c.kv_lora_rank, GetInt(config, "kv_lora_rank", std::nullopt));
  ASSIGN_OR_RETURN(c.qk_nope_head_dim, GetInt(config, "qk_nope_head_dim", std::nullopt));
  ASSIGN_OR_RETURN(c.qk_rope_head_dim, GetInt(config, "qk_rope_head_dim", std::nullopt));
  ASSIGN_OR_RETURN(c.v_head_dim, GetInt(config, "v_head_dim", std::nullopt));
  ASSIGN_OR_RETURN(c.rope_theta, GetDouble(config, "rope_theta", 10000.0));
  ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(config));
  ASSIGN_OR_RETURN(c.max_position_embeddings, GetInt(config, "max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(c.rms_norm_eps, GetDouble(config, "rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(c.bos_token_id, GetTokenId(config, "bos_token_id"));
  ASSIGN_OR_RETURN(c.eos_token_id, GetTokenId(config, "eos_token_id"));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, GetBool(config, "tie_word_embeddings", false));

  // What the engine computes must be what the checkpoint was trained with.
  ASSIGN_OR_RETURN(std::string hidden_act, GetString(config, "hidden_act", "silu"));
  if (hidden_act != "silu") return Unsupported("hidden_act", hidden_act, "only \"silu\" is implemented");
  ASSIGN_OR_RETURN(bool attention_bias, GetBool(config, "attention_bias", false));
  if (attention_bias) return Unsupported("attention_bias", true, "DeepSeek-V2 has no attention bias");
  ASSIGN_OR_RETURN(std::string scoring_func, GetString(config, "scoring_func", "softmax"));
  if (scoring_func != "softmax") {
    return Unsupported("scoring_func", scoring_func, "only \"softmax\" is implemented");
  }
  // "gready" is the remote code's misspelled default, meaning greedy.
  ASSIGN_OR_RETURN(std::string topk_method, GetString(config, "topk_method", "greedy"));
  if (topk_method == "greedy" || topk_method == "gready") {
    c.topk_method = TopkMethod::kGreedy;
  } else if (topk_method == "group_limited_greedy") {
    c.topk_method = TopkMethod::kGroupLimitedGreedy;
  } else {
    return Unsupported("topk_method", topk_method,
                       "expected \"greedy\" or \"group_limited_greedy\"");
  }

  for (auto [field, value] : {std::pair{"vocab_size", c.vocab_size},
                              {"hidden_size", c.hidden_size},
                              {"num_hidden_layers", c.num_hidden_layers},
                              {"num_attention_heads", c.num_attention_heads},
                              {"kv_lora_rank", c.kv_lora_rank},
                              {"qk_nope_head_dim", c.qk_nope_head_dim},
                              {"qk_rope_head_dim", c.qk_rope_head_dim},
                              {"v_head_dim", c.v_head_dim},
                              {"max_position_embeddings", c.max_position_embeddings},
                              {"moe_layer_freq", c.moe_layer_freq}}) {
    RETURN_IF_ERROR(RequirePositive(field, value));
  }
  for (auto [field, value] : {std::pair{"q_lora_rank", c.q_lora_rank},
                              {"first_k_dense_replace", c.first_k_dense_replace},
                              {"n_routed_experts", c.n_routed_experts},
                              {"n_shared_experts", c.n_shared_experts}}) {
    if (value < 0) return Invalid(field, value, "must not be negative");
  }
  if (c.num_key_value_heads != c.num_attention_heads) {
    return Unsupported("num_key_value_heads", c.num_key_value_heads,
                       "MLA needs num_key_value_heads == num_attention_heads");
  }
  if (c.qk_rope_head_dim % 2 != 0) {
    return Invalid("qk_rope_head_dim", c.qk_rope_head_dim, "RoPE needs an even dimension");
  }
  if (!(c.rms_norm_eps > 0)) return Invalid("rms_norm_eps", c.rms_norm_eps, "must be positive");
  if (!(c.rope_theta > 1)) return Invalid("rope_theta", c.rope_theta, "must be > 1");
  if (!(std::isfinite(c.routed_scaling_factor) && c.routed_scaling_factor > 0)) {
    return Invalid("routed_scaling_factor", c.routed_scaling_factor, "must be positive");
  }
  bool any_dense = false, any_moe = false;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    (c.IsMoeLayer(layer) ? any_moe : any_dense) = true;
  }
  if (any_dense) RETURN_IF_ERROR(RequirePositive("intermediate_size", c.intermediate_size));
  if (any_moe) {
    RETURN_IF_ERROR(RequirePositive("moe_intermediate_size", c.moe_intermediate_size));
    if (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.n_routed_experts) {
      return Invalid("num_experts_per_tok", c.num_experts_per_tok,
                     absl::StrCat("must be in [1, n_routed_experts = ", c.n_routed_experts, "]"));
    }
    if (c.n_group < 1 || c.n_routed_experts % c.n_group != 0) {
      return Invalid("n_group", c.n_group,
                     absl::StrCat("must divide n_routed_experts = ", c.n_routed_experts));
    }
    if (c.topk_group < 1 || c.topk_group > c.n_group) {
      return Invalid("topk_group", c.topk_group, absl::StrCat("must be in [1, n_group = ", c.n_group, "]"));
    }
    if (c.topk_method == TopkMethod::kGroupLimitedGreedy &&
        c.topk_group * c.experts_per_group() < c.num_experts_per_tok) {
      return Invalid("topk_group", c.topk_group,
                     "the kept groups hold fewer experts than num_experts_per_tok");
    }
  }
  if (c.bos_token_id >= c.vocab_size) {
    return Invalid("bos_token_id", c.bos_token_id, "outside the vocabulary");
  }
  if (c.eos_token_id >= c.vocab_size) {
    return Invalid("eos_token_id", c.eos_token_id, "outside the vocabulary");
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  auto config = ParseModelConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

}  // namespace dsv2
