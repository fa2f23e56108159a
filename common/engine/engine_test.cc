#include "common/engine/engine.h"

#include <algorithm>
#include <fstream>
#include <future>
#include <limits>
#include <random>
#include <sstream>
#include <thread>

#include "common/sampling/sampler.h"
#include "common/tensor/npy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/hostile_model.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using namespace std::chrono_literals;

// Token t reads as one lowercase letter, 'a' + t % 26: enough text to test
// stop strings that span tokens without a tokenizer. Ids from `size` on are
// not in its vocabulary (a model's padded rows).
class LetterDecoder : public IncrementalTextDecoder {
 public:
  std::string Append(int32_t token) override { return std::string(1, char('a' + token % 26)); }
  std::string Finish() override { return ""; }
};
class LetterDecoderFactory : public TextDecoderFactory {
 public:
  explicit LetterDecoderFactory(int32_t size = std::numeric_limits<int32_t>::max())
      : size_(size) {}
  std::unique_ptr<IncrementalTextDecoder> NewDecoder(bool) const override {
    return std::make_unique<LetterDecoder>();
  }
  bool Decodes(int32_t id) const override { return id < size_; }

 private:
  int32_t size_;
};

struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  std::vector<TokenLogprobs> prompt_logprobs;
  bool prompt_logprobs_after_a_token = false;
  FinishReason finish = FinishReason::kError;
  Usage usage;
  std::string error;
};

Collected Collect(RequestStream& stream) {
  Collected c;
  while (true) {
    auto out = stream.Next(30s);
    EXPECT_TRUE(out.has_value()) << "stream stalled";
    if (!out) return c;
    c.tokens.insert(c.tokens.end(), out->token_ids.begin(), out->token_ids.end());
    c.text += out->text;
    c.logprobs.insert(c.logprobs.end(), out->logprobs.begin(), out->logprobs.end());
    if (!out->prompt_logprobs.empty() && !c.tokens.empty()) c.prompt_logprobs_after_a_token = true;
    c.prompt_logprobs.insert(c.prompt_logprobs.end(), out->prompt_logprobs.begin(),
                             out->prompt_logprobs.end());
    c.usage = out->usage;
    if (out->finish) {
      c.finish = *out->finish;
      c.error = std::string(out->error.message());
      return c;
    }
  }
}

nlohmann::json Golden(const std::string& dir) {
  std::ifstream in(dir + "/golden.json");
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = DeepseekV2Model::Load("tests/data/tiny-v2");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
  }
  static void TearDownTestSuite() { delete model_; }

  std::unique_ptr<Engine> MakeEngine(EngineOptions options = {}) {
    if (options.kv_cache_bytes == EngineOptions{}.kv_cache_bytes) options.kv_cache_bytes = 16 << 20;
    return std::make_unique<Engine>(model_, &letters_, options);
  }

  static GenerationRequest Greedy(std::string id, std::vector<int32_t> prompt, int64_t max_tokens) {
    GenerationRequest request;
    request.id = std::move(id);
    request.prompt = std::move(prompt);
    request.max_tokens = max_tokens;
    request.ignore_eos = true;
    return request;
  }

  Collected Run(Engine& engine, GenerationRequest request) {
    auto stream = engine.Submit(std::move(request));
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (!stream.ok()) return {};
    return Collect(**stream);
  }

  static DeepseekV2Model* model_;
  LetterDecoderFactory letters_;
};
DeepseekV2Model* EngineTest::model_ = nullptr;

