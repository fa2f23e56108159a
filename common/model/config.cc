#include "common/model/config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/base/json_reading.h"
#include "common/base/regular_file.h"
#include "common/base/status_macros.h"
#include "common/tensor/q8.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using Json = nlohmann::json;
namespace limits = config_limits;

// config.json is small (about 1.5 KB published); anything near this is not one.
constexpr int64_t kMaxConfigBytes = 1 << 20;

absl::Status Unsupported(std::string_view field, const Json& value, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("config field '", std::string(field),
                                                 "' = ", JsonValueForMessage(value),
                                                 " is not supported: ", std::string(why)));
}

absl::Status Invalid(std::string_view field, const Json& value, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("config field '", std::string(field),
                                                 "' = ", JsonValueForMessage(value),
                                                 " is invalid: ", std::string(why)));
}

// The integer a JSON number stands for, if it is one (12 or 12.0) and fits
// int64.
std::optional<int64_t> AsInt(const Json& value) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    const double v = value.get<double>();
    if (v == std::floor(v) && std::fabs(v) < 9e15) return static_cast<int64_t>(v);
  }
  return std::nullopt;
}

// Typed, range-checked reads of one JSON object's fields; errors name the
// field with `prefix` ("rope_scaling.factor"). Absent and null fields take
// the fallback, or are "missing" when there is none.
class FieldReader {
 public:
  FieldReader(const Json& object, std::string prefix)
      : object_(object), prefix_(std::move(prefix)) {}

  // An integer in [min, max].
  absl::StatusOr<int64_t> Int(const char* key, std::optional<int64_t> fallback, int64_t min,
                              int64_t max) const {
    const Json* value = Find(key);
    if (value == nullptr) {
      if (fallback) return *fallback;
      return Missing(key);
    }
    const std::optional<int64_t> n = AsInt(*value);
    if (!value->is_number()) {
      return Invalid(Name(key), *value,
                     absl::StrCat("expected an integer, got ", JsonTypeName(*value)));
    }
    if (!n && value->is_number_float() && std::fabs(value->get<double>()) < 9e15) {
      return Invalid(Name(key), *value, "expected an integer");
    }
    if (!n || *n < min || *n > max) return OutOfRange(key, *value, "[", min, max);
    return *n;
  }

  // A finite number in [min, max], or (min, max] when `min_exclusive`.
  absl::StatusOr<double> Number(const char* key, double fallback, double min, double max,
                                bool min_exclusive = false) const {
    const Json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_number()) {
      return Invalid(Name(key), *value,
                     absl::StrCat("expected a number, got ", JsonTypeName(*value)));
    }
    const double x = value->get<double>();
    if (!(std::isfinite(x) && (min_exclusive ? x > min : x >= min) && x <= max)) {
      return OutOfRange(key, *value, min_exclusive ? "(" : "[", min, max);
    }
    return x;
  }

  absl::StatusOr<bool> Bool(const char* key, bool fallback) const {
    const Json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) {
      return Invalid(Name(key), *value,
                     absl::StrCat("expected true or false, got ", JsonTypeName(*value)));
    }
    return value->get<bool>();
  }

  absl::StatusOr<std::string> String(const char* key, std::optional<std::string> fallback) const {
    const Json* value = Find(key);
    if (value == nullptr) {
      if (fallback) return *fallback;
      return Missing(key);
    }
    if (!value->is_string()) {
      return Invalid(Name(key), *value,
                     absl::StrCat("expected a string, got ", JsonTypeName(*value)));
    }
    return value->get<std::string>();
  }

  // A token id in [0, vocab_size), or -1 when absent. It may be written as
  // a list (several EOS ids); the first is the one the engine stops on by
  // default.
  absl::StatusOr<int64_t> TokenId(const char* key, int64_t vocab_size) const {
    const Json* value = Find(key);
    if (value == nullptr) return -1;
    const Json& id = value->is_array() && !value->empty() ? (*value)[0] : *value;
    const std::optional<int64_t> n = AsInt(id);
    if (!n) return Invalid(Name(key), *value, "expected an integer or a list of integers");
    if (*n < 0 || *n >= vocab_size) {
      return Invalid(Name(key), id, absl::StrCat("outside the vocabulary [0, ", vocab_size, ")"));
    }
    return *n;
  }

  std::string Name(const char* key) const { return prefix_ + key; }

 private:
  const Json* Find(const char* key) const {
    const auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  absl::Status Missing(const char* key) const {
    return absl::InvalidArgumentError(absl::StrCat("config field '", Name(key), "' is missing"));
  }

  // "config field 'num_hidden_layers' = 1000000 is out of range [1, 512]".
  template <typename T>
  absl::Status OutOfRange(const char* key, const Json& value, const char* open, T min,
                          T max) const {
    return absl::InvalidArgumentError(absl::StrCat("config field '", Name(key),
                                                   "' = ", JsonValueForMessage(value),
                                                   " is out of range ", open, min, ", ", max, "]"));
  }

  const Json& object_;
  std::string prefix_;
};

