// The router in front of two attention workers, each a real engine over
// tests/data/tiny-v2 serving dsv2.v1.Generation and
// dsv2.internal.AttentionWorker in this process over gRPC on loopback ports
// chosen by the OS, so the tests can read the engines' stats.
#include "services/router/router_service.h"

#include <atomic>
#include <functional>
#include <thread>

#include <fstream>

#include "absl/base/thread_annotations.h"
#include "common/base/mutex.h"
#include "common/base/test_util.h"
#include "common/engine/engine.h"
#include "common/rpc/access.h"
#include "common/model/deepseek_v2.h"
#include "common/model/routed_experts.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/server_interceptor.h"
#include "gtest/gtest.h"
#include "server/grpc/generation_service.h"
#include "server/grpc/load_service.h"
#include "server/api/text_frontend.h"
#include "tests/generation_test_util.h"

namespace dsv2 {
namespace {

using testutil::Greedy;
using testutil::ReadStream;
using testutil::StreamResult;

using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kModel[] = "tests/data/tiny-v2";

// Waits until `condition` holds; false after `timeout`.
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 10s) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// The model's own experts behind a gate: while it is shut, the engine's
// step waits inside the MoE layer, so requests stay in flight, holding their
// blocks, for as long as a test needs, whatever the machine's speed. With
// one micro-batch a step calls Compute once per MoE layer, so Allow(n) lets
// an exact number of steps through.
class GatedExperts final : public RoutedExperts {
 public:
  GatedExperts(const ModelConfig& config, const ModelWeights& weights)
      : local_(config, weights, CpuBackendInstance()) {}

  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* weights, float* out,
                       absl::FunctionRef<void()> meanwhile) override {
    {
      MutexLock lock(&mutex_);
      ++held_;
      const auto open = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return allowance_ != 0; };
      mutex_.Await(absl::Condition(&open));
      --held_;
      if (allowance_ > 0) --allowance_;
    }
    return local_.Compute(layer, x, n, k, ids, weights, out, meanwhile);
  }
  void Open() { Set(-1); }
  void Close() { Set(0); }
  // Lets `calls` more Compute calls through, then shuts.
  void Allow(int64_t calls) { Set(calls); }
  // Waits until a step is held at the shut gate.
  bool WaitHeld() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    const auto held = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return held_ > 0 && allowance_ == 0;
    };
    return mutex_.AwaitWithTimeout(absl::Condition(&held), absl::Seconds(10));
  }

 private:
  void Set(int64_t allowance) ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    allowance_ = allowance;
  }

  LocalRoutedExperts local_;
  Mutex mutex_;
  int64_t allowance_ ABSL_GUARDED_BY(mutex_) = -1;  // Calls still let through; -1: open.
  int64_t held_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Counts the Generate and Abort calls a worker receives and the deadline of
// the last Generate: a server interceptor factory that looks at every call
// as it starts and leaves it to the real service.
class RecordingGeneration final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    const std::string method = info->method();
    MutexLock lock(&mutex_);
    if (method == "/dsv2.v1.Generation/Generate") {
      ++generate_calls_;
      deadline_ = info->server_context()->deadline();
    } else if (method == "/dsv2.v1.Generation/Abort") {
      ++abort_calls_;
    }
    return nullptr;
  }

  int64_t generate_calls() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    return generate_calls_;
  }
  std::chrono::system_clock::time_point deadline() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    return deadline_;
  }
  int64_t abort_calls() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    return abort_calls_;
  }

 private:
  Mutex mutex_;
  int64_t generate_calls_ ABSL_GUARDED_BY(mutex_) = 0;
  std::chrono::system_clock::time_point deadline_ ABSL_GUARDED_BY(mutex_);
  int64_t abort_calls_ ABSL_GUARDED_BY(mutex_) = 0;
};

StreamResult Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                      std::chrono::milliseconds timeout = 30s) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  auto reader = stub.Generate(&context, request);
  return ReadStream(*reader);
}

