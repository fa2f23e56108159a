#include "common/model/weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "common/base/test_util.h"
#include "common/model/safetensors_writer.h"
#include "common/tensor/q8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;

TEST(WeightsTest, PublishedParameterCounts) {
  // Sums of the published tensor shapes [model reference §4].
  auto v2 = LoadModelConfig("common/model/presets/deepseek-v2.json");
  ASSERT_TRUE(v2.ok()) << v2.status();
  const ParameterCounts v2_counts = CountParameters(*v2);
  EXPECT_EQ(v2_counts.total, 235741434880);  // 235.7B
  EXPECT_EQ(v2_counts.activated, 20851512320);  // 21B without the 0.52B embedding table.

  auto lite = LoadModelConfig("common/model/presets/deepseek-v2-lite.json");
  ASSERT_TRUE(lite.ok()) << lite.status();
  const ParameterCounts lite_counts = CountParameters(*lite);
  EXPECT_EQ(lite_counts.total, 15706484224);  // 15.7B
  EXPECT_EQ(lite_counts.activated, 2451435008);  // 2.4B
}

TEST(WeightsTest, ExpectedTensorNamesFollowThePublishedLayout) {
  auto lite = LoadModelConfig("common/model/presets/deepseek-v2-lite.json");
  ASSERT_TRUE(lite.ok());
  const std::vector<TensorSpec> specs = ExpectedTensors(*lite);
  auto find = [&](const std::string& name) -> const TensorSpec* {
    for (const TensorSpec& s : specs) {
      if (s.name == name) return &s;
    }
    return nullptr;
  };
  ASSERT_NE(find("model.layers.0.self_attn.q_proj.weight"), nullptr);
  EXPECT_EQ(find("model.layers.0.self_attn.q_a_proj.weight"), nullptr);
  EXPECT_EQ(find("model.layers.0.self_attn.q_proj.weight")->shape, (std::vector<int64_t>{3072, 2048}));
  EXPECT_EQ(find("model.layers.0.self_attn.kv_b_proj.weight")->shape, (std::vector<int64_t>{4096, 512}));
  EXPECT_EQ(find("model.layers.0.mlp.gate_proj.weight")->shape, (std::vector<int64_t>{10944, 2048}));
  EXPECT_EQ(find("model.layers.1.mlp.gate.weight")->shape, (std::vector<int64_t>{64, 2048}));
  EXPECT_EQ(find("model.layers.26.mlp.experts.63.down_proj.weight")->shape,
            (std::vector<int64_t>{2048, 1408}));
  EXPECT_EQ(find("model.layers.26.mlp.experts.63.down_proj.weight")->expert, 63);
  EXPECT_EQ(find("model.layers.1.mlp.shared_experts.up_proj.weight")->shape,
            (std::vector<int64_t>{2816, 2048}));
  EXPECT_NE(find("lm_head.weight"), nullptr);
}

// Fills a tensor's bytes; by default 0x3f, which is 0.75 in BF16 and F32.
using FillFn = std::function<void(const TensorToWrite& tensor, char* out, int64_t bytes)>;

// Writes a random checkpoint for `config` with `mutate` applied to the spec list.
std::string WriteCheckpoint(const ModelConfig& config,
                            const std::function<void(std::vector<TensorToWrite>&)>& mutate,
                            const FillFn& fill = nullptr) {
  const std::string dir = testutil::NewTestDir("weights_test");
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& spec : ExpectedTensors(config)) tensors.push_back({spec.name, "BF16", spec.shape});
  mutate(tensors);
  const absl::Status status = WriteSafetensors(dir + "/model.safetensors", tensors,
                                               [&](size_t index, char* out, int64_t bytes) {
                                                 if (fill) return fill(tensors[index], out, bytes);
                                                 std::fill(out, out + bytes, 0x3f);
                                               });
  EXPECT_TRUE(status.ok()) << status;
  return dir;
}

