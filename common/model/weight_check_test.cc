// Non-finite weights are found in every stored float dtype, wherever they
// sit, and named; the cheap check covers exactly the norms and routers; the
// model refuses to load them (and, with the check off, fails the forward
// pass at the router instead of computing garbage).
#include "common/model/weight_check.h"

#include <cstring>
#include <filesystem>
#include <limits>
#include <vector>

#include "common/model/deepseek_v2.h"
#include "common/model/latent_kv_cache.h"
#include "common/model/safetensors_writer.h"
#include "common/tensor/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/hostile_model.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;

// A tensor over `bytes` (which the test owns) with the given dtype.
TensorInfo View(const std::string& dtype, const std::vector<char>& bytes, int64_t offset,
                int64_t numel) {
  TensorInfo t;
  t.name = "t";
  t.dtype_name = dtype;
  t.dtype = ParseDType(dtype);
  t.shape = {numel};
  t.data = bytes.data() + offset;
  t.num_bytes = numel * *SafetensorsElementSize(dtype);
  return t;
}

// Writes `value` as one element of `dtype` at `at`, which may be unaligned.
void WriteAs(const std::string& dtype, float value, char* at) {
  alignas(8) char element[8];
  if (dtype == "F64") {
    const double d = value;
    std::memcpy(element, &d, 8);
  } else {
    ConvertFromFloat(&value, 1, *ParseDType(dtype), element);
  }
  std::memcpy(at, element, static_cast<size_t>(*SafetensorsElementSize(dtype)));
}

// Every float dtype, NaN and both infinities, at the first element, at a
// block boundary and at the last, from an odd (unaligned) address.
TEST(WeightCheckTest, FindsNonFiniteValuesInEveryFloatDtypeAtAnyPosition) {
  constexpr int64_t kNumel = 3001;
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  for (const std::string dtype : {"BF16", "F16", "F32", "F64"}) {
    const int64_t size = *SafetensorsElementSize(dtype);
    for (const int64_t position : {int64_t{0}, int64_t{1023}, int64_t{1024}, kNumel - 1}) {
      for (const float special : specials) {
        std::vector<char> bytes(1 + kNumel * size);
        // Finite values everywhere else, including the largest finite ones
        // (all exponent bits but one set) and negative zero.
        for (int64_t i = 0; i < kNumel; ++i) {
          const float value = i % 3 == 0 ? 65504.0f : (i % 3 == 1 ? -0.0f : 1.5f);
          WriteAs(dtype, value, bytes.data() + 1 + i * size);
        }
        const TensorInfo clean = View(dtype, bytes, 1, kNumel);
        ASSERT_EQ(FindNonFinite(clean, 0, kNumel), std::nullopt) << dtype;
        WriteAs(dtype, special, bytes.data() + 1 + position * size);
        const TensorInfo poisoned = View(dtype, bytes, 1, kNumel);
        EXPECT_EQ(FindNonFinite(poisoned, 0, kNumel), position) << dtype << " " << special;
        // A range that excludes the element does not see it.
        EXPECT_EQ(FindNonFinite(poisoned, position + 1, kNumel), std::nullopt);
      }
    }
  }
  // Integer dtypes have no non-finite values, whatever their bits.
  std::vector<char> ones(64, '\xff');
  EXPECT_EQ(FindNonFinite(View("I16", ones, 0, 32), 0, 32), std::nullopt);
}

TEST(WeightCheckTest, CheapCheckCoversNormsAndRouters) {
  for (const char* name :
       {"model.layers.0.input_layernorm.weight", "model.layers.3.post_attention_layernorm.weight",
        "model.layers.0.self_attn.q_a_layernorm.weight",
        "model.layers.0.self_attn.kv_a_layernorm.weight", "model.norm.weight",
        "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias"}) {
    EXPECT_TRUE(IsCheapCheckTensor(name)) << name;
  }
  for (const char* name :
       {"model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.layers.0.self_attn.q_proj.weight"}) {
    EXPECT_FALSE(IsCheapCheckTensor(name)) << name;
  }
}

