// The public API over real gRPC on a loopback port chosen by the OS, served
// in this process so the tests can read the engine's stats.
#include <algorithm>
#include <filesystem>
#include <future>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "common/base/mutex.h"
#include "common/base/test_util.h"
#include "common/engine/engine.h"
#include "common/model/deepseek_v2.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "common/rpc/access.h"
#include "grpcpp/generic/generic_stub.h"
#include "server/api/api_limits.h"
#include "server/grpc/generation_service.h"
#include "server/api/text_frontend.h"
#include "tests/generation_test_util.h"

namespace dsv2 {
namespace {

using testutil::Greedy;
using testutil::ReadStream;
using testutil::StreamResult;

using ::testing::HasSubstr;
using namespace std::chrono_literals;

class ServerFixture {
 public:
  ServerFixture(const std::string& model_dir, EngineOptions options,
                GenerationServiceOptions service_options = {}) {
    auto model = DeepseekV2Model::Load(model_dir);
    EXPECT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    auto text = TextFrontend::LoadIfPresent(model_dir);
    EXPECT_TRUE(text.ok()) << text.status();
    text_ = *std::move(text);
    engine_ = std::make_unique<Engine>(model_.get(), text_.get(), options);
    service_ = std::make_unique<GenerationService>(engine_.get(), text_.get(), model_dir,
                                                   std::move(service_options));
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    EXPECT_NE(port_, 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel_);
  }
  ~ServerFixture() {
    server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  v1::Generation::Stub& stub() { return *stub_; }
  const std::shared_ptr<grpc::Channel>& channel() { return channel_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  GenerationService& service() { return *service_; }
  DeepseekV2Model& model() { return *model_; }
  const TextFrontend& text() { return *text_; }
  Engine& engine() { return *engine_; }

  StreamResult Generate(const v1::GenerateRequest& request,
                        std::chrono::milliseconds timeout = 60s) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + timeout);
    return Read(context, request);
  }

  StreamResult Read(grpc::ClientContext& context, const v1::GenerateRequest& request) {
    auto reader = stub_->Generate(&context, request);
    return ReadStream(*reader);
  }