// The dsv2-int8 layout of a tensor list: every quantizable weight I8, its
// F32 scales first in the file (so that they are 4-byte aligned).
void MakeInt8(std::vector<TensorToWrite>& tensors) {
  std::vector<TensorToWrite> scales;
  for (TensorToWrite& t : tensors) {
    if (!IsQuantizable(TensorSpec{t.name, t.shape})) continue;
    t.dtype_name = "I8";
    scales.push_back({ScaleTensorName(t.name), "F32", {t.shape[0], Q8Blocks(t.shape[1])}});
  }
  tensors.insert(tensors.begin(), scales.begin(), scales.end());
}

class BindWeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = LoadModelConfig("common/model/presets/deepseek-v2.json");
    ASSERT_TRUE(config.ok());
    config_ = *config;
    // Shrink to a few MB while keeping the V2 structure.
    config_.vocab_size = 64;
    config_.hidden_size = 32;
    config_.intermediate_size = 48;
    config_.moe_intermediate_size = 8;
    config_.num_hidden_layers = 2;
    config_.num_attention_heads = 2;
    config_.num_key_value_heads = 2;
    config_.q_lora_rank = 16;
    config_.kv_lora_rank = 16;
    config_.qk_nope_head_dim = 8;
    config_.qk_rope_head_dim = 8;
    config_.v_head_dim = 8;
    config_.n_routed_experts = 8;
    config_.n_group = 4;
    config_.topk_group = 2;
    config_.num_experts_per_tok = 2;
  }

  absl::Status Bind(const std::function<void(std::vector<TensorToWrite>&)>& mutate) {
    const std::string dir = WriteCheckpoint(config_, mutate);
    auto checkpoint = Checkpoint::Open(dir);
    if (!checkpoint.ok()) return checkpoint.status();
    return BindWeights(config_, *checkpoint).status();
  }

  ModelConfig config_;
};

TEST_F(BindWeightsTest, CompleteCheckpointBinds) {
  const std::string dir = WriteCheckpoint(config_, [](auto&) {});
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto weights = BindWeights(config_, *checkpoint);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->layers.size(), 2u);
  EXPECT_FALSE(weights->layers[0].is_moe);
  EXPECT_TRUE(weights->layers[1].is_moe);
  EXPECT_EQ(weights->layers[1].experts.size(), 8u);
  EXPECT_EQ(weights->layers[1].experts[7].down.rows, 32);
  EXPECT_EQ(weights->layers[1].shared.gate.rows, 16);
  EXPECT_EQ(weights->embed.dtype, DType::kBF16);
  // Only routed experts' matrices are marked routed (the kernels pick by it).
  for (const MlpWeights& expert : weights->layers[1].experts) {
    EXPECT_TRUE(expert.gate.routed && expert.up.routed && expert.down.routed);
  }
  const LayerWeights& dense = weights->layers[0];
  const LayerWeights& moe = weights->layers[1];
  for (const WeightMatrix* m : std::initializer_list<const WeightMatrix*>{
           &dense.q_a, &dense.q_b, &dense.kv_a, &dense.kv_b, &dense.o, &dense.dense.gate,
           &dense.dense.up, &dense.dense.down, &moe.router, &moe.shared.gate, &moe.shared.up,
           &moe.shared.down, &weights->embed, &weights->lm_head}) {
    EXPECT_FALSE(m->routed) << m->rows << " x " << m->cols;
  }
}