TEST_F(EngineTest, GreedyOutputEqualsTheReference) {
  const nlohmann::json golden = Golden("tests/data/tiny-v2");
  const auto expected = golden["generated"].get<std::vector<int32_t>>();
  auto engine = MakeEngine();
  const Collected c = Run(*engine, Greedy("g", golden["prompt"].get<std::vector<int32_t>>(),
                                          static_cast<int64_t>(expected.size())));
  EXPECT_EQ(c.tokens, expected);
  EXPECT_EQ(c.finish, FinishReason::kLength);
  EXPECT_EQ(c.usage.prompt_tokens, 40);
  EXPECT_EQ(c.usage.completion_tokens, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(c.text.size(), expected.size());
}

// A model whose vocabulary has rows its tokenizer lacks: greedy decoding
// that would pick one picks the best decodable token instead, and is
// otherwise unchanged; logprobs stay those of the raw distribution.
TEST_F(EngineTest, RowsTheTokenizerLacksAreNeverSampled) {
  GenerationRequest request = Greedy("padded", {0, 5, 9, 14, 3, 77}, 64);
  request.logprobs = 0;
  const Collected free = Run(*MakeEngine(), request);
  ASSERT_EQ(free.tokens.size(), 64u);
  // Pretend the tokenizer ends at the largest id greedy chose: from its
  // first use on, the outputs must differ.
  const int32_t size = *std::max_element(free.tokens.begin(), free.tokens.end());
  const size_t first = std::find(free.tokens.begin(), free.tokens.end(), size) - free.tokens.begin();
  LetterDecoderFactory padded(size);
  Engine engine(model_, &padded, {.kv_cache_bytes = 16 << 20});
  const Collected masked = Run(engine, request);
  ASSERT_EQ(masked.finish, FinishReason::kLength) << masked.error;
  ASSERT_EQ(masked.tokens.size(), 64u);
  for (int32_t token : masked.tokens) EXPECT_LT(token, size);
  EXPECT_TRUE(std::equal(masked.tokens.begin(), masked.tokens.begin() + first,
                         free.tokens.begin()));
  EXPECT_NE(masked.tokens[first], size);
  // The replacement is the runner-up of the raw distribution at that step.
  EXPECT_LT(masked.logprobs[first].logprob, free.logprobs[first].logprob);
}

TEST_F(EngineTest, ConcurrentStreamsEqualTheirSoloRuns) {
  std::mt19937 rng(17);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 64; ++i) {
    std::vector<int32_t> prompt(1 + rng() % 60);
    for (int32_t& t : prompt) t = 2 + static_cast<int32_t>(rng() % 3000);
    requests.push_back(Greedy("r" + std::to_string(i), prompt, 1 + rng() % 40));
  }
  std::vector<Collected> solo;
  {
    auto engine = MakeEngine();
    for (const GenerationRequest& r : requests) solo.push_back(Run(*engine, r));
  }
  // All 64 at once, with a small step budget so prefills are chunked and
  // run beside other requests' decode steps; steps split into 1 and 3
  // concurrent micro-batches.
  for (int64_t micro_batches : {1, 3}) {
    SCOPED_TRACE(micro_batches);
    auto engine = MakeEngine(
        {.max_num_seqs = 64, .max_batch_tokens = 96, .micro_batches = micro_batches});
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const GenerationRequest& r : requests) {
      auto stream = engine->Submit(r);
      ASSERT_TRUE(stream.ok()) << stream.status();
      streams.push_back(*stream);
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      const Collected c = Collect(*streams[i]);
      EXPECT_EQ(c.tokens, solo[i].tokens) << requests[i].id;
      EXPECT_EQ(c.text, solo[i].text);
      EXPECT_EQ(c.finish, FinishReason::kLength);
    }
    EXPECT_EQ(engine->stats().kv_blocks_used, 0);
    EXPECT_EQ(engine->num_active(), 0);
  }
}

TEST_F(EngineTest, PreemptionRecomputesAndEveryRequestCompletes) {
  // 6 blocks of 16 tokens: four requests of ~80 tokens cannot all fit.
  const int64_t block_bytes = 4 * 16 * 64 * 4;  // layers × block × latent × float
  auto engine = MakeEngine({.block_size = 16, .kv_cache_bytes = 6 * block_bytes});
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> prompt(40);
    for (int j = 0; j < 40; ++j) prompt[j] = 100 + 7 * i + j;
    requests.push_back(Greedy("p" + std::to_string(i), prompt, 40));
    auto stream = engine->Submit(requests.back());
    ASSERT_TRUE(stream.ok()) << stream.status();
    streams.push_back(*stream);
  }
  std::vector<Collected> results;
  for (auto& stream : streams) {
    results.push_back(Collect(*stream));
    EXPECT_EQ(results.back().finish, FinishReason::kLength);
  }
  EXPECT_GT(engine->stats().preemptions, 0);
  // Recompute gives the same tokens as an uninterrupted run.
  auto roomy = MakeEngine();
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(results[i].tokens, Run(*roomy, requests[i]).tokens) << requests[i].id;
  }
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, AbortAndDeadlineEndRequestsAndReturnTheirBlocks) {
  auto engine = MakeEngine();
  auto long_one = engine->Submit(Greedy("long", {5, 6, 7}, 120));
  ASSERT_TRUE(long_one.ok());
  ASSERT_TRUE((*long_one)->Next(30s).has_value());  // It is running.
  EXPECT_FALSE(engine->Abort("someone else", "long")) << "only its owner may abort it";
  EXPECT_TRUE(engine->Abort("", "long"));
  EXPECT_FALSE(engine->Abort("", "nobody"));
  Collected c = Collect(**long_one);
  EXPECT_EQ(c.finish, FinishReason::kAbort);
  EXPECT_LT(c.tokens.size(), 120u);

  GenerationRequest timed = Greedy("timed", {5, 6, 7}, 120);
  timed.deadline = std::chrono::steady_clock::now() - 1ms;  // Already passed: ends at once.
  c = Run(*engine, timed);
  EXPECT_EQ(c.finish, FinishReason::kTimeLimit);
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
  EXPECT_EQ(engine->stats().finished[int(FinishReason::kAbort)], 1);
  EXPECT_EQ(engine->stats().finished[int(FinishReason::kTimeLimit)], 1);
  // The id is free again once its request ended.
  EXPECT_EQ(Run(*engine, Greedy("long", {5}, 2)).tokens.size(), 2u);
}

