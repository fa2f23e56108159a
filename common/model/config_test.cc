#include "common/model/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/model/weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

TEST(ConfigTest, ParsesPublishedDeepSeekV2) {
  auto config = LoadModelConfig("common/model/presets/deepseek-v2.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, 5120);
  EXPECT_EQ(config->num_hidden_layers, 60);
  EXPECT_EQ(config->q_lora_rank, 1536);
  EXPECT_TRUE(config->has_q_lora());
  EXPECT_EQ(config->topk_method, TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(config->n_group, 8);
  EXPECT_EQ(config->topk_group, 3);
  EXPECT_EQ(config->routed_scaling_factor, 16.0);
  EXPECT_FALSE(config->norm_topk_prob);
  EXPECT_EQ(config->latent_dim(), 576);
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_EQ(config->rope_scaling->factor, 40.0);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(config->rope_scaling->mscale_all_dim, 0.707);
  EXPECT_EQ(config->bos_token_id, 100000);
  EXPECT_EQ(config->eos_token_id, 100001);
  EXPECT_FALSE(config->IsMoeLayer(0));
  EXPECT_TRUE(config->IsMoeLayer(1));
  EXPECT_TRUE(config->IsMoeLayer(59));
  // (128 + 64)^-1/2 · (1 + 0.0707 ln 40)^2 [model reference §2].
  EXPECT_NEAR(config->SoftmaxScale(), 0.1147214, 5e-8);
}

TEST(ConfigTest, ParsesPublishedLiteWithNullQLoraRank) {
  auto config = LoadModelConfig("common/model/presets/deepseek-v2-lite.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->q_lora_rank, 0);
  EXPECT_FALSE(config->has_q_lora());
  EXPECT_EQ(config->topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(config->routed_scaling_factor, 1.0);
  EXPECT_EQ(config->n_routed_experts, 64);
  EXPECT_NEAR(config->SoftmaxScale(), 0.1147214, 5e-8);
}

TEST(ConfigTest, Int8QuantizationConfig) {
  nlohmann::json json = ReadJson("common/model/presets/deepseek-v2-lite.json");
  auto plain = ParseModelConfig(json.dump());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->int8_weights);
  json["quantization_config"] = {{"quant_method", "dsv2-int8"}, {"group_size", 32}};
  auto int8 = ParseModelConfig(json.dump());
  ASSERT_TRUE(int8.ok()) << int8.status();
  EXPECT_TRUE(int8->int8_weights);
}

TEST(ConfigTest, MoeLayerFrequencyAndNullExperts) {
  nlohmann::json json = ReadJson("common/model/presets/deepseek-v2-lite.json");
  json["moe_layer_freq"] = 2;
  json["first_k_dense_replace"] = 1;
  auto config = ParseModelConfig(json.dump());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->IsMoeLayer(0));
  EXPECT_FALSE(config->IsMoeLayer(1));
  EXPECT_TRUE(config->IsMoeLayer(2));
  json["n_routed_experts"] = nullptr;
  config = ParseModelConfig(json.dump());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->IsMoeLayer(2));
}

TEST(ConfigTest, RejectsUnsupportedValuesNamingFieldAndValue) {
  const nlohmann::json base = ReadJson("common/model/presets/deepseek-v2.json");
  struct Case {
    std::string path;  // JSON pointer.
    nlohmann::json value;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"/model_type", "llama", "'model_type' = \"llama\""},
      {"/hidden_act", "gelu", "'hidden_act' = \"gelu\""},
      {"/scoring_func", "sigmoid", "'scoring_func' = \"sigmoid\""},
      {"/topk_method", "noaux_tc", "'topk_method' = \"noaux_tc\""},
      {"/attention_bias", true, "'attention_bias' = true"},
      {"/rope_scaling/type", "linear", "'rope_scaling.type' = \"linear\""},
      {"/num_key_value_heads", 8, "'num_key_value_heads' = 8"},
      {"/n_group", 7, "'n_group' = 7"},
      {"/topk_group", 9, "'topk_group' = 9"},
      {"/num_experts_per_tok", 161, "'num_experts_per_tok' = 161"},
      {"/qk_rope_head_dim", 63, "'qk_rope_head_dim' = 63"},
      {"/hidden_size", 0, "'hidden_size' = 0"},
      {"/hidden_size", "big", "'hidden_size' = \"big\""},
      {"/kv_lora_rank", -1, "'kv_lora_rank' = -1"},
      {"/norm_topk_prob", "yes", "'norm_topk_prob' = \"yes\""},
      {"/routed_scaling_factor", -16, "'routed_scaling_factor' = -16"},
      {"/eos_token_id", 102400, "'eos_token_id' = 102400"},
      {"/quantization_config", nlohmann::json{{"quant_method", "fp8"}},
       "'quantization_config.quant_method' = \"fp8\""},
      {"/quantization_config", nlohmann::json{{"quant_method", "dsv2-int8"}, {"group_size", 64}},
       "'quantization_config.group_size' = 64"},
      {"/quantization_config", "int8", "'quantization_config' = \"int8\""},
      {"/rope_scaling/original_max_position_embeddings", 0,
       "'rope_scaling.original_max_position_embeddings' = 0"},
  };
  for (const Case& c : cases) {
    nlohmann::json json = base;
    json[nlohmann::json::json_pointer(c.path)] = c.value;
    auto config = ParseModelConfig(json.dump());
    ASSERT_FALSE(config.ok()) << c.path;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << c.path;
    EXPECT_THAT(config.status().message(), HasSubstr(c.expected)) << c.path;
  }
}

