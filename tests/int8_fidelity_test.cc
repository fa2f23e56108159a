// Fidelity of dsv2-int8 (docs/performance.md, "8-bit weights"): each golden
// tiny model quantized by `dsv2 quantize` against the same model in bf16,
// both run by this engine. Prefill of the golden prompt, then decode steps
// fed the bf16 model's greedy tokens. At each position the error is
// max |int8 - bf16| over the vocabulary relative to the bf16 logits' range
// (max - min) there; its median over the positions must be within
// kMaxMedianRelativeError and its worst within kMaxRelativeError, and the
// greedy tokens must agree at least kMinGreedyAgreement of the time. Both attention forms run
// (the absorbed one multiplies the query by kv_b transposed).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/deepseek_v2.h"
#include "common/model/latent_kv_cache.h"
#include "gtest/gtest.h"
#include "tests/hostile_model.h"

namespace dsv2 {
namespace {

// Measured (docs/performance.md): median position 0.9% (tiny-lite) to 2.5%
// (tiny-v2) of the range; the worst 4% on tiny-lite, but 37% to 54% on
// tiny-v2 and tiny-eps, whose random routers separate experts by as little
// as 0.001 in score: where int8 flips a token's expert choice (or group),
// that token's logits move by a different expert's whole output, and the
// KV cache carries it on. Greedy agreement 84% to 100%.
constexpr double kMaxMedianRelativeError = 0.04;
constexpr double kMaxRelativeError = 0.75;
constexpr double kMinGreedyAgreement = 0.8;
constexpr int kDecodeSteps = 24;

int32_t ArgMax(const float* logits, int64_t n) {
  return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
}

// Logits at every prompt position, then at each decode step.
struct Logits {
  std::vector<std::vector<float>> rows;
};

// The model's logits over the prompt and `steps` decode steps that feed
// `feed` (or, when it is empty, the model's own greedy tokens).
Logits RunModel(const DeepseekV2Model& model, const std::vector<int32_t>& prompt,
                const std::vector<int32_t>& feed, AttentionForm form) {
  const int64_t vocab = model.config().vocab_size;
  LatentKvCache cache(model.config(), static_cast<int64_t>(prompt.size()) + kDecodeSteps + 1);
  Logits run;
  std::vector<float> logits;
  EXPECT_TRUE(model.Forward(prompt, cache, {.attention = form, .all_logits = true}, &logits).ok());
  for (size_t i = 0; i < prompt.size(); ++i) {
    run.rows.emplace_back(logits.begin() + i * vocab, logits.begin() + (i + 1) * vocab);
  }
  for (int step = 0; step < kDecodeSteps; ++step) {
    const int32_t token = feed.empty() ? ArgMax(run.rows.back().data(), vocab) : feed[step];
    EXPECT_TRUE(model.Forward({&token, 1}, cache, {.attention = form}, &logits).ok());
    run.rows.push_back(logits);
  }
  return run;
}

class Int8FidelityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Int8FidelityTest, QuantizedLogitsFollowTheBf16Model) {
  const std::string name = GetParam().substr(GetParam().rfind('/') + 1);
  const std::string out = testing::TempDir() + "/int8_" + name + "_" + std::to_string(getpid());
  std::filesystem::remove_all(out);
  const std::string command =
      absl::StrCat(DSV2_BINARY, " quantize --model ", GetParam(), " --out ", out, " 2>/dev/null");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  auto bf16 = DeepseekV2Model::Load(GetParam());
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  auto int8 = DeepseekV2Model::Load(out);
  ASSERT_TRUE(int8.ok()) << int8.status();
  const nlohmann::json golden = testutil::ReadJsonFile(GetParam() + "/golden.json");
  const auto prompt = golden["prompt"].get<std::vector<int32_t>>();
  const int64_t vocab = (*bf16)->config().vocab_size;

  for (AttentionForm form : {AttentionForm::kDecompressed, AttentionForm::kAbsorbed}) {
    const Logits expected = RunModel(**bf16, prompt, {}, form);
    std::vector<int32_t> feed;  // The bf16 model's greedy tokens.
    for (size_t i = prompt.size() - 1; i + 1 < expected.rows.size(); ++i) {
      feed.push_back(ArgMax(expected.rows[i].data(), vocab));
    }
    const Logits actual = RunModel(**int8, prompt, feed, form);
    ASSERT_EQ(actual.rows.size(), expected.rows.size());
    std::vector<double> errors;
    int agree = 0;
    for (size_t i = 0; i < expected.rows.size(); ++i) {
      const std::vector<float>& e = expected.rows[i];
      const std::vector<float>& a = actual.rows[i];
      const auto [low, high] = std::minmax_element(e.begin(), e.end());
      double error = 0;
      for (int64_t v = 0; v < vocab; ++v) error = std::max(error, double(std::fabs(a[v] - e[v])));
      errors.push_back(error / (*high - *low));
      agree += ArgMax(a.data(), vocab) == ArgMax(e.data(), vocab);
    }
    const double agreement = double(agree) / expected.rows.size();
    std::sort(errors.begin(), errors.end());
    const double median = errors[errors.size() / 2], worst = errors.back();
    // The figures docs/performance.md records.
    std::printf(
        "%s %s: max|int8 - bf16| / range: median %.4f, worst %.4f; greedy agreement %d/%zu\n",
        name.c_str(), form == AttentionForm::kAbsorbed ? "absorbed" : "decompressed", median, worst,
        agree, expected.rows.size());
    EXPECT_LE(median, kMaxMedianRelativeError) << name;
    EXPECT_LE(worst, kMaxRelativeError) << name;
    EXPECT_GE(agreement, kMinGreedyAgreement) << name;
  }
  std::filesystem::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(GoldenModels, Int8FidelityTest,
                         ::testing::Values("tests/data/tiny-lite", "tests/data/tiny-v2",
                                           "tests/data/tiny-eps"),
                         [](const auto& info) {
                           std::string name = info.param.substr(info.param.rfind('/') + 1);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace dsv2
