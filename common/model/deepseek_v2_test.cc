// The forward pass against the reference: tiny DeepSeek-V2-shaped models
// written by tools/golden/make_golden.py with Hugging Face transformers, the
// bundled demo model (models/demo-v2, trained by tools/demo_model), and the
// float32 logits make_golden.py computed for each (docs/golden.md).
// Tolerance: max absolute logit error 1e-3 at every position and step;
// greedy tokens identical.
#include "common/model/deepseek_v2.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "common/model/latent_kv_cache.h"
#include "common/sampling/sampler.h"
#include "common/tensor/npy.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

constexpr float kLogitTolerance = 1e-3f;

struct Golden {
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;  // generated[0] from the prefill, then one per decode step.
  NpyArray prefill;                // [prompt, vocab]
  NpyArray decode;                 // [steps, vocab]: step i feeds generated[i].
};

Golden LoadGolden(const std::string& dir) {
  Golden golden;
  std::ifstream in(dir + "/golden.json");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json json = nlohmann::json::parse(text.str());
  golden.prompt = json["prompt"].get<std::vector<int32_t>>();
  golden.generated = json["generated"].get<std::vector<int32_t>>();
  auto prefill = ReadNpy(dir + "/prefill_logits.npy");
  auto decode = ReadNpy(dir + "/decode_logits.npy");
  EXPECT_TRUE(prefill.ok()) << prefill.status();
  EXPECT_TRUE(decode.ok()) << decode.status();
  golden.prefill = *std::move(prefill);
  golden.decode = *std::move(decode);
  return golden;
}

// Max absolute and max relative (to the row's largest magnitude) error.
struct Error {
  float abs = 0, rel = 0;
};
Error Compare(const float* actual, const float* expected, int64_t n) {
  Error error;
  float scale = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(expected[i]));
  for (int64_t i = 0; i < n; ++i)
    error.abs = std::max(error.abs, std::fabs(actual[i] - expected[i]));
  error.rel = error.abs / scale;
  return error;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = GetParam();
    auto model = DeepseekV2Model::Load(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    golden_ = LoadGolden(dir_);
    vocab_ = model_->config().vocab_size;
    ASSERT_EQ(golden_.prefill.shape,
              (std::vector<int64_t>{int64_t(golden_.prompt.size()), vocab_}));
    ASSERT_GE(golden_.decode.shape[0], 16);
  }

  // Prefill in chunks of `chunk` tokens, then the reference's decode steps,
  // each compared with the golden logits and its greedy token.
  void RunAndCompare(int64_t chunk, AttentionForm form) {
    LatentKvCache cache(model_->config(), 128);
    const ForwardOptions options{.attention = form, .all_logits = true};
    std::vector<float> logits;
    Error worst;
    const int64_t prompt = static_cast<int64_t>(golden_.prompt.size());
    for (int64_t begin = 0; begin < prompt; begin += chunk) {
      const int64_t n = std::min(chunk, prompt - begin);
      ASSERT_TRUE(
          model_->Forward({golden_.prompt.data() + begin, size_t(n)}, cache, options, &logits)
              .ok());
      for (int64_t i = 0; i < n; ++i) {
        const Error e =
            Compare(&logits[i * vocab_], &golden_.prefill.data[(begin + i) * vocab_], vocab_);
        ASSERT_LE(e.abs, kLogitTolerance) << "prefill position " << begin + i;
        worst.abs = std::max(worst.abs, e.abs);
        worst.rel = std::max(worst.rel, e.rel);
      }
    }
    ASSERT_EQ(ArgMax(&logits[(logits.size() / vocab_ - 1) * vocab_], vocab_), golden_.generated[0]);
    const int64_t steps = golden_.decode.shape[0];
    for (int64_t step = 0; step < steps; ++step) {
      ASSERT_TRUE(model_->Forward({&golden_.generated[step], 1}, cache, options, &logits).ok());
      const Error e = Compare(logits.data(), &golden_.decode.data[step * vocab_], vocab_);
      ASSERT_LE(e.abs, kLogitTolerance) << "decode step " << step;
      worst.abs = std::max(worst.abs, e.abs);
      worst.rel = std::max(worst.rel, e.rel);
      ASSERT_EQ(ArgMax(logits.data(), vocab_), golden_.generated[step + 1])
          << "decode step " << step;
    }
    RecordProperty("max_abs_error", std::to_string(worst.abs));
    RecordProperty("max_rel_error", std::to_string(worst.rel));
    std::cout << GetParam() << " " << cpu::KernelIsa() << " chunk=" << chunk
              << " form=" << int(form) << ": max abs logit error " << worst.abs << ", max relative "
              << worst.rel << "\n";
  }

  std::string dir_;
  std::unique_ptr<DeepseekV2Model> model_;
  Golden golden_;
  int64_t vocab_ = 0;
};