TEST_F(EngineTest, FullQueueIsResourceExhaustedWhileAdmittedRequestsComplete) {
  auto engine = MakeEngine({.max_num_seqs = 1, .max_waiting = 2});
  std::vector<std::shared_ptr<RequestStream>> admitted;
  int rejected = 0;
  for (int i = 0; i < 10; ++i) {
    auto stream = engine->Submit(Greedy("q" + std::to_string(i), {3, 4, 5}, 30));
    if (stream.ok()) {
      admitted.push_back(*stream);
    } else {
      EXPECT_EQ(stream.status().code(), absl::StatusCode::kResourceExhausted);
      EXPECT_THAT(stream.status().message(), HasSubstr("waiting queue is full"));
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GE(admitted.size(), 2u);
  for (auto& stream : admitted) EXPECT_EQ(Collect(*stream).tokens.size(), 30u);
}

TEST_F(EngineTest, PrefixCacheHitsKeepOutputsUnchanged) {
  std::vector<int32_t> system(90);
  for (int i = 0; i < 90; ++i) system[i] = 10 + (i * 37) % 3000;
  auto with_question = [&](int32_t q) {
    std::vector<int32_t> prompt = system;
    prompt.insert(prompt.end(), {q, q + 1, q + 2});
    return prompt;
  };
  auto uncached = MakeEngine({.block_size = 16, .prefix_caching = false});
  auto cached = MakeEngine({.block_size = 16});
  for (int32_t q : {500, 600, 700}) {
    const Collected expected = Run(*uncached, Greedy("a", with_question(q), 8));
    const Collected actual = Run(*cached, Greedy("a", with_question(q), 8));
    EXPECT_EQ(actual.tokens, expected.tokens);
    EXPECT_EQ(actual.usage.cached_tokens, q == 500 ? 0 : 80);  // 5 full blocks of 16.
  }
  EXPECT_EQ(cached->stats().prefix_hits, 160);
  EXPECT_EQ(cached->stats().prefix_queries, 3 * 93);
  EXPECT_EQ(uncached->stats().prefix_hits, 0);
}

TEST_F(EngineTest, StopStringsSpanTokensAndAreNeverStreamed) {
  auto engine = MakeEngine();
  const Collected free_run = Run(*engine, Greedy("free", {0, 9, 8, 7}, 12));
  ASSERT_EQ(free_run.text.size(), 12u);
  // Stop at the text of generated tokens 5 and 6.
  GenerationRequest request = Greedy("stop", {0, 9, 8, 7}, 12);
  request.stop = {free_run.text.substr(5, 2), "never-matches"};
  auto stream = engine->Submit(request);
  ASSERT_TRUE(stream.ok());
  std::string streamed;
  Collected c;
  while (auto out = (*stream)->Next(30s)) {
    streamed += out->text;
    // Nothing after the stop's start ever goes out.
    EXPECT_LE(streamed.size(), 5u);
    if (out->finish) {
      c.finish = *out->finish;
      c.usage = out->usage;
      break;
    }
  }
  EXPECT_EQ(c.finish, FinishReason::kStop);
  EXPECT_EQ(streamed, free_run.text.substr(0, 5));
  EXPECT_EQ(c.usage.completion_tokens, 7);
  // Asked to, the text ends with the stop string that matched (also when
  // two complete at the same token), never with what follows.
  request.id = "include";
  request.include_stop_str = true;
  request.stop = {"never-matches", free_run.text.substr(5, 3)};
  const Collected included = Run(*engine, request);
  EXPECT_EQ(included.finish, FinishReason::kStop);
  EXPECT_EQ(included.text, free_run.text.substr(0, 8));
  request.id = "include-earliest";
  request.stop = {free_run.text.substr(5, 2), free_run.text.substr(4, 3)};
  EXPECT_EQ(Run(*engine, request).text, free_run.text.substr(0, 7));
}

TEST_F(EngineTest, StopTokensMinTokensAndLogprobs) {
  auto engine = MakeEngine();
  const Collected free_run = Run(*engine, Greedy("free", {0, 4, 4}, 6));
  GenerationRequest request = Greedy("stop-id", {0, 4, 4}, 6);
  request.stop_token_ids = {free_run.tokens[1]};
  Collected c = Run(*engine, request);
  EXPECT_EQ(c.finish, FinishReason::kStop);
  EXPECT_EQ(c.tokens, std::vector<int32_t>(free_run.tokens.begin(), free_run.tokens.begin() + 2));
  // min_tokens masks the stop id until 4 tokens are out.
  request.min_tokens = 4;
  request.logprobs = 3;
  c = Run(*engine, request);
  EXPECT_GE(c.tokens.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_NE(c.tokens[i], free_run.tokens[1]);
  ASSERT_EQ(c.logprobs.size(), c.tokens.size());
  EXPECT_EQ(c.logprobs[0].top.size(), 3u);
  EXPECT_EQ(c.logprobs[0].token, c.tokens[0]);
  EXPECT_EQ(c.logprobs[0].top[0].token, c.tokens[0]);  // Greedy picks the top token.
  EXPECT_FLOAT_EQ(c.logprobs[0].logprob, c.logprobs[0].top[0].logprob);
  EXPECT_LT(c.logprobs[0].logprob, 0.0f);
}

// Every prompt token after the first gets the log-softmax of the logits
// before it: against the reference's prefill logits (tolerance 1e-3, the
// golden logits'), bit for bit whatever the prefill chunking, all before
// the first generated token; the prefix cache is not read, and the output
// is the request's without prompt logprobs.
TEST_F(EngineTest, PromptLogprobsAreTheReferencesAndComeFirst) {
  const nlohmann::json golden = Golden("tests/data/tiny-v2");
  const std::vector<int32_t> prompt = golden["prompt"].get<std::vector<int32_t>>();
  absl::StatusOr<NpyArray> reference = ReadNpy("tests/data/tiny-v2/prefill_logits.npy");
  ASSERT_TRUE(reference.ok()) << reference.status();
  const int64_t vocab = model_->config().vocab_size;
  ASSERT_EQ(reference->shape, (std::vector<int64_t>{int64_t(prompt.size()), vocab}));

  // Blocks of 16 positions, so that the plain run leaves two of the
  // prompt's in the prefix cache.
  auto engine = MakeEngine({.block_size = 16});
  const Collected plain = Run(*engine, Greedy("plain", prompt, 5));
  EXPECT_EQ(Run(*engine, Greedy("cached", prompt, 1)).usage.cached_tokens, 32);
  GenerationRequest request = Greedy("prompt-logprobs", prompt, 5);
  request.prompt_logprobs = 3;
  const Collected c = Run(*engine, request);
  EXPECT_EQ(c.tokens, plain.tokens);
  EXPECT_FALSE(c.prompt_logprobs_after_a_token);
  EXPECT_EQ(c.usage.cached_tokens, 0);
  ASSERT_EQ(c.prompt_logprobs.size(), prompt.size() - 1);
  for (size_t i = 0; i + 1 < prompt.size(); ++i) {
    const TokenLogprobs& lp = c.prompt_logprobs[i];
    const float* row = &reference->data[i * vocab];
    EXPECT_EQ(lp.token, prompt[i + 1]);
    EXPECT_NEAR(lp.logprob, Logprob(row, vocab, prompt[i + 1]), 1e-3) << i;
    ASSERT_EQ(lp.top.size(), 3u);
    const std::vector<TokenLogprob> top = TopLogprobs(row, vocab, 3);
    EXPECT_EQ(lp.top[0].token, top[0].token) << i;
    EXPECT_NEAR(lp.top[0].logprob, top[0].logprob, 1e-3) << i;
  }
  // Chunked prefill (4 tokens a step) and a batch-mate: the same bits.
  auto chunked = MakeEngine({.max_batch_tokens = 4});
  auto mate = chunked->Submit(Greedy("mate", {0, 5, 9}, 12));
  ASSERT_TRUE(mate.ok());
  const Collected again = Run(*chunked, request);
  Collect(**mate);
  EXPECT_EQ(again.tokens, c.tokens);
  ASSERT_EQ(again.prompt_logprobs.size(), c.prompt_logprobs.size());
  for (size_t i = 0; i < c.prompt_logprobs.size(); ++i) {
    EXPECT_EQ(again.prompt_logprobs[i].logprob, c.prompt_logprobs[i].logprob) << i;
    EXPECT_EQ(again.prompt_logprobs[i].top[2].token, c.prompt_logprobs[i].top[2].token) << i;
  }
  // Four 70-token prompts at once: a step computes the logits of 128 prompt
  // positions at most, so they share steps (one waits a step), each with
  // every entry, as alone.
  std::vector<int32_t> long_prompt;
  for (int i = 0; i < 70; ++i) long_prompt.push_back(prompt[i % prompt.size()] ^ (i / 40));
  GenerationRequest long_request = Greedy("alone", long_prompt, 3);
  long_request.prompt_logprobs = 1;
  const Collected alone = Run(*engine, long_request);
  ASSERT_EQ(alone.prompt_logprobs.size(), 69u);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int r = 0; r < 4; ++r) {
    long_request.id = "together" + std::to_string(r);
    auto stream = engine->Submit(long_request);
    ASSERT_TRUE(stream.ok()) << stream.status();
    streams.push_back(*stream);
  }
  for (const auto& stream : streams) {
    const Collected together = Collect(*stream);
    EXPECT_EQ(together.tokens, alone.tokens);
    ASSERT_EQ(together.prompt_logprobs.size(), 69u);
    for (size_t i = 0; i < 69; ++i) {
      EXPECT_EQ(together.prompt_logprobs[i].logprob, alone.prompt_logprobs[i].logprob) << i;
    }
  }
  // A one-token prompt has none.
  request = Greedy("one", {0}, 2);
  request.prompt_logprobs = 0;
  const Collected one = Run(*engine, request);
  EXPECT_TRUE(one.prompt_logprobs.empty());
  EXPECT_EQ(one.tokens.size(), 2u);
}

// A bias of 100 forces its token through greedy decoding and -100 keeps a
// token out; the logprobs stay those of the model (its top token first).
TEST_F(EngineTest, LogitBiasSteersSamplingButNotLogprobs) {
  auto engine = MakeEngine();
  const Collected free_run = Run(*engine, Greedy("free", {0, 4, 4}, 6));
  const int32_t forced = free_run.tokens[0] == 7 ? 8 : 7;
  GenerationRequest request = Greedy("forced", {0, 4, 4}, 6);
  request.sampling.logit_bias = {{forced, 100.0f}};
  request.logprobs = 1;
  Collected c = Run(*engine, request);
  EXPECT_EQ(c.tokens, std::vector<int32_t>(6, forced));
  ASSERT_EQ(c.logprobs.size(), 6u);
  EXPECT_EQ(c.logprobs[0].token, forced);
  EXPECT_EQ(c.logprobs[0].top[0].token, free_run.tokens[0]);
  EXPECT_LT(c.logprobs[0].logprob, c.logprobs[0].top[0].logprob);

  request = Greedy("banned", {0, 4, 4}, 6);
  request.sampling.logit_bias = {{free_run.tokens[0], -100.0f}};
  c = Run(*engine, request);
  ASSERT_EQ(c.tokens.size(), 6u);
  for (int32_t token : c.tokens) EXPECT_NE(token, free_run.tokens[0]);
  // With a sampling temperature too.
  request = Greedy("sampled", {0, 4, 4}, 6);
  request.sampling = {.temperature = 1.0f, .seed = 3, .logit_bias = {{forced, 100.0f}}};
  request.has_seed = true;
  EXPECT_EQ(Run(*engine, request).tokens, std::vector<int32_t>(6, forced));
}

TEST_F(EngineTest, SeededSamplingIsReproducible) {
  auto engine = MakeEngine();
  GenerationRequest request = Greedy("s", {0, 11, 12}, 16);
  request.sampling = {.temperature = 1.0f, .top_p = 0.9f, .top_k = 50, .repetition_penalty = 1.2f,
                      .seed = 1234};
  request.has_seed = true;
  const Collected a = Run(*engine, request);
  const Collected b = Run(*engine, request);
  EXPECT_EQ(a.tokens, b.tokens);
  request.sampling.seed = 99;
  EXPECT_NE(Run(*engine, request).tokens, a.tokens);
}

TEST_F(EngineTest, InvalidRequestsAreRejectedWithTheField) {
  auto engine = MakeEngine();
  struct Case {
    std::function<void(GenerationRequest&)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](auto& r) { r.prompt = {}; }, "prompt is empty"},
      {[](auto& r) { r.prompt = {1, 3200}; }, "prompt token id 3200 at index 1"},
      {[](auto& r) { r.prompt = {-5}; }, "prompt token id -5"},
      {[](auto& r) { r.max_tokens = 0; }, "max_tokens must be >= 1"},
      {[](auto& r) { r.max_tokens = 200; }, "exceeds the context limit of 128"},
      {[](auto& r) { r.min_tokens = 9; }, "min_tokens"},
      {[](auto& r) { r.sampling.temperature = -1; }, "temperature"},
      {[](auto& r) { r.sampling.top_p = 0; }, "top_p"},
      {[](auto& r) { r.sampling.top_k = -1; }, "top_k"},
      {[](auto& r) { r.stop_token_ids = {4000}; }, "stop token id 4000"},
      {[](auto& r) { r.sampling.logit_bias = {{3, 1.0f}, {4000, 1.0f}}; },
       "logit_bias token id 4000 is outside the vocabulary"},
      {[](auto& r) { r.sampling.logit_bias = {{3, -101.0f}}; }, "logit_bias of token id 3"},
      {[](auto& r) { r.stop = {""}; }, "stop strings"},
      {[](auto& r) { r.logprobs = 50; }, "logprobs"},
      {[](auto& r) { r.prompt_logprobs = 21; }, "prompt_logprobs must be in [0, 20], got 21"},
      {[](auto& r) { r.prompt_logprobs = -2; }, "prompt_logprobs must be in [0, 20], got -2"},
      {[](auto& r) { r.id = ""; }, "request_id"},
  };
  for (const Case& c : cases) {
    GenerationRequest request = Greedy("bad", {1, 2, 3}, 8);
    c.mutate(request);
    auto stream = engine->Submit(request);
    ASSERT_FALSE(stream.ok()) << c.message;
    EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(stream.status().message(), HasSubstr(c.message));
  }
  // Duplicate id of an active request.
  auto first = engine->Submit(Greedy("dup", {1, 2}, 100));
  ASSERT_TRUE(first.ok());
  auto second = engine->Submit(Greedy("dup", {1, 2}, 4));
  EXPECT_THAT(second.status().message(), HasSubstr("already in use"));
  // Ids are per owner: another owner may use the same one.
  GenerationRequest others = Greedy("dup", {1, 2}, 2);
  others.owner = "token:bob";
  auto third = engine->Submit(others);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(Collect(**third).tokens.size(), 2u);
  engine->Abort("", "dup");
  Collect(**first);
  // The engine still serves.
  EXPECT_EQ(Run(*engine, Greedy("ok", {1, 2, 3}, 3)).tokens.size(), 3u);
}