 private:
  std::unique_ptr<DeepseekV2Model> model_;
  std::unique_ptr<TextFrontend> text_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

nlohmann::json Golden(const std::string& model_dir) {
  std::ifstream in(model_dir + "/golden.json");
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

EngineOptions SmallEngine() { return {.kv_cache_bytes = 32 << 20}; }

class GoldenServerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenServerTest, GreedyOutputEqualsTheReference) {
  ServerFixture server(GetParam(), SmallEngine());
  const nlohmann::json golden = Golden(GetParam());
  const auto expected = golden["generated"].get<std::vector<int32_t>>();
  const StreamResult r = server.Generate(
      Greedy("g", golden["prompt"].get<std::vector<int32_t>>(), expected.size()));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens, expected);
  EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.usage.prompt_tokens(), 40u);
  EXPECT_EQ(r.usage.completion_tokens(), expected.size());
  EXPECT_GE(r.chunks, 1);
}

INSTANTIATE_TEST_SUITE_P(GoldenModels, GoldenServerTest,
                         ::testing::Values("tests/data/tiny-v2", "tests/data/tiny-lite", "models/demo-v2"),
                         [](const auto& info) {
                           std::string name = info.param.substr(info.param.rfind('/') + 1);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(GenerationServerTest, SixtyFourConcurrentStreamsEqualTheirSoloRuns) {
  ServerFixture server("tests/data/tiny-v2", {.kv_cache_bytes = 32 << 20, .max_batch_tokens = 256});
  std::mt19937 rng(5);
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 64; ++i) {
    std::vector<int32_t> prompt(1 + rng() % 50);
    for (int32_t& t : prompt) t = 2 + static_cast<int32_t>(rng() % 3000);
    requests.push_back(Greedy("c" + std::to_string(i), prompt, 1 + rng() % 40));
  }
  std::vector<StreamResult> solo;
  for (const auto& request : requests) solo.push_back(server.Generate(request));
  std::vector<StreamResult> concurrent(requests.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i) {
    clients.emplace_back([&, i] { concurrent[i] = server.Generate(requests[i]); });
  }
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(concurrent[i].status.ok()) << concurrent[i].status.error_message();
    EXPECT_EQ(concurrent[i].tokens, solo[i].tokens) << requests[i].request_id();
    EXPECT_EQ(concurrent[i].tokens.size(), requests[i].stopping().max_tokens());
  }
  EXPECT_EQ(server.engine().stats().kv_blocks_used, 0);
}

// Waits until the engine has no active request (the step thread finishes
// cancelled requests asynchronously).
// Polls `condition` every 10 ms until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 10s) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

void WaitIdle(Engine& engine) {
  for (int i = 0; i < 500 && engine.num_active() > 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(engine.num_active(), 0);
}

TEST(GenerationServerTest, CancellationAndAbortReturnEveryBlock) {
  ServerFixture server("tests/data/tiny-v2", SmallEngine());
  // Sixteen long requests at once; each client cancels its call after its
  // first chunk, or aborts it through the Abort RPC. However far each got,
  // every block must come back.
  constexpr int kClients = 16;
  std::vector<grpc::StatusCode> codes(kClients);
  std::vector<v1::FinishReason> finishes(kClients, v1::FINISH_REASON_UNSPECIFIED);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      const std::string id = "x" + std::to_string(i);
      grpc::ClientContext context;
      auto reader = server.stub().Generate(&context, Greedy(id, {0, 5, 6, 7}, 120));
      v1::GenerateResponse response;
      if (!reader->Read(&response)) return;
      if (i % 2 == 0) {
        context.TryCancel();
      } else {
        grpc::ClientContext abort_context;
        v1::AbortRequest abort;
        abort.set_request_id(id);
        v1::AbortResponse abort_response;
        server.stub().Abort(&abort_context, abort, &abort_response);  // NOT_FOUND if it ended.
      }
      while (reader->Read(&response)) {
        if (response.has_complete()) finishes[i] = response.complete().finish_reason();
      }
      codes[i] = reader->Finish().error_code();
    });
  }
  for (auto& t : clients) t.join();
  WaitIdle(server.engine());
  EXPECT_EQ(server.engine().stats().kv_blocks_used, 0);
  EXPECT_GT(server.engine().stats().finished[int(FinishReason::kAbort)], 0);
  for (int i = 0; i < kClients; ++i) {
    if (i % 2 == 0) {
      EXPECT_TRUE(codes[i] == grpc::StatusCode::CANCELLED || codes[i] == grpc::StatusCode::OK);
    } else {
      EXPECT_EQ(codes[i], grpc::StatusCode::OK);
      EXPECT_TRUE(finishes[i] == v1::FINISH_REASON_ABORT || finishes[i] == v1::FINISH_REASON_LENGTH);
    }
  }
  // Aborting an unknown request is NOT_FOUND.
  grpc::ClientContext unknown_context;
  v1::AbortRequest unknown;
  unknown.set_request_id("nobody");
  v1::AbortResponse unknown_response;
  EXPECT_EQ(server.stub().Abort(&unknown_context, unknown, &unknown_response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// The model's own experts, behind a gate the test opens: while it is shut
// the engine's step waits inside the MoE layer, so the queue stays full
// for as long as the test needs, whatever the machine's speed.
class GatedExperts : public RoutedExperts {
 public:
  explicit GatedExperts(const DeepseekV2Model& model)
      : local_(model.config(), model.weights(), model.backend()) {}
  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* weights, float* out,
                       absl::FunctionRef<void()> meanwhile) override {
    {
      MutexLock lock(&mutex_);
      entered_ = true;
      mutex_.Await(absl::Condition(&open_));
    }
    return local_.Compute(layer, x, n, k, ids, weights, out, meanwhile);
  }
  void WaitEntered() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(&entered_));
  }
  void Open() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    open_ = true;
  }

 private:
  LocalRoutedExperts local_;
  Mutex mutex_;
  bool entered_ ABSL_GUARDED_BY(mutex_) = false;
  bool open_ ABSL_GUARDED_BY(mutex_) = false;
};