TEST_P(GoldenTest, PrefillThenDecodeMatchesReference) {
  // Whole-prompt prefill (decompressed form), decode steps (absorbed form).
  ASSERT_FALSE(model_->PrefersAbsorbed(golden_.prompt.size(), golden_.prompt.size()));
  ASSERT_TRUE(model_->PrefersAbsorbed(1, golden_.prompt.size() + 1));
  RunAndCompare(golden_.prompt.size(), AttentionForm::kAuto);
}

TEST_P(GoldenTest, ChunkedPrefillMatchesReference) { RunAndCompare(7, AttentionForm::kAuto); }

TEST_P(GoldenTest, EveryInstructionSetMatchesReference) {
  // The other tests run on the default kernels (the widest the CPU has).
  for (const std::string& isa : cpu::KernelIsas()) {
    SCOPED_TRACE(isa);
    cpu::ScopedKernelIsa scope(isa);
    RunAndCompare(golden_.prompt.size(), AttentionForm::kAuto);
  }
}

TEST_P(GoldenTest, EveryStepAbsorbedMatchesReference) {
  RunAndCompare(golden_.prompt.size(), AttentionForm::kAbsorbed);
}

TEST_P(GoldenTest, EveryStepDecompressedMatchesReference) {
  RunAndCompare(5, AttentionForm::kDecompressed);
}

TEST_P(GoldenTest, GreedyGenerationReproducesReferenceTokens) {
  // Free-running: each step feeds the engine's own choice.
  LatentKvCache cache(model_->config(), 128);
  std::vector<float> logits;
  ASSERT_TRUE(model_->Forward(golden_.prompt, cache, {}, &logits).ok());
  int32_t token = ArgMax(logits.data(), vocab_);
  for (size_t step = 0; step < golden_.generated.size(); ++step) {
    ASSERT_EQ(token, golden_.generated[step]) << "step " << step;
    ASSERT_TRUE(model_->Forward({&token, 1}, cache, {}, &logits).ok());
    token = ArgMax(logits.data(), vocab_);
  }
}