TEST_F(BindWeightsTest, Int8CheckpointBindsWithScales) {
  config_.int8_weights = true;
  const std::string dir = WriteCheckpoint(config_, MakeInt8);
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto weights = BindWeights(config_, *checkpoint);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const LayerWeights& moe = weights->layers[1];
  for (const WeightMatrix* m : std::initializer_list<const WeightMatrix*>{
           &moe.q_a, &moe.q_b, &moe.kv_a, &moe.kv_b, &moe.o, &moe.experts[7].down, &moe.shared.up,
           &weights->layers[0].dense.gate, &weights->lm_head}) {
    EXPECT_EQ(m->dtype, DType::kI8);
    ASSERT_NE(m->scales, nullptr);
    EXPECT_FLOAT_EQ(m->scales[0], 0.74705881f);  // The F32 of bytes 0x3f.
  }
  EXPECT_EQ(moe.experts[7].down.cols, 8);  // One partial block per row.
  EXPECT_EQ(weights->embed.dtype, DType::kBF16);
  EXPECT_EQ(moe.router.dtype, DType::kBF16);
  EXPECT_EQ(moe.router.scales, nullptr);
  // A float weight in an int8 checkpoint is fine (nothing forces every one).
  auto mixed = Bind([](std::vector<TensorToWrite>& tensors) {
    MakeInt8(tensors);
    std::erase_if(tensors, [](const TensorToWrite& t) {
      return t.name == "model.layers.0.self_attn.o_proj.weight_scale";
    });
    for (TensorToWrite& t : tensors) {
      if (t.name == "model.layers.0.self_attn.o_proj.weight") t.dtype_name = "BF16";
    }
  });
  EXPECT_TRUE(mixed.ok()) << mixed;
}

TEST_F(BindWeightsTest, Int8WithoutQuantizationConfigIsRejected) {
  const absl::Status status = Bind(MakeInt8);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("has dtype I8, but config.json has no quantization_config"));
  EXPECT_THAT(status.message(), HasSubstr("/model.safetensors"));
}