TEST(GenerationServerTest, DeadlineEndsWithTimeLimit) {
  // One request runs at a time: the first is held at the gate while the one
  // with a 2 s deadline waits behind it. The service ends a request 200 ms
  // before its call's deadline, so that the client still receives the final
  // message; the gate opens 100 ms after that point (1.9 s), and the waiting
  // request then ends with TIME_LIMIT, whatever the machine's speed (with
  // 100 ms to spare on either side).
  ServerFixture server("tests/data/tiny-v2",
                       {.kv_cache_bytes = 32 << 20, .max_num_seqs = 1, .prefix_caching = false});
  auto gate = std::make_shared<GatedExperts>(server.model());
  server.model().SetRoutedExperts(gate);
  const std::unique_ptr<GatedExperts, void (*)(GatedExperts*)> open_on_exit(
      gate.get(), [](GatedExperts* g) { g->Open(); });
  GenerationRequest held;
  held.id = "held";
  held.prompt = {0, 1, 2};
  held.max_tokens = 8;
  held.ignore_eos = true;
  auto held_stream = server.engine().Submit(held);
  ASSERT_TRUE(held_stream.ok()) << held_stream.status();
  gate->WaitEntered();
  const auto call_start = std::chrono::steady_clock::now();
  std::thread opener([&] {
    std::this_thread::sleep_until(call_start + 1900ms);
    gate->Open();
  });
  const StreamResult r = server.Generate(Greedy("late", {0, 1, 2}, 120), 2s);
  opener.join();
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finish, v1::FINISH_REASON_TIME_LIMIT);
  EXPECT_TRUE(r.tokens.empty());
  size_t held_tokens = 0;
  while (auto out = (*held_stream)->Next(30s)) {
    held_tokens += out->token_ids.size();
    if (out->finish) break;
  }
  EXPECT_EQ(held_tokens, 8u);
  WaitIdle(server.engine());
  EXPECT_EQ(server.engine().stats().kv_blocks_used, 0);
  EXPECT_EQ(server.engine().stats().finished[int(FinishReason::kTimeLimit)], 1);
}

TEST(GenerationServerTest, OverloadIsResourceExhaustedWhileAdmittedRequestsComplete) {
  // One request runs (held at the gate) and two wait: the queue is full, and
  // the call made meanwhile is refused; the admitted requests then complete.
  ServerFixture server("tests/data/tiny-v2",
                       {.kv_cache_bytes = 32 << 20, .max_num_seqs = 1, .max_waiting = 2});
  auto gate = std::make_shared<GatedExperts>(server.model());
  server.model().SetRoutedExperts(gate);
  // Opened on every exit, so a failed assertion cannot leave the engine stuck.
  const std::unique_ptr<GatedExperts, void (*)(GatedExperts*)> open_on_exit(gate.get(),
                                                                           [](GatedExperts* g) { g->Open(); });
  std::vector<std::shared_ptr<RequestStream>> admitted;
  for (int i = 0; i < 3; ++i) {
    GenerationRequest request;
    request.id = "held" + std::to_string(i);
    request.prompt = {0, 3, 4};
    request.max_tokens = 60;
    request.ignore_eos = true;
    auto stream = server.engine().Submit(request);
    ASSERT_TRUE(stream.ok()) << stream.status();
    admitted.push_back(*stream);
    if (i == 0) gate->WaitEntered();  // Running before the others queue behind it.
  }
  const StreamResult refused = server.Generate(Greedy("over", {0, 3, 4}, 60));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("waiting queue is full"));
  gate->Open();
  for (auto& stream : admitted) {
    size_t tokens = 0;
    while (auto out = stream->Next(30s)) {
      tokens += out->token_ids.size();
      if (out->finish) {
        EXPECT_EQ(*out->finish, FinishReason::kLength);
        break;
      }
    }
    EXPECT_EQ(tokens, 60u);
  }
  // Served again once the queue drained.
  const StreamResult later = server.Generate(Greedy("later", {0, 3, 4}, 8));
  EXPECT_TRUE(later.status.ok()) << later.status.error_message();
  EXPECT_EQ(later.tokens.size(), 8u);
}

