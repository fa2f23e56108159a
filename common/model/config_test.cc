#include "common/model/config.h"

#include <fstream>
#include <sstream>

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
      {"/quantization_config", nlohmann::json{{"quant_method", "fp8"}}, "'quantization_config'"},
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

}  // namespace
}  // namespace dsv2