absl::Status RequirePositive(const char* field, int64_t value) {
  if (value <= 0) return Invalid(field, value, "must be positive");
  return absl::OkStatus();
}

absl::StatusOr<std::optional<YarnScaling>> ParseRopeScaling(const Json& config) {
  auto it = config.find("rope_scaling");
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) {
    return Invalid("rope_scaling", *it,
                   absl::StrCat("expected an object or null, got ", JsonTypeName(*it)));
  }
  const Json& rope = *it;
  const FieldReader fields(rope, "rope_scaling.");
  // Published files say "type"; newer transformers write "rope_type".
  const char* type_key = rope.contains("type") ? "type" : "rope_type";
  ASSIGN_OR_RETURN(std::string type, fields.String(type_key, std::nullopt));
  if (type != "yarn") {
    return Unsupported(fields.Name(type_key), type, "only \"yarn\" is implemented");
  }
  YarnScaling yarn;
  ASSIGN_OR_RETURN(yarn.factor, fields.Number("factor", 1.0, 1.0, limits::kMaxRopeFactor));
  ASSIGN_OR_RETURN(yarn.original_max_position_embeddings,
                   fields.Int("original_max_position_embeddings", std::nullopt, 1,
                              limits::kMaxPositionEmbeddings));
  ASSIGN_OR_RETURN(yarn.beta_fast, fields.Number("beta_fast", 32.0, 0.0, limits::kMaxYarnBeta,
                                                 /*min_exclusive=*/true));
  ASSIGN_OR_RETURN(yarn.beta_slow, fields.Number("beta_slow", 1.0, 0.0, limits::kMaxYarnBeta,
                                                 /*min_exclusive=*/true));
  // Not negative: the cos/sin scale divides by 0.1·mscale_all_dim·ln(factor) + 1.
  ASSIGN_OR_RETURN(yarn.mscale, fields.Number("mscale", 1.0, 0.0, limits::kMaxYarnMscale));
  ASSIGN_OR_RETURN(yarn.mscale_all_dim,
                   fields.Number("mscale_all_dim", 0.0, 0.0, limits::kMaxYarnMscale));
  if (rope.contains("attention_factor") && !rope["attention_factor"].is_null()) {
    return Unsupported(fields.Name("attention_factor"), rope["attention_factor"],
                       "DeepSeek-V2 derives it from mscale and mscale_all_dim");
  }
  if (rope.contains("truncate") && rope["truncate"] != true) {
    return Unsupported(fields.Name("truncate"), rope["truncate"],
                       "DeepSeek-V2 truncates the YaRN correction range");
  }
  return yarn;
}