TEST(GenerationServerTest, InvalidInputIsRejectedAndTheServerServesOn) {
  ServerFixture server("tests/data/tiny-v2", SmallEngine());
  struct Case {
    std::string name;
    std::function<void(v1::GenerateRequest&)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"id outside vocabulary", [](auto& r) { r.mutable_token_ids()->set_ids(1, 3200); },
       "token id 3200 at index 1 is outside the vocabulary"},
      {"negative id", [](auto& r) { r.mutable_token_ids()->set_ids(0, -7); }, "token id -7"},
      {"empty ids", [](auto& r) { r.mutable_token_ids()->clear_ids(); }, "token_ids.ids is empty"},
      {"empty text", [](auto& r) { r.set_text(""); }, "text is empty"},
      {"no input", [](auto& r) { r.clear_input(); }, "input is required"},
      {"beyond context", [](auto& r) { r.mutable_stopping()->set_max_tokens(500); },
       "exceeds the context limit of 128"},
      {"zero max_tokens", [](auto& r) { r.mutable_stopping()->set_max_tokens(0); }, "max_tokens"},
      {"temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); }, "temperature"},
      {"top_p zero", [](auto& r) { r.mutable_sampling()->set_top_p(0); }, "top_p"},
      {"top_p above one", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, "top_p"},
      {"top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-3); }, "top_k"},
      {"min_p", [](auto& r) { r.mutable_sampling()->set_min_p(2); }, "min_p"},
      {"repetition", [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0); }, "repetition_penalty"},
      {"logprobs", [](auto& r) { r.set_logprobs(-1); }, "logprobs"},
      {"too many logprobs", [](auto& r) { r.set_logprobs(21); }, "logprobs"},
      {"prompt logprobs", [](auto& r) { r.set_prompt_logprobs(21); },
       "prompt_logprobs must be in [0, 20], got 21"},
      {"negative prompt logprobs", [](auto& r) { r.set_prompt_logprobs(-1); },
       "prompt_logprobs must be in [0, 20], got -1"},
      {"no id", [](auto& r) { r.clear_request_id(); }, "request_id is required"},
      {"stop id", [](auto& r) { r.mutable_stopping()->add_stop_token_ids(99999); }, "stop token id 99999"},
      {"oversize text", [](auto& r) { r.set_text(std::string(kMaxInputBytes + 1, 'a')); }, "text is"},
      {"unknown role", [](auto& r) {
         auto* m = r.mutable_chat()->add_messages();
         m->set_role("wizard");
         m->set_content("hi");
       }, "wizard"},
      {"empty conversation", [](auto& r) { r.mutable_chat(); }, "chat.messages is empty"},
      {"many messages", [](auto& r) {
         for (int i = 0; i <= kMaxChatMessages; ++i) r.mutable_chat()->add_messages()->set_role("user");
       }, "chat.messages has 4097 messages; at most 4096"},
      {"long role", [](auto& r) {
         r.mutable_chat()->add_messages()->set_role(std::string(65, 'r'));
       }, "chat.messages[0].role is 65 bytes; at most 64"},
      {"long request id", [](auto& r) { r.set_request_id(std::string(257, 'i')); },
       "request_id is 257 bytes; at most 256"},
      {"many stop strings", [](auto& r) {
         for (int i = 0; i < 17; ++i) r.mutable_stopping()->add_stop("s");
       }, "stopping.stop has 17 strings; at most 16"},
      {"long stop string", [](auto& r) { r.mutable_stopping()->add_stop(std::string(257, 's')); },
       "stopping.stop[0] is 257 bytes; 1 to 256"},
      {"empty stop string", [](auto& r) { r.mutable_stopping()->add_stop(""); },
       "stopping.stop[0] is 0 bytes"},
      {"many stop ids", [](auto& r) {
         for (int i = 0; i < 1025; ++i) r.mutable_stopping()->add_stop_token_ids(1);
       }, "stopping.stop_token_ids has 1025 ids; at most 1024"},
      {"min_tokens", [](auto& r) { r.mutable_stopping()->set_min_tokens(50); }, "min_tokens"},
      {"bias id", [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[99999] = 1; },
       "logit_bias token id 99999 is outside the vocabulary"},
      {"negative bias id", [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[-2] = 1; },
       "logit_bias token id -2"},
      {"large bias", [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[3] = 100.5f; },
       "logit_bias of token id 3 must be in [-100, 100]"},
      {"NaN bias",
       [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[3] = std::nanf(""); },
       "logit_bias of token id 3"},
      {"many biases", [](auto& r) {
         for (int i = 0; i < 1025; ++i) (*r.mutable_sampling()->mutable_logit_bias())[i] = 1;
       }, "sampling.logit_bias has 1025 entries; at most 1024"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest request = Greedy("bad", {0, 1, 2}, 8);
    c.mutate(request);
    const StreamResult r = server.Generate(request);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.message)) << c.name;
    EXPECT_TRUE(r.tokens.empty()) << c.name;
  }
  // A duplicate id while the first request is active.
  grpc::ClientContext context;
  auto reader = server.stub().Generate(&context, Greedy("dup", {0, 1}, 100));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  const StreamResult dup = server.Generate(Greedy("dup", {0, 1}, 4));
  EXPECT_EQ(dup.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(dup.status.error_message(), HasSubstr("already in use"));
  context.TryCancel();
  while (reader->Read(&response)) {}
  reader->Finish();
  // Still serving.
  const StreamResult ok = server.Generate(Greedy("fine", {0, 1, 2}, 5));
  EXPECT_TRUE(ok.status.ok());
  EXPECT_EQ(ok.tokens.size(), 5u);
}