TEST(ConfigTest, RejectsMissingFieldsAndBadJson) {
  nlohmann::json json = ReadJson("common/model/presets/deepseek-v2.json");
  json.erase("kv_lora_rank");
  EXPECT_THAT(ParseModelConfig(json.dump()).status().message(),
              HasSubstr("'kv_lora_rank' is missing"));
  EXPECT_THAT(ParseModelConfig("{not json").status().message(), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseModelConfig("[1, 2]").status().message(), HasSubstr("not a JSON object"));
  EXPECT_EQ(LoadModelConfig("/nonexistent/config.json").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ConfigTest, AcceptsAlternativeSpellings) {
  nlohmann::json json = ReadJson("common/model/presets/deepseek-v2.json");
  json["model_type"] = "deepseek";  // The first V2-Chat revision.
  json["eos_token_id"] = {100001, 100002};
  json["rope_scaling"].erase("type");
  json["rope_scaling"]["rope_type"] = "yarn";
  json["topk_method"] = "gready";  // The remote code's default spelling.
  auto config = ParseModelConfig(json.dump());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->eos_token_id, 100001);
  EXPECT_EQ(config->topk_method, TopkMethod::kGreedy);
  json["rope_scaling"] = nullptr;
  config = ParseModelConfig(json.dump());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->rope_scaling.has_value());
  EXPECT_NEAR(config->SoftmaxScale(), 1.0 / std::sqrt(192.0), 1e-9);
}

// The attack: a config.json that claims a million layers. Before the
// bounds it parsed, and everything sized from it (the tensor list, per-layer
// structures, KV caches) allocated gigabytes before failing.
TEST(ConfigLimitsTest, AMillionLayersIsRejectedNamingTheFieldValueAndBound) {
  nlohmann::json json = ReadJson("common/model/presets/deepseek-v2-lite.json");
  json["num_hidden_layers"] = 1000000;
  auto config = ParseModelConfig(json.dump());
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(config.status().message(),
            "config field 'num_hidden_layers' = 1000000 is out of range [1, 512]");
}