TEST(WeightCheckTest, ParsesLevelNames) {
  EXPECT_EQ(*ParseWeightCheck("off"), WeightCheck::kOff);
  EXPECT_EQ(*ParseWeightCheck("cheap"), WeightCheck::kCheap);
  EXPECT_EQ(*ParseWeightCheck("full"), WeightCheck::kFull);
  EXPECT_EQ(ParseWeightCheck("paranoid").status().message(),
            "must be off, cheap or full, not 'paranoid'");
}

// The attacks on a real model: a NaN in a router (cheap finds it), a NaN in
// the embedding (only full finds it at load) and an infinity in a norm.
TEST(WeightCheckTest, LoadRefusesNonFiniteWeightsNamingTheTensor) {
  const std::string router = testutil::CopyModel("tests/data/tiny-lite", "nan_router");
  testutil::PoisonBf16(router, "model.layers.1.mlp.gate.weight", 64 * 2 + 5);
  auto model = DeepseekV2Model::Load(router);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model.status().message(),
            "tensor 'model.layers.1.mlp.gate.weight' in " + router +
                "/model.safetensors holds a non-finite value (nan) at [2, 5]; the weights are "
                "corrupt");

  const std::string norm = testutil::CopyModel("tests/data/tiny-v2", "inf_norm");
  testutil::PoisonBf16(norm, "model.layers.0.self_attn.q_a_layernorm.weight", 3, 0xFF80);
  EXPECT_THAT(DeepseekV2Model::Load(norm).status().message(),
              HasSubstr("'model.layers.0.self_attn.q_a_layernorm.weight' in " + norm +
                        "/model.safetensors holds a non-finite value (-inf) at [3]"));

  const std::string embed = testutil::CopyModel("tests/data/tiny-lite", "nan_embed");
  testutil::PoisonBf16(embed, "model.embed_tokens.weight", 0);
  EXPECT_TRUE(DeepseekV2Model::Load(embed).ok());  // Cheap: not scanned.
  auto full = DeepseekV2Model::Load(embed, {.weight_check = WeightCheck::kFull});
  EXPECT_THAT(full.status().message(),
              HasSubstr("tensor 'model.embed_tokens.weight' in " + embed +
                        "/model.safetensors holds a non-finite value (nan) at [0, 0]"));
  // A full check limited to what a process reads skips the rest.
  EXPECT_TRUE(DeepseekV2Model::Load(embed, {.weight_check = WeightCheck::kFull,
                                            .full_check_filter =
                                                [](std::string_view name) {
                                                  return name != "model.embed_tokens.weight";
                                                }})
                  .ok());
  // Off: even the poisoned router loads.
  EXPECT_TRUE(DeepseekV2Model::Load(router, {.weight_check = WeightCheck::kOff}).ok());
}

// With the check off, the NaN reaches the first MoE router and the forward
// pass fails there, naming the layer, instead of routing on NaN.
TEST(WeightCheckTest, ForwardPassFailsAtTheRouterOnNonFiniteScores) {
  const std::string dir = testutil::CopyModel("tests/data/tiny-lite", "nan_forward");
  testutil::PoisonBf16(dir, "model.embed_tokens.weight", 7 * 64);  // Token 7's first value.
  auto model = DeepseekV2Model::Load(dir, {.weight_check = WeightCheck::kOff});
  ASSERT_TRUE(model.ok()) << model.status();
  LatentKvCache cache((*model)->config(), 8);
  std::vector<float> logits;
  const std::vector<int32_t> tokens = {5, 7, 9};
  const absl::Status status = (*model)->Forward(tokens, cache, {}, &logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  // Layer 0 is dense (first_k_dense_replace = 1); token 1's NaN reaches the
  // router of layer 1 (and, through attention, the tokens after it).
  EXPECT_THAT(status.message(), HasSubstr("layer 1: non-finite router scores for token 1"));
  EXPECT_EQ(cache.size(), 0);  // Nothing was committed.
}

}  // namespace
}  // namespace dsv2