// Whether the checkpoint holds dsv2-int8 weights: a quantization_config of
// that method with groups of kQ8Block. Any other quantization is refused.
absl::StatusOr<bool> ParseQuantization(const Json& config) {
  auto it = config.find("quantization_config");
  if (it == config.end() || it->is_null()) return false;
  const Json& quant = *it;
  constexpr char kWhy[] =
      "the engine runs float checkpoints and its own {\"quant_method\": \"dsv2-int8\", "
      "\"group_size\": 32} (written by `dsv2 quantize`)";
  if (!quant.is_object()) return Unsupported("quantization_config", quant, kWhy);
  const FieldReader fields(quant, "quantization_config.");
  ASSIGN_OR_RETURN(std::string method, fields.String("quant_method", std::nullopt));
  if (method != "dsv2-int8") return Unsupported("quantization_config.quant_method", method, kWhy);
  ASSIGN_OR_RETURN(int64_t group, fields.Int("group_size", std::nullopt, 1, kQ8Block * 1024));
  if (group != kQ8Block) return Unsupported("quantization_config.group_size", group, kWhy);
  return true;
}

absl::StatusOr<ModelConfig> ParseConfigObject(const Json& config) {
  const FieldReader fields(config, "");
  ModelConfig c;
  ASSIGN_OR_RETURN(c.model_type, fields.String("model_type", std::nullopt));
  if (c.model_type != "deepseek_v2" && c.model_type != "deepseek") {
    return Unsupported("model_type", c.model_type, "expected \"deepseek_v2\" (or \"deepseek\")");
  }
  ASSIGN_OR_RETURN(c.int8_weights, ParseQuantization(config));
  // Every count is bounded as it is read, before anything uses it.
  ASSIGN_OR_RETURN(c.vocab_size, fields.Int("vocab_size", std::nullopt, 1, limits::kMaxVocabSize));
  ASSIGN_OR_RETURN(c.hidden_size,
                   fields.Int("hidden_size", std::nullopt, 1, limits::kMaxHiddenSize));
  ASSIGN_OR_RETURN(c.intermediate_size,
                   fields.Int("intermediate_size", std::nullopt, 0, limits::kMaxIntermediateSize));
  ASSIGN_OR_RETURN(c.num_hidden_layers,
                   fields.Int("num_hidden_layers", std::nullopt, 1, limits::kMaxLayers));
  ASSIGN_OR_RETURN(c.num_attention_heads,
                   fields.Int("num_attention_heads", std::nullopt, 1, limits::kMaxAttentionHeads));
  ASSIGN_OR_RETURN(c.num_key_value_heads, fields.Int("num_key_value_heads", c.num_attention_heads,
                                                     1, limits::kMaxAttentionHeads));
  ASSIGN_OR_RETURN(c.n_routed_experts,
                   fields.Int("n_routed_experts", 0, 0, limits::kMaxRoutedExperts));
  ASSIGN_OR_RETURN(c.n_shared_experts,
                   fields.Int("n_shared_experts", 0, 0, limits::kMaxSharedExperts));
  ASSIGN_OR_RETURN(c.moe_intermediate_size,
                   fields.Int("moe_intermediate_size", 0, 0, limits::kMaxMoeIntermediateSize));
  ASSIGN_OR_RETURN(c.num_experts_per_tok,
                   fields.Int("num_experts_per_tok", 0, 0, limits::kMaxExpertsPerToken));
  ASSIGN_OR_RETURN(c.first_k_dense_replace,
                   fields.Int("first_k_dense_replace", 0, 0, limits::kMaxLayers));
  ASSIGN_OR_RETURN(c.moe_layer_freq, fields.Int("moe_layer_freq", 1, 1, limits::kMaxLayers));
  ASSIGN_OR_RETURN(c.n_group, fields.Int("n_group", 1, 0, limits::kMaxRoutedExperts));
  ASSIGN_OR_RETURN(c.topk_group, fields.Int("topk_group", 1, 0, limits::kMaxRoutedExperts));
  ASSIGN_OR_RETURN(c.routed_scaling_factor,
                   fields.Number("routed_scaling_factor", 1.0, 0.0, limits::kMaxRoutedScalingFactor,
                                 /*min_exclusive=*/true));
  ASSIGN_OR_RETURN(c.norm_topk_prob, fields.Bool("norm_topk_prob", false));
  ASSIGN_OR_RETURN(c.q_lora_rank, fields.Int("q_lora_rank", 0, 0, limits::kMaxLoraRank));
  ASSIGN_OR_RETURN(c.kv_lora_rank,
                   fields.Int("kv_lora_rank", std::nullopt, 1, limits::kMaxLoraRank));
  ASSIGN_OR_RETURN(c.qk_nope_head_dim,
                   fields.Int("qk_nope_head_dim", std::nullopt, 1, limits::kMaxHeadDim));
  ASSIGN_OR_RETURN(c.qk_rope_head_dim,
                   fields.Int("qk_rope_head_dim", std::nullopt, 1, limits::kMaxHeadDim));
  ASSIGN_OR_RETURN(c.v_head_dim, fields.Int("v_head_dim", std::nullopt, 1, limits::kMaxHeadDim));
  ASSIGN_OR_RETURN(c.rope_theta, fields.Number("rope_theta", 10000.0, 1.0, limits::kMaxRopeTheta,
                                               /*min_exclusive=*/true));
  ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(config));
  ASSIGN_OR_RETURN(c.max_position_embeddings,
                   fields.Int("max_position_embeddings", 2048, 1, limits::kMaxPositionEmbeddings));
  ASSIGN_OR_RETURN(c.rms_norm_eps, fields.Number("rms_norm_eps", 1e-6, 0.0, limits::kMaxRmsNormEps,
                                                 /*min_exclusive=*/true));
  ASSIGN_OR_RETURN(c.bos_token_id, fields.TokenId("bos_token_id", c.vocab_size));
  ASSIGN_OR_RETURN(c.eos_token_id, fields.TokenId("eos_token_id", c.vocab_size));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, fields.Bool("tie_word_embeddings", false));

  // What the engine computes must be what the checkpoint was trained with.
  ASSIGN_OR_RETURN(std::string hidden_act, fields.String("hidden_act", "silu"));
  if (hidden_act != "silu") return Unsupported("hidden_act", hidden_act, "only \"silu\" is implemented");
  ASSIGN_OR_RETURN(bool attention_bias, fields.Bool("attention_bias", false));
  if (attention_bias) return Unsupported("attention_bias", true, "DeepSeek-V2 has no attention bias");
  ASSIGN_OR_RETURN(std::string scoring_func, fields.String("scoring_func", "softmax"));
  if (scoring_func != "softmax") {
    return Unsupported("scoring_func", scoring_func, "only \"softmax\" is implemented");
  }
  // "gready" is the remote code's misspelled default, meaning greedy.
  ASSIGN_OR_RETURN(std::string topk_method, fields.String("topk_method", "greedy"));
  if (topk_method == "greedy" || topk_method == "gready") {
    c.topk_method = TopkMethod::kGreedy;
  } else if (topk_method == "group_limited_greedy") {
    c.topk_method = TopkMethod::kGroupLimitedGreedy;
  } else {
    return Unsupported("topk_method", topk_method,
                       "expected \"greedy\" or \"group_limited_greedy\"");
  }

  if (c.num_key_value_heads != c.num_attention_heads) {
    return Unsupported("num_key_value_heads", c.num_key_value_heads,
                       "MLA needs num_key_value_heads == num_attention_heads");
  }
  if (c.qk_rope_head_dim % 2 != 0) {
    return Invalid("qk_rope_head_dim", c.qk_rope_head_dim, "RoPE needs an even dimension");
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
  return c;
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
  return GuardJsonReader("config.json", [&]() -> absl::StatusOr<ModelConfig> {
    const Json config = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) return absl::InvalidArgumentError("config.json is not valid JSON");
    if (!config.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
    return ParseConfigObject(config);
  });
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadRegularFile(path, kMaxConfigBytes));
  auto config = ParseModelConfig(text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

}  // namespace dsv2