// tiny-eps has rms_norm_eps 1e-5 and activations small enough for it to
// matter: q_a_layernorm and kv_a_layernorm must use 1e-6 (as the reference
// does), the other norms rms_norm_eps (golden.json "eps_effect" says by how
// much the logits move otherwise).
INSTANTIATE_TEST_SUITE_P(GoldenModels, GoldenTest,
                         ::testing::Values("tests/data/tiny-v2", "tests/data/tiny-lite",
                                           "tests/data/tiny-eps", "models/demo-v2"),
                         [](const auto& info) {
                           std::string name = info.param.substr(info.param.rfind('/') + 1);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(DeepseekV2ModelTest, RejectsBadTokensAndFullCacheWithoutChangingIt) {
  auto model = DeepseekV2Model::Load("tests/data/tiny-lite");
  ASSERT_TRUE(model.ok()) << model.status();
  LatentKvCache cache((*model)->config(), 4);
  std::vector<float> logits;
  const std::vector<int32_t> bad = {5, 3200};
  absl::Status status = (*model)->Forward(bad, cache, {}, &logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("token id 3200 at index 1"), std::string::npos) << status;
  const std::vector<int32_t> negative = {-1};
  EXPECT_EQ((*model)->Forward(negative, cache, {}, &logits).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->Forward({}, cache, {}, &logits).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> five = {1, 2, 3, 4, 5};
  EXPECT_EQ((*model)->Forward(five, cache, {}, &logits).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache.size(), 0);
  // A cache in another backend's memory (on a GPU model: a host cache the
  // kernels cannot read) is refused, as is a batch holding one.
  const std::unique_ptr<Backend> other = NewCpuBackend();
  LatentKvCache foreign((*model)->config(), 4, *other);
  const std::vector<int32_t> one = {1};
  status = (*model)->Forward(one, foreign, {}, &logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("the KV cache of chunk 0 is not in the memory of the model's "
                                  "backend (cpu)"),
            std::string::npos)
      << status;
  const SequenceChunk mixed[] = {{one, &cache}, {one, &foreign}};
  status = (*model)->ForwardBatch(mixed, &logits);
  EXPECT_NE(status.message().find("chunk 1 is not in the memory"), std::string::npos) << status;
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(foreign.size(), 0);
  // One sequence twice in a step would write its new positions twice.
  LatentKvCache second((*model)->config(), 4, (*model)->backend());
  const SequenceChunk twice[] = {{one, &cache}, {one, &second}, {one, &cache}};
  status = (*model)->ForwardBatch(twice, &logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("chunks 0 and 2 share a KV cache"), std::string::npos) << status;
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(second.size(), 0);
  const std::vector<int32_t> four = {1, 2, 3, 4};
  EXPECT_TRUE((*model)->Forward(four, cache, {}, &logits).ok());
  EXPECT_EQ(cache.size(), 4);
  EXPECT_EQ(logits.size(), 3200u);  // Last position only by default.
}

TEST(DeepseekV2ModelTest, LoadNamesTheProblem) {
  auto missing = DeepseekV2Model::Load("/nonexistent-model-dir");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace dsv2

namespace dsv2 {
namespace {

// Batching must not change a sequence's numbers: run three sequences of
// different lengths together (prefill chunks and decode steps mixed in one
// batch) and compare bitwise with each run alone.
TEST(DeepseekV2BatchTest, BatchedStepsEqualSoloRunsBitwise) {
  for (const std::string model_dir : {"tests/data/tiny-v2", "tests/data/tiny-lite"}) {
    auto model = DeepseekV2Model::Load(model_dir);
    ASSERT_TRUE(model.ok()) << model.status();
    const int64_t vocab = (*model)->config().vocab_size;
    const std::vector<std::vector<int32_t>> prompts = {
        {0, 5, 17, 900, 33, 2047, 1, 64, 65, 66, 3000, 12},
        {0, 9},
        {0, 400, 401, 402, 403, 404, 405}};
    const int steps = 6;
    // Solo: prefill then greedy decode, logits of every step recorded.
    std::vector<std::vector<std::vector<float>>> solo(prompts.size());
    for (size_t s = 0; s < prompts.size(); ++s) {
      LatentKvCache cache((*model)->config(), 64);
      std::vector<float> logits;
      ASSERT_TRUE(
          (*model)
              ->Forward(prompts[s], cache, {.attention = AttentionForm::kDecompressed}, &logits)
              .ok());
      solo[s].push_back(logits);
      for (int step = 0; step < steps; ++step) {
        const int32_t token = ArgMax(logits.data(), vocab);
        ASSERT_TRUE(
            (*model)
                ->Forward({&token, 1}, cache, {.attention = AttentionForm::kAbsorbed}, &logits)
                .ok());
        solo[s].push_back(logits);
      }
    }
    // Batched: sequence s joins at step s (continuous batching), so prefill
    // chunks run beside other sequences' decode steps.
    std::vector<std::unique_ptr<LatentKvCache>> caches;
    std::vector<int32_t> next(prompts.size());
    std::vector<int> done(prompts.size(), -1);  // Steps recorded so far, -1 before prefill.
    for (size_t s = 0; s < prompts.size(); ++s) {
      caches.push_back(std::make_unique<LatentKvCache>((*model)->config(), 64));
    }
    for (size_t round = 0; round < prompts.size() + steps; ++round) {
      std::vector<SequenceChunk> chunks;
      std::vector<size_t> members;
      for (size_t s = 0; s < prompts.size(); ++s) {
        if (round < s || done[s] >= steps) continue;
        if (done[s] < 0) {
          chunks.push_back({prompts[s], caches[s].get(), AttentionForm::kDecompressed});
        } else {
          chunks.push_back({{&next[s], 1}, caches[s].get(), AttentionForm::kAbsorbed});
        }
        members.push_back(s);
      }
      if (chunks.empty()) continue;
      std::vector<float> logits;
      ASSERT_TRUE((*model)->ForwardBatch(chunks, &logits).ok());
      for (size_t m = 0; m < members.size(); ++m) {
        const size_t s = members[m];
        const std::vector<float> row(logits.begin() + m * vocab, logits.begin() + (m + 1) * vocab);
        ++done[s];
        ASSERT_EQ(row, solo[s][done[s]]) << model_dir << " sequence " << s << " step " << done[s];
        next[s] = ArgMax(row.data(), vocab);
      }
    }
  }
}

}  // namespace
}  // namespace dsv2