TEST(GenerationServerTest, PrefixCacheHitsOnASharedSystemPromptKeepOutputs) {
  ServerFixture uncached("tests/data/tiny-v2",
                         {.block_size = 16, .kv_cache_bytes = 32 << 20, .prefix_caching = false});
  ServerFixture cached("tests/data/tiny-v2", {.block_size = 16, .kv_cache_bytes = 32 << 20});
  std::vector<int32_t> system(70);
  for (int i = 0; i < 70; ++i) system[i] = 20 + (i * 53) % 3000;
  for (int32_t question : {100, 200, 300, 400}) {
    std::vector<int32_t> prompt = system;
    prompt.insert(prompt.end(), {question, question + 7});
    const StreamResult expected = uncached.Generate(Greedy("q", prompt, 12));
    const StreamResult actual = cached.Generate(Greedy("q", prompt, 12));
    EXPECT_EQ(actual.tokens, expected.tokens);
    EXPECT_EQ(actual.usage.cached_tokens(), question == 100 ? 0u : 64u);
  }
  EXPECT_EQ(cached.engine().stats().prefix_hits, 3 * 64);
}

TEST(GenerationServerTest, ModelInfoAndSeededSampling) {
  ServerFixture server("tests/data/tiny-lite", SmallEngine());
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(server.stub().GetModelInfo(&context, {}, &info).ok());
  EXPECT_EQ(info.vocab_size(), 3200u);
  EXPECT_EQ(info.max_model_len(), 128u);
  EXPECT_EQ(info.num_hidden_layers(), 3u);
  EXPECT_TRUE(info.has_tokenizer());
  v1::GenerateRequest request = Greedy("s", {0, 8, 9}, 20);
  request.mutable_sampling()->set_temperature(0.9f);
  request.mutable_sampling()->set_top_p(0.95f);
  request.mutable_sampling()->set_seed(77);
  request.set_logprobs(2);
  const StreamResult a = server.Generate(request);
  const StreamResult b = server.Generate(request);
  ASSERT_TRUE(a.status.ok());
  EXPECT_EQ(a.tokens, b.tokens);
}

TEST(GenerationServerTest, TextAndChatInputStreamTheTokenizersText) {
  ServerFixture server("tests/data/tiny-v2", SmallEngine());
  // Tokenize gives the ids a text request is served with.
  grpc::ClientContext tokenize_context;
  v1::TokenizeRequest tokenize;
  tokenize.set_text("The quick brown fox jumps over the lazy dog.");
  v1::TokenizeResponse ids;
  ASSERT_TRUE(server.stub().Tokenize(&tokenize_context, tokenize, &ids).ok());
  const std::vector<int32_t> prompt(ids.token_ids().begin(), ids.token_ids().end());
  ASSERT_GT(prompt.size(), 3u);
  EXPECT_EQ(prompt[0], 0);  // BOS.

  v1::GenerateRequest by_text = Greedy("t", {}, 24);
  by_text.set_text(tokenize.text());
  const StreamResult text_result = server.Generate(by_text);
  ASSERT_TRUE(text_result.status.ok()) << text_result.status.error_message();
  const StreamResult ids_result = server.Generate(Greedy("i", prompt, 24));
  EXPECT_EQ(text_result.tokens, ids_result.tokens);
  EXPECT_EQ(text_result.usage.prompt_tokens(), prompt.size());
  // The streamed text is the detokenized output.
  EXPECT_EQ(text_result.text, server.text().tokenizer().tokenizer().Decode(text_result.tokens, true));
  EXPECT_FALSE(text_result.text.empty());

  // Chat goes through the template and ends with the generation prompt.
  v1::GenerateRequest chat = Greedy("c", {}, 8);
  auto* system = chat.mutable_chat()->add_messages();
  system->set_role("system");
  system->set_content("Be brief.");
  auto* user = chat.mutable_chat()->add_messages();
  user->set_role("user");
  user->set_content("Hi there");
  const StreamResult chat_result = server.Generate(chat);
  ASSERT_TRUE(chat_result.status.ok()) << chat_result.status.error_message();
  auto expected_prompt = server.text().EncodeChat({{"system", "Be brief."}, {"user", "Hi there"}});
  ASSERT_TRUE(expected_prompt.ok());
  EXPECT_EQ(chat_result.usage.prompt_tokens(), expected_prompt->size());
  EXPECT_EQ(chat_result.tokens, server.Generate(Greedy("c2", *expected_prompt, 8)).tokens);
}