// An attention worker: engine, Generation (recorded) and AttentionWorker
// (LoadService, serving while `serving` is true) on one gRPC server.
class Worker {
 public:
  explicit Worker(EngineOptions options = {.kv_cache_bytes = 32 << 20}) {
    auto model = DeepseekV2Model::Load(kModel);
    EXPECT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    gate_ = std::make_shared<GatedExperts>(model_->config(), model_->weights());
    model_->SetRoutedExperts(gate_);
    auto text = TextFrontend::LoadIfPresent(kModel);
    EXPECT_TRUE(text.ok()) << text.status();
    text_ = *std::move(text);
    engine_ = std::make_unique<Engine>(model_.get(), text_.get(), options);
    generation_ = std::make_unique<GenerationService>(
        engine_.get(), text_.get(), kModel,
        GenerationServiceOptions{.trust_forwarded_principal = true});
    load_ = std::make_unique<LoadService>(engine_.get(), [this] {
      return serving ? absl::OkStatus() : absl::UnavailableError("told not to serve");
    });
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(generation_.get());
    builder.RegisterService(load_.get());
    auto recording = std::make_unique<RecordingGeneration>();
    recording_ = recording.get();
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
    factories.push_back(std::move(recording));
    builder.experimental().SetInterceptorCreators(std::move(factories));
    server_ = builder.BuildAndStart();
    EXPECT_NE(port_, 0);
    stub_ =
        v1::Generation::NewStub(grpc::CreateChannel(address(), grpc::InsecureChannelCredentials()));
  }
  ~Worker() {
    gate_->Open();  // A held step would keep the server and engine from ending.
    Stop();
    // The engine's thread calls into the Generation service through its
    // streams' listeners (a request ending after an abort): it stops before
    // the service goes (TSan saw the watchdog's mutex destroyed under it).
    engine_.reset();
  }

  // Shuts the server down, cancelling calls still running after `grace`
  // (idempotent); the engine lives on.
  void Stop(std::chrono::milliseconds grace = 1s) {
    server_->Shutdown(std::chrono::system_clock::now() + grace);
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  Engine& engine() { return *engine_; }
  GatedExperts& gate() { return *gate_; }
  RecordingGeneration& calls() { return *recording_; }
  v1::Generation::Stub& stub() { return *stub_; }

  // Waits until the engine has no active request and every block is back.
  void ExpectIdle() {
    EXPECT_TRUE(WaitFor([&] { return engine_->num_active() == 0; }));
    EXPECT_EQ(engine_->stats().kv_blocks_used, 0);
  }

  std::atomic<bool> serving{true};

 private:
  std::unique_ptr<DeepseekV2Model> model_;
  std::shared_ptr<GatedExperts> gate_;
  std::unique_ptr<TextFrontend> text_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<GenerationService> generation_;
  RecordingGeneration* recording_ = nullptr;  // Owned by the server.
  std::unique_ptr<LoadService> load_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

// A RouterService served on its own port, in front of workers named by id.
class Router {
 public:
  Router(const std::vector<std::pair<std::string, Worker*>>& workers, RouterOptions options = {})
      : service_(options) {
    SetWorkers(workers);
    service_.SetServing(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    EXPECT_NE(port_, 0);
    stub_ = v1::Generation::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port_),
                                                        grpc::InsecureChannelCredentials()));
  }
  ~Router() { server_->Shutdown(std::chrono::system_clock::now() + 1s); }

  void SetWorkers(const std::vector<std::pair<std::string, Worker*>>& workers) {
    std::vector<AttentionEndpoint> endpoints;
    for (const auto& [id, worker] : workers) endpoints.push_back({id, worker->address()});
    service_.SetWorkers(std::move(endpoints));
  }