// Every numeric field one step past its bound (and a few far past, where a
// wrap-around or an unchecked conversion could sneak in) is refused, naming
// the field, the value as written and the bound.
TEST(ConfigLimitsTest, EveryNumericFieldIsBounded) {
  const nlohmann::json base = ReadJson("common/model/presets/deepseek-v2.json");
  namespace limits = config_limits;
  struct Case {
    std::string path;  // JSON pointer.
    nlohmann::json value;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"/vocab_size", limits::kMaxVocabSize + 1,
       "'vocab_size' = 1048577 is out of range [1, 1048576]"},
      {"/hidden_size", limits::kMaxHiddenSize + 1,
       "'hidden_size' = 32769 is out of range [1, 32768]"},
      {"/intermediate_size", limits::kMaxIntermediateSize + 1,
       "'intermediate_size' = 131073 is out of range [0, 131072]"},
      {"/moe_intermediate_size", limits::kMaxMoeIntermediateSize + 1,
       "'moe_intermediate_size' = 32769 is out of range [0, 32768]"},
      {"/num_hidden_layers", limits::kMaxLayers + 1,
       "'num_hidden_layers' = 513 is out of range [1, 512]"},
      {"/num_attention_heads", limits::kMaxAttentionHeads + 1,
       "'num_attention_heads' = 1025 is out of range [1, 1024]"},
      {"/num_key_value_heads", limits::kMaxAttentionHeads + 1,
       "'num_key_value_heads' = 1025 is out of range [1, 1024]"},
      {"/n_routed_experts", limits::kMaxRoutedExperts + 1,
       "'n_routed_experts' = 1025 is out of range [0, 1024]"},
      {"/n_shared_experts", limits::kMaxSharedExperts + 1,
       "'n_shared_experts' = 65 is out of range [0, 64]"},
      {"/num_experts_per_tok", limits::kMaxExpertsPerToken + 1,
       "'num_experts_per_tok' = 65 is out of range [0, 64]"},
      {"/first_k_dense_replace", limits::kMaxLayers + 1,
       "'first_k_dense_replace' = 513 is out of range [0, 512]"},
      {"/moe_layer_freq", limits::kMaxLayers + 1,
       "'moe_layer_freq' = 513 is out of range [1, 512]"},
      {"/n_group", limits::kMaxRoutedExperts + 1, "'n_group' = 1025 is out of range [0, 1024]"},
      {"/topk_group", limits::kMaxRoutedExperts + 1,
       "'topk_group' = 1025 is out of range [0, 1024]"},
      {"/q_lora_rank", limits::kMaxLoraRank + 1,
       "'q_lora_rank' = 16385 is out of range [0, 16384]"},
      {"/kv_lora_rank", limits::kMaxLoraRank + 1,
       "'kv_lora_rank' = 16385 is out of range [1, 16384]"},
      {"/qk_nope_head_dim", limits::kMaxHeadDim + 1,
       "'qk_nope_head_dim' = 1025 is out of range [1, 1024]"},
      {"/qk_rope_head_dim", limits::kMaxHeadDim + 2,
       "'qk_rope_head_dim' = 1026 is out of range [1, 1024]"},
      {"/v_head_dim", limits::kMaxHeadDim + 1, "'v_head_dim' = 1025 is out of range [1, 1024]"},
      {"/max_position_embeddings", limits::kMaxPositionEmbeddings + 1,
       "'max_position_embeddings' = 16777217 is out of range [1, 16777216]"},
      {"/rope_scaling/original_max_position_embeddings", limits::kMaxPositionEmbeddings + 1,
       "'rope_scaling.original_max_position_embeddings' = 16777217 is out of range [1, 16777216]"},
      {"/rope_scaling/factor", 1025, "'rope_scaling.factor' = 1025 is out of range [1, 1024]"},
      {"/rope_scaling/beta_fast", 1e6,
       "'rope_scaling.beta_fast' = 1000000.0 is out of range (0, 1024]"},
      {"/rope_scaling/beta_slow", 0, "'rope_scaling.beta_slow' = 0 is out of range (0, 1024]"},
      {"/rope_scaling/mscale", 101, "'rope_scaling.mscale' = 101 is out of range [0, 100]"},
      {"/rope_scaling/mscale_all_dim", -3,
       "'rope_scaling.mscale_all_dim' = -3 is out of range [0, 100]"},
      {"/rope_theta", 1e10, "'rope_theta' = 10000000000.0 is out of range (1, 1e+09]"},
      {"/routed_scaling_factor", 1025, "'routed_scaling_factor' = 1025 is out of range (0, 1024]"},
      {"/rms_norm_eps", 2, "'rms_norm_eps' = 2 is out of range (0, 1]"},
      // Far past: values that wrap to negative or small in narrower types.
      {"/num_hidden_layers", uint64_t{18446744073709551615u},
       "'num_hidden_layers' = 18446744073709551615 is out of range [1, 512]"},
      {"/vocab_size", int64_t{4294967296 + 100}, "'vocab_size' = 4294967396 is out of range"},
      {"/hidden_size", 1e300, "'hidden_size' = 1e+300 is out of range [1, 32768]"},
      {"/num_hidden_layers", 2.5, "'num_hidden_layers' = 2.5 is invalid: expected an integer"},
      {"/bos_token_id", -5, "'bos_token_id' = -5 is invalid: outside the vocabulary [0, 102400)"},
  };
  for (const Case& c : cases) {
    nlohmann::json json = base;
    json[nlohmann::json::json_pointer(c.path)] = c.value;
    auto config = ParseModelConfig(json.dump());
    ASSERT_FALSE(config.ok()) << c.path << " = " << c.value.dump();
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << c.path;
    EXPECT_THAT(config.status().message(), HasSubstr("config field " + c.expected)) << c.path;
  }
}