TEST(GenerationServerTest, StopStringsEndTheTextBeforeThem) {
  ServerFixture server("tests/data/tiny-v2", SmallEngine());
  v1::GenerateRequest request = Greedy("free", {}, 40);
  request.set_text("Once upon a time");
  const StreamResult free_run = server.Generate(request);
  ASSERT_TRUE(free_run.status.ok());
  ASSERT_GE(free_run.text.size(), 12u) << free_run.text;
  // A stop string of two ASCII characters from the middle of the text.
  size_t start = free_run.text.size() / 3;
  while (start + 1 < free_run.text.size() &&
         (static_cast<unsigned char>(free_run.text[start]) >= 0x80 ||
          static_cast<unsigned char>(free_run.text[start + 1]) >= 0x80)) {
    ++start;
  }
  ASSERT_LT(start + 1, free_run.text.size()) << "no ASCII pair in: " << free_run.text;
  const std::string stop = free_run.text.substr(start, 2);
  start = free_run.text.find(stop);
  request.set_request_id("stopped");
  request.mutable_stopping()->add_stop(stop);
  const StreamResult stopped = server.Generate(request);
  ASSERT_TRUE(stopped.status.ok());
  EXPECT_EQ(stopped.finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.text, free_run.text.substr(0, start));
  EXPECT_EQ(stopped.text.find(stop), std::string::npos);
  // include_stop_str_in_output: up to the end of the stop string.
  request.set_request_id("included");
  request.mutable_stopping()->set_include_stop_str_in_output(true);
  const StreamResult included = server.Generate(request);
  ASSERT_TRUE(included.status.ok());
  EXPECT_EQ(included.finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(included.text, free_run.text.substr(0, start + 2));
}

// ---------------------------------------------------------------------------
// Hostile clients

// The bytes of `message` with the first occurrence of `marker` replaced by
// bytes of the same length that are not UTF-8.
template <typename Message>
std::string WithInvalidUtf8(const Message& message, const std::string& marker) {
  std::string bytes = message.SerializeAsString();
  const size_t at = bytes.find(marker);
  EXPECT_NE(at, std::string::npos) << marker;
  bytes.replace(at, marker.size(), std::string("\xff\xfe") + std::string(marker.size() - 2, 'x'));
  return bytes;
}

TEST(GenerationServerTest, MalformedMessagesAndInvalidUtf8AreNamedInvalidArgument) {
  ServerFixture server("tests/data/tiny-v2", SmallEngine());
  grpc::GenericStub stub(server.channel());
  auto call = [&](const std::string& method, const std::string& bytes) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                   [&](grpc::Status status) { done.set_value(status); });
    return done.get_future().get();
  };
  // A server-streaming method called as unary: the first (only) response
  // would be read, but a refused request ends with its status at once.
  const std::string generate = "/dsv2.v1.Generation/Generate";

  v1::GenerateRequest request = Greedy("MARKER_ID", {}, 4);
  request.set_text("MARKER_TEXT");
  request.mutable_stopping()->add_stop("MARKER_STOP");
  v1::GenerateRequest chat = Greedy("chat", {}, 4);
  chat.mutable_chat()->add_messages()->set_role("user");
  chat.mutable_chat()->mutable_messages(0)->set_content("fine");
  chat.mutable_chat()->add_messages()->set_role("MARKER_ROLE");
  chat.mutable_chat()->mutable_messages(1)->set_content("MARKER_CONTENT");
  v1::AbortRequest abort;
  abort.set_request_id("MARKER_ABORT");
  v1::TokenizeRequest tokenize;
  tokenize.set_text("MARKER_TOKENIZE");
  struct Case {
    std::string method, bytes, message;
  } cases[] = {
      {generate, WithInvalidUtf8(request, "MARKER_ID"), "request_id is not valid UTF-8 (byte 0)"},
      {generate, WithInvalidUtf8(request, "MARKER_TEXT"), "text is not valid UTF-8 (byte 0)"},
      {generate, WithInvalidUtf8(request, "MARKER_STOP"), "stopping.stop[0] is not valid UTF-8"},
      {generate, WithInvalidUtf8(chat, "MARKER_ROLE"), "chat.messages[1].role is not valid UTF-8"},
      {generate, WithInvalidUtf8(chat, "MARKER_CONTENT"),
       "chat.messages[1].content is not valid UTF-8"},
      {"/dsv2.v1.Generation/Abort", WithInvalidUtf8(abort, "MARKER_ABORT"),
       "request_id is not valid UTF-8"},
      {"/dsv2.v1.Generation/Tokenize", WithInvalidUtf8(tokenize, "MARKER_TOKENIZE"),
       "text is not valid UTF-8"},
      {generate, std::string("\xff\xff\xff\xff\xff\xff\xff\xff\x01\x01\x01\x01", 12),
       "the request is not a valid dsv2.v1.GenerateRequest message"},
      {"/dsv2.v1.Generation/GetModelInfo", std::string("\x0a\x05" "ab"),
       "not a valid dsv2.v1.GetModelInfoRequest"},
  };
  for (const Case& c : cases) {
    const grpc::Status status = call(c.method, c.bytes);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_THAT(status.error_message(), HasSubstr(c.message));
  }
  // Serving on.
  EXPECT_EQ(server.Generate(Greedy("after", {0, 1}, 3)).tokens.size(), 3u);
}