  RouterService& service() { return service_; }
  v1::Generation::Stub& stub() { return *stub_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  StreamResult Generate(const v1::GenerateRequest& request,
                        std::chrono::milliseconds timeout = 30s) {
    return dsv2::Generate(*stub_, request, timeout);
  }

  std::optional<RouterWorkerView> View(const std::string& id) {
    for (RouterWorkerView& view : service_.workers()) {
      if (view.endpoint.id == id) return view;
    }
    return std::nullopt;
  }
  // Waits until the router's view of worker `id` satisfies `condition`.
  bool WaitView(const std::string& id,
                const std::function<bool(const RouterWorkerView&)>& condition) {
    return WaitFor([&] {
      const std::optional<RouterWorkerView> view = View(id);
      return view && condition(*view);
    });
  }
  bool WaitEligible(const std::string& id) {
    return WaitView(id, [](const RouterWorkerView& v) { return v.eligible; });
  }

 private:
  RouterService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

// Polls only when the worker list changes: the router's view stays as the
// test left it.
// One poll per worker, when it is added. That poll has a generous deadline:
// it is never repeated, and under a sanitizer its first connection alone can
// take longer than the default 500 ms (seen under TSan in CI).
RouterOptions NoRepoll() {
  return {.load_interval = std::chrono::hours(1), .load_timeout = std::chrono::seconds(30)};
}

TEST(RouterTest, GreedyOutputThroughTheRouterEqualsTheWorkers) {
  Worker a, b;
  Router router({{"a", &a}, {"b", &b}});
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  for (int i = 0; i < 3; ++i) {
    const std::vector<int32_t> prompt = {0, 5 + i, 17, 300 + 40 * i, 9};
    const StreamResult direct = Generate(a.stub(), Greedy("direct", prompt, 12));
    const StreamResult routed = router.Generate(Greedy("routed", prompt, 12));
    ASSERT_TRUE(routed.status.ok()) << routed.status.error_message();
    EXPECT_EQ(routed.tokens, direct.tokens);
    EXPECT_EQ(routed.tokens.size(), 12u);
    EXPECT_EQ(routed.text, direct.text);
    EXPECT_EQ(routed.finish, v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(routed.usage.prompt_tokens(), prompt.size());
  }
  // Three direct calls to a, three forwarded to one of them each.
  EXPECT_EQ(a.calls().generate_calls() + b.calls().generate_calls(), 6);
  const RouterCounters counters = router.service().counters();
  // Either worker may have taken all three (the choice follows load).
  int64_t forwarded = 0;
  for (const auto& [worker, count] : counters.forwarded) forwarded += count;
  EXPECT_EQ(forwarded, 3);
  EXPECT_EQ(counters.retries, 0);

  // Text input, Tokenize and GetModelInfo are forwarded too.
  v1::GenerateRequest by_text = Greedy("text", {}, 8);
  by_text.set_text("Once upon a time");
  const StreamResult routed_text = router.Generate(by_text);
  ASSERT_TRUE(routed_text.status.ok()) << routed_text.status.error_message();
  EXPECT_EQ(routed_text.tokens, Generate(b.stub(), by_text).tokens);
  v1::TokenizeRequest tokenize;
  tokenize.set_text("Once upon a time");
  v1::TokenizeResponse routed_ids, direct_ids;
  grpc::ClientContext c1, c2;
  ASSERT_TRUE(router.stub().Tokenize(&c1, tokenize, &routed_ids).ok());
  ASSERT_TRUE(a.stub().Tokenize(&c2, tokenize, &direct_ids).ok());
  EXPECT_EQ(routed_ids.SerializeAsString(), direct_ids.SerializeAsString());
  EXPECT_GT(routed_ids.token_ids_size(), 1);
  v1::ModelInfo info;
  grpc::ClientContext c3;
  ASSERT_TRUE(router.stub().GetModelInfo(&c3, {}, &info).ok());
  EXPECT_EQ(info.vocab_size(), 3200u);
  EXPECT_EQ(info.model_path(), kModel);
  EXPECT_TRUE(info.has_tokenizer());
}

TEST(RouterTest, LoadServiceReportsTheEnginesBlocks) {
  Worker a({.block_size = 16, .kv_cache_bytes = 256 << 10});
  Router router({{"a", &a}});
  ASSERT_TRUE(router.WaitEligible("a"));
  const RouterWorkerView view = *router.View("a");
  const internal::Load& load = view.load;
  // The worker counts the GetLoad calls it answered: here, the router's polls.
  EXPECT_EQ(load.get_load_calls(), view.polls);
  EXPECT_EQ(load.kv_blocks_total(), 16);  // 256 KiB / (4 layers x 16 x 64 floats).
  EXPECT_EQ(load.kv_blocks_free(), 16);
  EXPECT_EQ(load.block_size(), 16);
  EXPECT_TRUE(load.serving());
  EXPECT_EQ(load.not_serving_reason(), "");
  a.serving = false;
  EXPECT_TRUE(router.WaitView("a", [](const RouterWorkerView& v) {
    return v.load_known && !v.load.serving() && !v.eligible &&
           v.load.not_serving_reason() == "told not to serve";
  }));
}

TEST(RouterTest, ChoosesTheWorkerWithTheMostFreeBlocks) {
  // a comes first by id but holds 16 blocks; b holds 2048.
  Worker a({.block_size = 16, .kv_cache_bytes = 256 << 10});
  Worker b({.block_size = 16, .kv_cache_bytes = 32 << 20});
  Router router({{"a", &a}, {"b", &b}});
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  for (int i = 0; i < 4; ++i) {
    const StreamResult r = router.Generate(Greedy("r" + std::to_string(i), {0, 3, 4}, 6));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  }
  EXPECT_EQ(a.calls().generate_calls(), 0);
  EXPECT_EQ(b.calls().generate_calls(), 4);
}

TEST(RouterTest, AvoidsAWorkerBusyWithRequests) {
  Worker a({.block_size = 16, .kv_cache_bytes = 32 << 20});
  Worker b({.block_size = 16, .kv_cache_bytes = 32 << 20});
  Router router({{"a", &a}, {"b", &b}});
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  // Two requests of 100 prompt tokens on a, submitted to its engine
  // directly: two steps (prefill and one decode; three MoE layers each)
  // pass the gate, so both hold 7 blocks while the third step waits.
  a.gate().Allow(6);
  std::vector<std::shared_ptr<RequestStream>> held;
  for (int i = 0; i < 2; ++i) {
    GenerationRequest request;
    request.id = "held" + std::to_string(i);
    request.prompt.assign(100, 7 + i);
    request.max_tokens = 20;
    request.ignore_eos = true;
    auto stream = a.engine().Submit(request);
    ASSERT_TRUE(stream.ok()) << stream.status();
    held.push_back(*stream);
  }
  ASSERT_TRUE(a.gate().WaitHeld());
  ASSERT_TRUE(router.WaitView("a", [](const RouterWorkerView& v) {
    return v.load_known && v.load.kv_blocks_free() + v.load.kv_blocks_cached() <= 2048 - 14;
  }));
  // Smaller requests go to b (a would hold them at its gate until the
  // deadline), whichever comes first by id.
  for (int i = 0; i < 3; ++i) {
    const StreamResult r = router.Generate(Greedy("r" + std::to_string(i), {0, 3, 4}, 6), 10s);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  }
  EXPECT_EQ(a.calls().generate_calls(), 0);
  EXPECT_EQ(b.calls().generate_calls(), 3);
  a.gate().Open();
  for (auto& stream : held) {
    while (auto out = stream->Next(30s)) {
      if (out->finish) break;
    }
  }
  a.ExpectIdle();
}

TEST(RouterTest, AWorkerNotServingIsNeverChosen) {
  // a has more room and comes first, but says it is not serving.
  Worker a({.block_size = 16, .kv_cache_bytes = 32 << 20});
  Worker b({.block_size = 16, .kv_cache_bytes = 1 << 20});
  a.serving = false;
  Router router({{"a", &a}, {"b", &b}});
  ASSERT_TRUE(router.WaitEligible("b"));
  ASSERT_TRUE(router.WaitView("a", [](const RouterWorkerView& v) { return v.polls >= 2; }));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(router.Generate(Greedy("r" + std::to_string(i), {0, 3, 4}, 4)).status.ok());
  }
  EXPECT_EQ(a.calls().generate_calls(), 0);
  EXPECT_EQ(b.calls().generate_calls(), 3);
  // Serving again: a is chosen once the router has seen it.
  a.serving = true;
  ASSERT_TRUE(router.WaitEligible("a"));
  ASSERT_TRUE(router.Generate(Greedy("back", {0, 3, 4}, 4)).status.ok());
  EXPECT_EQ(a.calls().generate_calls(), 1);
  // b is no longer in the map: everything goes to a.
  router.SetWorkers({{"a", &a}});
  EXPECT_EQ(router.service().workers().size(), 1u);
  a.serving = false;
  ASSERT_TRUE(router.WaitView("a", [](const RouterWorkerView& v) { return !v.eligible; }));
  const StreamResult none = router.Generate(Greedy("none", {0, 3, 4}, 4));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(none.status.error_message(), HasSubstr("no attention worker is serving"));
  EXPECT_EQ(b.calls().generate_calls(), 3);
}

TEST(RouterTest, RequestsSentSinceThePollAreCharged) {
  // No poll after the first: only the router's own charges tell the equal
  // workers apart, so consecutive requests alternate, a first (by id).
  Worker a, b;
  Router router({{"a", &a}, {"b", &b}}, NoRepoll());
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(router.Generate(Greedy("r" + std::to_string(i), {0, 3, 4}, 4)).status.ok());
    EXPECT_EQ(a.calls().generate_calls(), (i + 2) / 2) << i;
    EXPECT_EQ(b.calls().generate_calls(), (i + 1) / 2) << i;
  }
  // ceil((3 + 4) / 64) = 1 block each.
  EXPECT_EQ(router.View("a")->pending_blocks, 2);
  EXPECT_EQ(router.View("b")->pending_requests, 2);
}

TEST(RouterTest, ClientCancellationAbortsTheRequestOnTheWorker) {
  Worker a;
  Router router({{"a", &a}});
  ASSERT_TRUE(router.WaitEligible("a"));
  // Two steps through, then the request waits at the gate: the client has
  // its first tokens and the worker's engine holds the request.
  a.gate().Allow(6);
  grpc::ClientContext context;
  auto reader = router.stub().Generate(&context, Greedy("cancel", {0, 5, 6, 7}, 100));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_TRUE(response.has_chunk());
  ASSERT_TRUE(a.gate().WaitHeld());
  context.TryCancel();
  while (reader->Read(&response)) {}
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // No token moves while the gate is shut, so the router's call ends only
  // if the cancellation reached the forwarded call.
  EXPECT_TRUE(WaitFor([&] { return router.service().active_streams() == 0; }));
  a.gate().Open();
  a.ExpectIdle();
  const EngineStats stats = a.engine().stats();
  EXPECT_EQ(stats.finished[int(FinishReason::kAbort)], 1);
  EXPECT_EQ(stats.finished[int(FinishReason::kLength)], 0);
}

TEST(RouterTest, TheDeadlineReachesTheWorker) {
  Worker a;
  Router router({{"a", &a}});
  ASSERT_TRUE(router.WaitEligible("a"));
  a.gate().Close();  // The request cannot make progress before its deadline.
  const auto deadline = std::chrono::system_clock::now() + 1s;
  grpc::ClientContext context;
  context.set_deadline(deadline);
  auto reader = router.stub().Generate(&context, Greedy("late", {0, 5, 6, 7}, 50));
  const StreamResult r = ReadStream(*reader);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_EQ(a.calls().generate_calls(), 1);
  // The forwarded call carried the client's deadline (less the time in
  // transit, give or take the wire's rounding).
  const auto skew = a.calls().deadline() - deadline;
  EXPECT_LT(skew, 100ms);
  EXPECT_GT(skew, -500ms);
  a.gate().Open();
  a.ExpectIdle();
  const EngineStats stats = a.engine().stats();
  EXPECT_EQ(
      stats.finished[int(FinishReason::kAbort)] + stats.finished[int(FinishReason::kTimeLimit)], 1);
}

TEST(RouterTest, RetriesOnAnotherWorkerWhenTheChosenOneIsGone) {
  Worker a, b;
  Router router({{"a", &a}, {"b", &b}}, NoRepoll());
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  const v1::GenerateRequest request = Greedy("r", {0, 8, 9, 10}, 10);
  const StreamResult expected = Generate(b.stub(), request);
  ASSERT_TRUE(expected.status.ok());
  // a still looks best to the router (equal load, first by id) but its
  // server is gone: the call fails before any token and goes to b.
  a.Stop();
  const StreamResult r = router.Generate(request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens, expected.tokens);
  RouterCounters counters = router.service().counters();
  EXPECT_EQ(counters.retries, 1);
  EXPECT_EQ(counters.forwarded["a"], 1);
  EXPECT_EQ(counters.forwarded["b"], 1);
  EXPECT_EQ(counters.failures["a"], 1);
  // a is not chosen again until it answers a poll.
  EXPECT_FALSE(router.View("a")->eligible);
  ASSERT_TRUE(router.Generate(Greedy("again", {0, 8, 9, 10}, 4)).status.ok());
  counters = router.service().counters();
  EXPECT_EQ(counters.retries, 1);
  EXPECT_EQ(counters.forwarded["a"], 1);
  EXPECT_EQ(counters.forwarded["b"], 2);
  EXPECT_EQ(b.calls().generate_calls(), 3);
}

TEST(RouterTest, UnavailableWhenEveryWorkerIsGone) {
  Worker a, b;
  Router router({{"a", &a}, {"b", &b}}, NoRepoll());
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  a.Stop();
  b.Stop();
  // Tried on a, then once on b, and no more.
  const StreamResult r = router.Generate(Greedy("r", {0, 8, 9}, 4));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("attention worker b is unavailable"));
  EXPECT_EQ(r.responses, 0);
  RouterCounters counters = router.service().counters();
  EXPECT_EQ(counters.retries, 1);
  EXPECT_EQ(counters.failures["a"] + counters.failures["b"], 2);
  // Both are now known to be down.
  const StreamResult again = router.Generate(Greedy("again", {0, 8, 9}, 4));
  EXPECT_EQ(again.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(again.status.error_message(), HasSubstr("no attention worker is serving"));
  v1::TokenizeRequest tokenize;
  tokenize.set_text("hi");
  v1::TokenizeResponse ids;
  grpc::ClientContext context;
  EXPECT_EQ(router.stub().Tokenize(&context, tokenize, &ids).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(router.service().counters().no_worker, 2);
  EXPECT_EQ(router.service().counters().finished,
            (std::map<std::string, int64_t>{{"UNAVAILABLE", 2}}));
}

TEST(RouterTest, PollingTakesAStoppedWorkerOutAndNoWorkersMeansUnavailable) {
  Worker a, b;
  Router router({{"a", &a}, {"b", &b}});
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  a.Stop();
  ASSERT_TRUE(router.WaitView("a", [](const RouterWorkerView& v) { return !v.load_known; }));
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(router.Generate(Greedy("r" + std::to_string(i), {0, 8, 9}, 4)).status.ok());
  }
  EXPECT_EQ(router.service().counters().retries, 0);
  EXPECT_EQ(b.calls().generate_calls(), 2);
  router.SetWorkers({});
  const StreamResult r = router.Generate(Greedy("r", {0, 8, 9}, 4));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("no attention worker is serving (0 known)"));
}