TEST_F(EngineTest, StopAcceptingIsUnavailable) {
  auto engine = MakeEngine();
  engine->StopAccepting();
  EXPECT_EQ(engine->Submit(Greedy("late", {1}, 2)).status().code(), absl::StatusCode::kUnavailable);
}

// Records what the engine tells its observer.
class RecordingObserver : public EngineObserver {
 public:
  void OnStep(int64_t tokens) override { step_tokens.push_back(tokens); }
  void OnFirstToken(double seconds) override { first_token.push_back(seconds); }
  void OnNextToken(double seconds) override { next_token.push_back(seconds); }
  void OnFinished(const FinishedRequest& request) override { finished.push_back(request); }

  std::vector<int64_t> step_tokens;
  std::vector<double> first_token, next_token;
  std::vector<FinishedRequest> finished;
};

// The observer sees every computed token once, one first token per request,
// a gap for each later token, and each request's end with consistent
// phases; refusals are counted by cause.
TEST_F(EngineTest, ObserverSeesEveryStepTokenAndRequest) {
  RecordingObserver observer;
  {
    auto engine = MakeEngine({.max_num_seqs = 2, .max_batch_tokens = 8, .observer = &observer});
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (int i = 0; i < 3; ++i) {
      auto stream = engine->Submit(Greedy("o" + std::to_string(i), {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 5));
      ASSERT_TRUE(stream.ok()) << stream.status();
      streams.push_back(*stream);
    }
    for (auto& stream : streams) EXPECT_EQ(Collect(*stream).tokens.size(), 5u);
    EXPECT_FALSE(engine->Submit(Greedy("bad", {}, 1)).ok());
    engine->StopAccepting();
    EXPECT_FALSE(engine->Submit(Greedy("late", {1}, 1)).ok());
    const EngineStats stats = engine->stats();
    EXPECT_EQ(stats.rejected_invalid, 1);
    EXPECT_EQ(stats.rejected_unavailable, 1);
    EXPECT_EQ(stats.rejected_queue_full, 0);
    int64_t computed = 0;
    for (int64_t t : observer.step_tokens) {
      EXPECT_LE(t, 8);
      computed += t;
    }
    // Every prompt token once (no prefix hits: blocks of 64 never fill) and
    // every generated token but the last of each request, which is sampled
    // and never fed back.
    EXPECT_EQ(computed, stats.prompt_tokens + stats.generation_tokens - 3);
  }
  EXPECT_EQ(observer.first_token.size(), 3u);
  EXPECT_EQ(observer.next_token.size(), 3u * 4u);
  ASSERT_EQ(observer.finished.size(), 3u);
  for (const FinishedRequest& r : observer.finished) {
    EXPECT_EQ(r.reason, FinishReason::kLength);
    EXPECT_EQ(r.prompt_tokens, 10);
    EXPECT_EQ(r.generation_tokens, 5);
    EXPECT_TRUE(r.scheduled);
    EXPECT_GE(r.queue_s, 0);
    EXPECT_GT(r.prefill_s, 0);
    EXPECT_GT(r.decode_s, 0);
    EXPECT_LE(r.queue_s + r.prefill_s + r.decode_s, r.e2e_s + 1e-9);
  }
}

// A failing expert computation is fatal: in-flight requests end with an
// error, health turns false, on_fatal fires once and new requests are
// refused. (The failure is real: the routed experts report an error.)
// Routed experts that fail with `status` while `failing` is set, else
// compute locally.
class FailingExperts : public RoutedExperts {
 public:
  FailingExperts(const DeepseekV2Model& model, absl::Status status)
      : local_(model.config(), model.weights(), model.backend()), status_(std::move(status)) {}

  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* weights, float* out,
                       absl::FunctionRef<void()> meanwhile) override {
    if (failing) {
      meanwhile();
      return status_;
    }
    return local_.Compute(layer, x, n, k, ids, weights, out, meanwhile);
  }

  std::atomic<bool> failing{true};

 private:
  LocalRoutedExperts local_;
  absl::Status status_;
};