// A channel whose client advertises a tiny flow-control window and never
// raises it: a server write blocks as soon as the client stops reading.
std::shared_ptr<grpc::Channel> TightChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 256);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

int ThreadCount() {
  return static_cast<int>(std::distance(std::filesystem::directory_iterator("/proc/self/task"),
                                        std::filesystem::directory_iterator()));
}

TEST(GenerationServerTest, ClientsThatDoNotReadCountAgainstAdmissionAndAreCutOff) {
  constexpr int kStreams = 24;
  ServerFixture server("tests/data/tiny-v2", SmallEngine(),
                       {.max_streams = kStreams, .write_timeout = absl::Seconds(1)});
  const int threads_before = ThreadCount();
  // Clients that start long streams and never read them.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>>> readers;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < kStreams; ++i) {
    channels.push_back(TightChannel(server.address()));
    auto stub = v1::Generation::NewStub(channels.back());
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    v1::GenerateRequest request = Greedy("mute" + std::to_string(i), {0, 3}, 120);
    readers.push_back(stub->Generate(contexts.back().get(), request));
  }
  ASSERT_TRUE(WaitFor([&] { return server.service().active_streams() == kStreams; }));
  // Open streams are admitted whether or not their clients read, and they
  // hold no server thread each.
  const StreamResult refused = server.Generate(Greedy("one-more", {0, 1}, 2));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("too many open streams (24)"));
  EXPECT_LT(ThreadCount() - threads_before, 12);
  // Their writes block; after the write timeout they are cut off, their
  // requests aborted and every block returned.
  ASSERT_TRUE(WaitFor([&] { return server.service().active_streams() == 0; }, 30s));
  WaitIdle(server.engine());
  EXPECT_EQ(server.engine().stats().kv_blocks_used, 0);
  EXPECT_GE(server.service().slow_readers_cut(), kStreams);
  for (auto& reader : readers) {
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Others are served meanwhile and after.
  EXPECT_EQ(server.Generate(Greedy("after", {0, 1}, 3)).tokens.size(), 3u);
}

// Sends `request` from a client that does not read until the server has cut
// it off for its backlog; then its call is CANCELLED and no KV block is left.
void ExpectCutOffForItsBacklog(ServerFixture& server, const v1::GenerateRequest& request) {
  auto stub = v1::Generation::NewStub(TightChannel(server.address()));
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, request);
  ASSERT_TRUE(WaitFor([&] { return server.service().slow_readers_cut() == 1; }, 30s));
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  WaitIdle(server.engine());
  EXPECT_EQ(server.engine().stats().kv_blocks_used, 0);
}