TEST(RouterTest, AWorkerFailingMidStreamEndsTheCallUnavailable) {
  Worker a, b;
  Router router({{"a", &a}, {"b", &b}}, NoRepoll());
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  a.gate().Allow(6);
  grpc::ClientContext context;
  auto reader = router.stub().Generate(&context, Greedy("mid", {0, 5, 6, 7}, 100));
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));
  ASSERT_TRUE(a.gate().WaitHeld());
  // a's server goes away while the request waits in its engine; Stop waits
  // for a's handler, which waits for the engine, so it runs aside until the
  // gate opens.
  std::thread stopper([&] { a.Stop(/*grace=*/0ms); });
  const StreamResult r = ReadStream(*reader);
  a.gate().Open();
  stopper.join();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("attention worker a failed mid-stream"));
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.error->message(), r.status.error_message());
  // Not tried again: the client had tokens.
  EXPECT_EQ(router.service().counters().retries, 0);
  EXPECT_EQ(b.calls().generate_calls(), 0);
  a.ExpectIdle();
}

TEST(RouterTest, AbortIsForwardedToTheWorkerServingTheRequest) {
  Worker a, b;
  Router router({{"a", &a}, {"b", &b}}, NoRepoll());
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  a.gate().Allow(6);  // The first request goes to a (equal load, first by id).
  grpc::ClientContext context;
  auto reader = router.stub().Generate(&context, Greedy("victim", {0, 5, 6, 7}, 100));
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));
  ASSERT_TRUE(a.gate().WaitHeld());
  v1::AbortRequest abort;
  abort.set_request_id("victim");
  v1::AbortResponse abort_response;
  grpc::ClientContext abort_context;
  EXPECT_TRUE(router.stub().Abort(&abort_context, abort, &abort_response).ok());
  a.gate().Open();
  const StreamResult r = ReadStream(*reader);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finish, v1::FINISH_REASON_ABORT);
  EXPECT_EQ(a.calls().abort_calls(), 1);
  EXPECT_EQ(b.calls().abort_calls(), 0);
  a.ExpectIdle();
  // Unknown, and ended, ids are NOT_FOUND from the router itself.
  for (const std::string id : {"nobody", "victim"}) {
    abort.set_request_id(id);
    grpc::ClientContext c;
    EXPECT_EQ(router.stub().Abort(&c, abort, &abort_response).error_code(),
              grpc::StatusCode::NOT_FOUND)
        << id;
  }
  EXPECT_EQ(a.calls().abort_calls(), 1);
}