TEST(EngineFatalTest, ExpertFailureIsFatalAndReported) {
  auto model = DeepseekV2Model::Load("tests/data/tiny-v2");
  ASSERT_TRUE(model.ok()) << model.status();
  (*model)->SetRoutedExperts(
      std::make_shared<FailingExperts>(**model, absl::InternalError("expert weights corrupt")));
  std::atomic<int> fatal_calls{0};
  Engine engine(model->get(), nullptr,
                {.kv_cache_bytes = 8 << 20, .on_fatal = [&](const absl::Status& status) {
                   EXPECT_THAT(status.message(), HasSubstr("expert weights corrupt"));
                   ++fatal_calls;
                 }});
  GenerationRequest request;
  request.id = "doomed";
  request.prompt = {0, 1, 2};
  auto stream = engine.Submit(request);
  ASSERT_TRUE(stream.ok());
  const Collected c = Collect(**stream);
  EXPECT_EQ(c.finish, FinishReason::kError);
  EXPECT_THAT(c.error, HasSubstr("expert weights corrupt"));
  EXPECT_EQ(fatal_calls.load(), 1);
  EXPECT_EQ(engine.Health(), absl::InternalError("engine failed: expert weights corrupt"));
  EXPECT_EQ(engine.failure(), absl::InternalError("expert weights corrupt"));
  request.id = "after";
  const absl::Status refused = engine.Submit(request).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(refused.message(), "the engine has failed and is not serving: expert weights corrupt");
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
}