TEST(GenerationServerTest, AClientWithTooMuchUnreadOutputIsCutOff) {
  // A small backlog bound and a long write timeout: the backlog trips first.
  ServerFixture server("tests/data/tiny-v2", SmallEngine(),
                       {.write_timeout = absl::Seconds(600), .max_backlog_bytes = 64});
  ExpectCutOffForItsBacklog(server, Greedy("hoarder", {0, 3}, 120));
}

// Prompt logprobs count in the backlog too: a client that does not read a
// long prompt's (in 8-position steps) is cut off, though its one generated
// token is far below the bound, and the server serves on.
TEST(GenerationServerTest, UnreadPromptLogprobsCountAgainstTheBacklog) {
  ServerFixture server("tests/data/tiny-v2", {.kv_cache_bytes = 32 << 20, .max_batch_tokens = 8},
                       {.write_timeout = absl::Seconds(600), .max_backlog_bytes = 512});
  std::vector<int32_t> prompt;
  for (int i = 0; i < 100; ++i) prompt.push_back(i % 50);
  v1::GenerateRequest request = Greedy("hoarder", prompt, 1);
  request.set_prompt_logprobs(20);
  ExpectCutOffForItsBacklog(server, request);
  const StreamResult after = server.Generate(Greedy("after", {0, 1, 2}, 3));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens.size(), 3u);
}

TEST(GenerationServerTest, OnlyTheOwnerMayAbortARequestAndIdsArePerOwner) {
  const std::string dir = testutil::NewTestDir("owner_tokens");
  std::ofstream(dir + "/tokens") << "alice aaaaaaaaaaaaaaaaaaaaaaaa\nbob bbbbbbbbbbbbbbbbbbbbbbbb\n";
  auto tokens = ApiTokens::Load(dir + "/tokens");
  ASSERT_TRUE(tokens.ok());
  ServerFixture server(
      "tests/data/tiny-v2", SmallEngine(),
      {.policy = AccessPolicy::Public(std::shared_ptr<ApiTokens>(*std::move(tokens)), false)});
  auto gate = std::make_shared<GatedExperts>(server.model());
  server.model().SetRoutedExperts(gate);
  const std::unique_ptr<GatedExperts, void (*)(GatedExperts*)> open_on_exit(
      gate.get(), [](GatedExperts* g) { g->Open(); });
  auto context_for = [](const std::string& token) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + 30s);
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return context;
  };
  const std::string alice = "aaaaaaaaaaaaaaaaaaaaaaaa", bob = "bbbbbbbbbbbbbbbbbbbbbbbb";

  // No token, a wrong token: refused.
  for (const std::string token : {"", "cccccccccccccccccccccccc"}) {
    auto context = context_for(token);
    const StreamResult r = server.Read(*context, Greedy("anon", {0, 1}, 2));
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << token;
  }
  auto alice_context = context_for(alice);
  auto reader = server.stub().Generate(alice_context.get(), Greedy("shared-id", {0, 5}, 60));
  gate->WaitEntered();
  // Bob may use the same id, and cannot abort Alice's request.
  auto bob_context = context_for(bob);
  auto bob_reader = server.stub().Generate(bob_context.get(), Greedy("shared-id", {0, 5}, 2));
  v1::AbortRequest abort;
  abort.set_request_id("shared-id");
  v1::AbortResponse response;
  auto bob_abort = context_for(bob);
  // Bob's own request of that id is active once the server has taken it in
  // (the call may still be on its way: the Abort could overtake it), and
  // stays so, held behind Alice's step; so his Abort ends his, never hers.
  ASSERT_TRUE(WaitFor([&] { return server.engine().num_active() == 2; }));
  ASSERT_TRUE(server.stub().Abort(bob_abort.get(), abort, &response).ok());
  gate->Open();
  const StreamResult bobs = ReadStream(*bob_reader);
  EXPECT_EQ(bobs.finish, v1::FINISH_REASON_ABORT);
  const StreamResult alices = ReadStream(*reader);
  ASSERT_TRUE(alices.status.ok()) << alices.status.error_message();
  EXPECT_EQ(alices.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(alices.tokens.size(), 60u);
  auto late = context_for(bob);
  EXPECT_EQ(server.stub().Abort(late.get(), abort, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace dsv2