// A config at every bound at once parses, and every size computed from it
// fits int64 exactly: the sums are recomputed here in 128-bit arithmetic.
// Raising a bound so far that a size overflows fails this test.
TEST(ConfigLimitsTest, AConfigAtEveryBoundParsesAndItsSizesFitInt64) {
  namespace limits = config_limits;
  nlohmann::json json = ReadJson("common/model/presets/deepseek-v2.json");
  json["vocab_size"] = limits::kMaxVocabSize;
  json["hidden_size"] = limits::kMaxHiddenSize;
  json["intermediate_size"] = limits::kMaxIntermediateSize;
  json["moe_intermediate_size"] = limits::kMaxMoeIntermediateSize;
  json["num_hidden_layers"] = limits::kMaxLayers;
  json["num_attention_heads"] = limits::kMaxAttentionHeads;
  json["num_key_value_heads"] = limits::kMaxAttentionHeads;
  json["n_routed_experts"] = limits::kMaxRoutedExperts;
  json["n_shared_experts"] = limits::kMaxSharedExperts;
  json["num_experts_per_tok"] = limits::kMaxExpertsPerToken;
  json["n_group"] = limits::kMaxRoutedExperts;
  json["topk_group"] = limits::kMaxRoutedExperts;
  json["q_lora_rank"] = limits::kMaxLoraRank;
  json["kv_lora_rank"] = limits::kMaxLoraRank;
  json["qk_nope_head_dim"] = limits::kMaxHeadDim;
  json["qk_rope_head_dim"] = limits::kMaxHeadDim;
  json["v_head_dim"] = limits::kMaxHeadDim;
  json["max_position_embeddings"] = limits::kMaxPositionEmbeddings;
  json["first_k_dense_replace"] = 1;
  json["bos_token_id"] = limits::kMaxVocabSize - 1;
  json["rope_scaling"]["factor"] = limits::kMaxRopeFactor;
  json["rope_scaling"]["original_max_position_embeddings"] = limits::kMaxPositionEmbeddings;
  auto config = ParseModelConfig(json.dump());
  ASSERT_TRUE(config.ok()) << config.status();

  using Wide = __int128;
  const Wide int64_max = INT64_MAX;
  Wide total = 0, largest_tensor_bytes = 0;
  ForEachExpectedTensor(*config, [&](const TensorSpec& spec) {
    Wide numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    EXPECT_TRUE(Wide{spec.numel()} == numel) << spec.name;
    total += numel;
    largest_tensor_bytes = std::max(largest_tensor_bytes, numel * 4);
    return true;
  });
  const ParameterCounts counts = CountParameters(*config);
  EXPECT_TRUE(Wide{counts.total} == total);
  EXPECT_TRUE(total * 4 < int64_max);  // Bytes in float32, the widest stored dtype.
  EXPECT_TRUE(largest_tensor_bytes < int64_max);
  // The KV cache of the longest sequence, in float32, and one engine step's
  // largest buffers for a million tokens: [tokens, heads, qk] and logits.
  const Wide kv_bytes =
      Wide{config->latent_dim()} * config->num_hidden_layers * config->max_position_embeddings * 4;
  EXPECT_TRUE(kv_bytes < int64_max);
  const Wide step_tokens = Wide{1} << 20;
  EXPECT_TRUE(step_tokens * config->num_attention_heads * config->qk_head_dim() * 4 < int64_max);
  EXPECT_TRUE(step_tokens * config->vocab_size * 4 < int64_max);
}

TEST(ConfigLimitsTest, DeeplyNestedValuesAreDescribedNotDumped) {
  // Printing this value in the message used to recurse once per level.
  std::string deep(100000, '[');
  deep += std::string(100000, ']');
  std::string text = ReadJson("common/model/presets/deepseek-v2.json").dump();
  const size_t at = text.find("\"vocab_size\":102400");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, std::string("\"vocab_size\":102400").size(), "\"vocab_size\":" + deep);
  auto config = ParseModelConfig(text);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(),
            "config field 'vocab_size' = an array of 1 elements is invalid: expected an integer, "
            "got array");
}

TEST(ConfigLimitsTest, ConfigJsonThatIsAFifoOrADirectoryIsRefusedAtOnce) {
  const std::string dir = testing::TempDir() + "/config_fifo_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/as-dir/config.json");
  std::filesystem::create_directories(dir + "/as-fifo");
  const std::string fifo = dir + "/as-fifo/config.json";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // Nobody writes to the FIFO: reading it the old way blocked forever
  // (model_test's ctest TIMEOUT turns such a regression into a failure).
  auto from_fifo = LoadModelConfig(fifo);
  EXPECT_EQ(from_fifo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(from_fifo.status().message(), fifo + " is a FIFO (named pipe), not a regular file");
  auto from_dir = LoadModelConfig(dir + "/as-dir/config.json");
  EXPECT_EQ(from_dir.status().message(),
            dir + "/as-dir/config.json is a directory, not a regular file");
}

}  // namespace
}  // namespace dsv2