// A model whose weights make the router's scores NaN (its embedding holds a
// NaN, which the default cheap check does not scan): the step fails with the
// real cause — not garbage tokens, not a data-plane error — and the engine
// keeps it as its failure for health reports.
TEST(EngineFatalTest, NonFiniteRouterScoresFailTheEngineWithTheCause) {
  const std::string dir = testutil::CopyModel("tests/data/tiny-v2", "engine_nan");
  testutil::PoisonBf16(dir, "model.embed_tokens.weight", 0);  // Token 0's first value.
  auto model = DeepseekV2Model::Load(dir, {.weight_check = WeightCheck::kOff});
  ASSERT_TRUE(model.ok()) << model.status();
  absl::Status reported;
  Engine engine(model->get(), nullptr,
                {.kv_cache_bytes = 8 << 20,
                 .on_fatal = [&](const absl::Status& status) { reported = status; }});
  EXPECT_TRUE(engine.failure().ok());
  GenerationRequest request;
  request.id = "nan";
  request.prompt = {0, 1, 2};
  auto stream = engine.Submit(request);
  ASSERT_TRUE(stream.ok());
  const Collected c = Collect(**stream);
  EXPECT_EQ(c.finish, FinishReason::kError);
  EXPECT_TRUE(c.tokens.empty());
  EXPECT_THAT(c.error, HasSubstr("layer 1: non-finite router scores for token 0"));
  EXPECT_THAT(engine.Health().message(),
              HasSubstr("engine failed: layer 1: non-finite router scores"));
  EXPECT_EQ(engine.failure().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(engine.failure().message(), HasSubstr("layer 1: non-finite router scores"));
  EXPECT_EQ(reported, engine.failure());
}

// Unreachable expert workers end the requests of the failed step with
// UNAVAILABLE; the engine stays healthy and serves the next ones exactly.
TEST(EngineFatalTest, UnreachableExpertsEndTheStepsRequestsOnly) {
  auto model = DeepseekV2Model::Load("tests/data/tiny-v2");
  ASSERT_TRUE(model.ok()) << model.status();
  GenerationRequest request;
  request.id = "reference";
  request.prompt = {0, 5, 9, 14};
  request.max_tokens = 6;
  request.ignore_eos = true;
  std::vector<int32_t> expected;
  {
    Engine engine(model->get(), nullptr, {.kv_cache_bytes = 8 << 20});
    auto stream = engine.Submit(request);
    ASSERT_TRUE(stream.ok());
    expected = Collect(**stream).tokens;
  }
  auto experts = std::make_shared<FailingExperts>(
      **model, absl::UnavailableError("expert worker 10.0.0.7 is unreachable"));
  (*model)->SetRoutedExperts(experts);
  int fatal_calls = 0;
  Engine engine(model->get(), nullptr,
                {.kv_cache_bytes = 8 << 20, .on_fatal = [&](const absl::Status&) { ++fatal_calls; }});
  request.id = "unlucky";
  auto stream = engine.Submit(request);
  ASSERT_TRUE(stream.ok());
  const Collected failed = Collect(**stream);
  EXPECT_EQ(failed.finish, FinishReason::kError);
  EXPECT_THAT(failed.error, HasSubstr("unreachable"));
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
  EXPECT_TRUE(engine.Health().ok()) << engine.Health();

  experts->failing = false;
  request.id = "lucky";
  stream = engine.Submit(request);
  ASSERT_TRUE(stream.ok());
  const Collected ok = Collect(**stream);
  EXPECT_EQ(ok.finish, FinishReason::kLength);
  EXPECT_EQ(ok.tokens, expected);
  EXPECT_EQ(fatal_calls, 0);
}

// Experts that do not answer until released: a hung data plane.
class HangingExperts : public RoutedExperts {
 public:
  explicit HangingExperts(const DeepseekV2Model& model)
      : local_(model.config(), model.weights(), model.backend()), released_(release_.get_future().share()) {}

  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* weights, float* out,
                       absl::FunctionRef<void()> meanwhile) override {
    released_.wait();
    return local_.Compute(layer, x, n, k, ids, weights, out, meanwhile);
  }
  void Release() { release_.set_value(); }

 private:
  LocalRoutedExperts local_;
  std::promise<void> release_;
  std::shared_future<void> released_;
};