TEST(RouterTest, InvalidRequestsPassThroughAndIdsAreUniqueAcrossWorkers) {
  Worker a, b;
  Router router({{"a", &a}, {"b", &b}});
  ASSERT_TRUE(router.WaitEligible("a") && router.WaitEligible("b"));
  v1::GenerateRequest bad = Greedy("bad", {0, 1, 2}, 8);
  bad.mutable_token_ids()->set_ids(1, 3200);
  const StreamResult direct = Generate(a.stub(), bad);
  const StreamResult routed = router.Generate(bad);
  EXPECT_EQ(routed.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(routed.status.error_message(), direct.status.error_message());
  EXPECT_THAT(routed.status.error_message(), HasSubstr("outside the vocabulary"));
  EXPECT_EQ(router.service().counters().retries, 0);
  const StreamResult no_id = router.Generate(Greedy("", {0, 1, 2}, 8));
  EXPECT_EQ(no_id.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(no_id.status.error_message(), HasSubstr("request_id is required"));

  // An id in use is refused even though the other worker does not know it.
  a.gate().Allow(6);
  b.gate().Allow(6);
  grpc::ClientContext context;
  auto reader = router.stub().Generate(&context, Greedy("dup", {0, 1}, 100));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  const StreamResult dup = router.Generate(Greedy("dup", {0, 1}, 4));
  EXPECT_EQ(dup.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(dup.status.error_message(), HasSubstr("already in use"));
  context.TryCancel();
  a.gate().Open();
  b.gate().Open();
  ReadStream(*reader);
  // Still serving.
  const StreamResult ok = router.Generate(Greedy("fine", {0, 1, 2}, 5));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.tokens.size(), 5u);
  // Every call is counted by how it ended, refusals included (the metric
  // dsv2:router_requests_total).
  EXPECT_EQ(router.service().counters().finished,
            (std::map<std::string, int64_t>{{"INVALID_ARGUMENT", 3}, {"CANCELLED", 1}, {"OK", 1}}));
}

TEST(RouterTest, NotReadyAndDrainingAreUnavailable) {
  Worker a;
  Router router({{"a", &a}});
  ASSERT_TRUE(router.WaitEligible("a"));
  router.service().SetServing(false);
  const StreamResult not_ready = router.Generate(Greedy("r", {0, 1, 2}, 4));
  EXPECT_EQ(not_ready.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(not_ready.status.error_message(), HasSubstr("cluster not ready"));
  router.service().SetServing(true);
  EXPECT_TRUE(router.Generate(Greedy("r", {0, 1, 2}, 4)).status.ok());
  router.service().StopAccepting();
  const StreamResult draining = router.Generate(Greedy("r", {0, 1, 2}, 4));
  EXPECT_EQ(draining.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(draining.status.error_message(), HasSubstr("draining"));
  EXPECT_EQ(a.calls().generate_calls(), 1);
}

// With tokens, requests belong to their principal through the router too:
// two clients may use one id, and one cannot abort the other's request.
TEST(RouterTest, RequestsBelongToTheirPrincipal) {
  const std::string path = testutil::NewTestDir("router_tokens") + "/tokens";
  std::ofstream(path) << "alice aaaaaaaaaaaaaaaaaaaaaaaa\nbob bbbbbbbbbbbbbbbbbbbbbbbb\n";
  auto tokens = ApiTokens::Load(path);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  Worker a;
  RouterOptions options = NoRepoll();
  options.policy = AccessPolicy::Public(std::shared_ptr<ApiTokens>(*std::move(tokens)), false);
  Router router({{"a", &a}}, options);
  ASSERT_TRUE(router.WaitEligible("a"));
  auto as = [](const std::string& token) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + 30s);
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return context;
  };
  const std::string alice = "aaaaaaaaaaaaaaaaaaaaaaaa", bob = "bbbbbbbbbbbbbbbbbbbbbbbb";
  {
    auto anonymous = as("");
    auto reader = router.stub().Generate(anonymous.get(), Greedy("x", {0, 5}, 2));
    EXPECT_EQ(ReadStream(*reader).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  a.gate().Allow(4);
  auto alice_call = as(alice);
  auto reader = router.stub().Generate(alice_call.get(), Greedy("same", {0, 5, 6}, 80));
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));
  ASSERT_TRUE(a.gate().WaitHeld());
  // Bob: same id is his own; his Abort does not reach Alice's request.
  v1::AbortRequest abort;
  abort.set_request_id("same");
  v1::AbortResponse aborted;
  auto bob_abort = as(bob);
  EXPECT_EQ(router.stub().Abort(bob_abort.get(), abort, &aborted).error_code(),
            grpc::StatusCode::NOT_FOUND);
  a.gate().Open();
  auto bob_call = as(bob);
  auto bob_reader = router.stub().Generate(bob_call.get(), Greedy("same", {0, 5, 6}, 3));
  const StreamResult bobs = ReadStream(*bob_reader);
  ASSERT_TRUE(bobs.status.ok()) << bobs.status.error_message();
  const StreamResult alices = ReadStream(*reader);
  ASSERT_TRUE(alices.status.ok()) << alices.status.error_message();
  EXPECT_EQ(alices.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(alices.tokens.size() + 1, 80u);
  EXPECT_EQ(a.calls().abort_calls(), 0);
}

// A client that never reads its stream is cut off by the router (its call
// and the worker's cancelled); open streams count against max_streams.
TEST(RouterTest, ClientsThatDoNotReadAreBoundedAndCutOff) {
  Worker a;
  RouterOptions options;
  options.max_streams = 2;
  options.write_timeout = absl::Milliseconds(500);
  Router router({{"a", &a}}, options);
  ASSERT_TRUE(router.WaitEligible("a"));
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 256);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto tight = v1::Generation::NewStub(
      grpc::CreateCustomChannel(router.address(), grpc::InsecureChannelCredentials(), args));
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>>> readers;
  for (int i = 0; i < 2; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(tight->Generate(contexts.back().get(),
                                      Greedy("mute" + std::to_string(i), {0, 3}, 120)));
  }
  ASSERT_TRUE(WaitFor([&] { return router.service().active_streams() == 2; }));
  const StreamResult refused = router.Generate(Greedy("third", {0, 1}, 2));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("too many open streams (2)"));
  ASSERT_TRUE(WaitFor([&] { return router.service().active_streams() == 0; }, 30s));
  EXPECT_GE(router.service().slow_readers_cut(), 2);
  for (auto& reader : readers) {
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  a.ExpectIdle();  // The worker's requests were cancelled with them.
  EXPECT_TRUE(router.Generate(Greedy("after", {0, 1}, 2)).status.ok());
}

}  // namespace
}  // namespace dsv2