// Hostile int8 checkpoints: each fails naming the tensor and its file.
TEST_F(BindWeightsTest, Int8ScaleProblemsAreNamed) {
  config_.int8_weights = true;
  const std::string weight = "model.layers.1.mlp.experts.3.down_proj.weight";
  const std::string scale = weight + "_scale";
  auto with = [&](const std::function<void(TensorToWrite&)>& change) {
    return Bind([&](std::vector<TensorToWrite>& tensors) {
      MakeInt8(tensors);
      for (TensorToWrite& t : tensors) {
        if (t.name == scale) change(t);
      }
    });
  };
  absl::Status status = Bind([&](std::vector<TensorToWrite>& tensors) {
    MakeInt8(tensors);
    std::erase_if(tensors, [&](const TensorToWrite& t) { return t.name == scale; });
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("int8 tensor '" + weight + "' in "));
  EXPECT_THAT(status.message(), HasSubstr("has no scale tensor '" + scale + "'"));
  EXPECT_THAT(status.message(), HasSubstr("expected F32 [32, 1]"));

  status = with([](TensorToWrite& t) { t.shape = {32, 2}; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("scale tensor '" + scale + "' in "));
  EXPECT_THAT(status.message(), HasSubstr("has shape [32, 2], but int8 tensor '" + weight +
                                          "' [32, 8] needs [32, 1]"));

  status = with([](TensorToWrite& t) { t.dtype_name = "BF16"; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("scale tensor '" + scale + "' in "));
  EXPECT_THAT(status.message(), HasSubstr("has dtype BF16; expected F32"));
}

TEST_F(BindWeightsTest, NonFiniteOrNegativeScalesAreNamed) {
  config_.int8_weights = true;
  const std::string scale = "model.layers.0.self_attn.kv_b_proj.weight_scale";
  for (const float bad : {NAN, INFINITY, -0.5f}) {
    const std::string dir =
        WriteCheckpoint(config_, MakeInt8, [&](const TensorToWrite& t, char* out, int64_t bytes) {
          std::fill(out, out + bytes, 0x3f);
          if (t.name == scale) {
            std::memcpy(out + 4 * 5, &bad, sizeof(bad));
          }
        });
    auto checkpoint = Checkpoint::Open(dir);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    // The structure is right; the values are read when the weights are bound.
    EXPECT_TRUE(CheckCheckpointMatchesConfig(config_, *checkpoint).ok());
    const absl::Status status = BindWeights(config_, *checkpoint).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(),
                HasSubstr("scale tensor '" + scale + "' in " + dir + "/model.safetensors holds "));
    EXPECT_THAT(status.message(), HasSubstr(" at [5, 0]; scales must be finite and not negative"));
  }
}

TEST_F(BindWeightsTest, Int8IsRejectedOutsideTheLinearLayers) {
  config_.int8_weights = true;
  for (const std::string name :
       {"model.layers.0.input_layernorm.weight", "model.layers.1.self_attn.kv_a_layernorm.weight",
        "model.embed_tokens.weight", "model.layers.1.mlp.gate.weight"}) {
    const absl::Status status = Bind([&](std::vector<TensorToWrite>& tensors) {
      MakeInt8(tensors);
      for (TensorToWrite& t : tensors) {
        if (t.name == name) t.dtype_name = "I8";
      }
    });
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(status.message(), HasSubstr("tensor '" + name + "' in "));
    EXPECT_THAT(status.message(), HasSubstr("has dtype I8; expected BF16, F16 or F32"));
  }
}

TEST_F(BindWeightsTest, MissingTensorIsNamed) {
  const absl::Status status = Bind([](std::vector<TensorToWrite>& tensors) {
    std::erase_if(tensors, [](const TensorToWrite& t) {
      return t.name == "model.layers.1.mlp.experts.5.up_proj.weight";
    });
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("'model.layers.1.mlp.experts.5.up_proj.weight'"));
}

TEST_F(BindWeightsTest, WrongShapeIsNamedWithBothShapes) {
  const absl::Status status = Bind([](std::vector<TensorToWrite>& tensors) {
    for (TensorToWrite& t : tensors) {
      if (t.name == "model.layers.0.self_attn.kv_b_proj.weight") t.shape = {32, 15};
    }
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'model.layers.0.self_attn.kv_b_proj.weight'"));
  EXPECT_THAT(status.message(), HasSubstr("[32, 15]"));
  EXPECT_THAT(status.message(), HasSubstr("[32, 16]"));
}

TEST_F(BindWeightsTest, NonFloatDtypeIsNamed) {
  const absl::Status status = Bind([](std::vector<TensorToWrite>& tensors) {
    for (TensorToWrite& t : tensors) {
      if (t.name == "model.norm.weight") t.dtype_name = "I16";
    }
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'model.norm.weight'"));
  EXPECT_THAT(status.message(), HasSubstr("I16"));
}

// A config that claims more layers than the checkpoint holds fails at the
// first tensor past the checkpoint, naming it and what the config says.
TEST_F(BindWeightsTest, ConfigClaimingMoreLayersThanTheCheckpointIsNamed) {
  const std::string dir = WriteCheckpoint(config_, [](auto&) {});
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  ModelConfig claims = config_;
  claims.num_hidden_layers = config_limits::kMaxLayers;
  const absl::Status status = CheckCheckpointMatchesConfig(claims, *checkpoint);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(),
            "checkpoint " + dir +
                " has no tensor 'model.layers.2.input_layernorm.weight' (expected shape [32]; "
                "the config has num_hidden_layers = 512)");
  EXPECT_EQ(BindWeights(claims, *checkpoint).status(), status);
  claims = config_;
  claims.n_routed_experts = 16;
  EXPECT_THAT(CheckCheckpointMatchesConfig(claims, *checkpoint).message(),
              HasSubstr("'model.layers.1.mlp.gate.weight' in " + dir +
                        "/model.safetensors has shape [8, 32], but the config implies [16, 32]"));
}

TEST(WeightsWalkTest, ForEachStopsWhenAskedAndMatchesTheList) {
  auto v2 = LoadModelConfig("common/model/presets/deepseek-v2.json");
  ASSERT_TRUE(v2.ok());
  const std::vector<TensorSpec> all = ExpectedTensors(*v2);
  size_t visited = 0;
  bool same = true;
  ForEachExpectedTensor(*v2, [&](const TensorSpec& spec) {
    same = same && spec.name == all[visited].name && spec.shape == all[visited].shape;
    return ++visited < 10;
  });
  EXPECT_EQ(visited, 10u);
  EXPECT_TRUE(same);
}

}  // namespace
}  // namespace dsv2