// A step that does not finish makes the engine report itself stalled, with
// the figures, once the stall timeout passes; healthy again once it moves.
TEST(EngineHealthTest, AStuckStepIsReportedAsAStallWithItsFigures) {
  auto model = DeepseekV2Model::Load("tests/data/tiny-v2");
  ASSERT_TRUE(model.ok()) << model.status();
  auto experts = std::make_shared<HangingExperts>(**model);
  (*model)->SetRoutedExperts(experts);
  Engine engine(model->get(), nullptr, {.kv_cache_bytes = 8 << 20});
  EXPECT_TRUE(engine.Health(std::chrono::milliseconds(1)).ok());  // Idle is not stalled.
  GenerationRequest request;
  request.id = "stuck";
  request.prompt = {0, 5, 9};
  request.max_tokens = 2;
  auto stream = engine.Submit(request);
  ASSERT_TRUE(stream.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const absl::Status stalled = engine.Health(std::chrono::milliseconds(20));
  EXPECT_EQ(stalled.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(stalled.message()),
              MatchesRegex("engine stalled: 1 request\\(s\\) pending and no step finished for "
                           "[0-9.]+ s \\(the limit is 0.02 s\\)"));
  EXPECT_TRUE(engine.Health(std::chrono::seconds(60)).ok());
  experts->Release();
  EXPECT_EQ(Collect(**stream).finish, FinishReason::kLength);
  EXPECT_TRUE(engine.Health(std::chrono::milliseconds(1)).ok());
}

}  // namespace
}  // namespace dsv2
