// The MoE layer over the in-process data plane: remote experts equal local
// ones bit for bit in f32, every placement gives the same numbers in bf16,
// replicas take over a dead worker's rows, a unit with no worker fails
// UNAVAILABLE, tokens reach at most topk_group workers, and malformed
// dispatches are refused.
#include <random>

#include "common/base/mutex.h"
#include "common/experts/expert_server.h"
#include "common/experts/remote_experts.h"
#include "common/model/moe_routing.h"
#include "common/transport/inprocess_transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using transport::InProcessNetwork;
using transport::InProcessTransport;

// n random tokens of one MoE layer, routed by the model's own gate rule.
struct Batch {
  int64_t n = 0, k = 0;
  std::vector<float> x;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Batch RandomBatch(const DeepseekV2Model& model, int64_t n, uint32_t seed) {
  const ModelConfig& c = model.config();
  Batch b;
  b.n = n;
  b.k = c.num_experts_per_tok;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  b.x.resize(n * c.hidden_size);
  for (float& v : b.x) v = normal(rng);
  b.ids.resize(n * b.k);
  b.weights.resize(n * b.k);
  std::vector<float> scores(c.n_routed_experts);
  for (int64_t t = 0; t < n; ++t) {
    for (float& s : scores) s = std::exp(normal(rng));
    float sum = 0;
    for (float s : scores) sum += s;
    for (float& s : scores) s /= sum;
    SelectExperts(c, scores.data(), &b.ids[t * b.k], &b.weights[t * b.k]);
  }
  return b;
}

// Expert workers on an in-process network, and an attention-side client.
class Cluster {
 public:
  Cluster(const DeepseekV2Model& model, int64_t workers, int64_t replicas, DType dtype,
          RemoteExpertsOptions options = {.timeout = absl::Seconds(5)},
          std::vector<absl::Duration> batch_windows = {})  // By worker; the rest zero.
      : network_(InProcessNetwork::Create()) {
    batch_windows.resize(workers, absl::ZeroDuration());
    for (int64_t w = 0; w < workers; ++w) {
      transports_.push_back(*InProcessTransport::Create(network_, {.id = uint32_t(10 + w)}));
      servers_.push_back(std::make_unique<ExpertServer>(
          model, *transports_.back(), ExpertServerOptions{.batch_window = batch_windows[w]}));
    }
    client_transport_ = *InProcessTransport::Create(network_, {.id = 1});
    options.dispatch_dtype = dtype;
    experts_ = std::make_unique<RemoteRoutedExperts>(model.config(), *client_transport_,
                                                     std::move(options));
    route_ = std::make_shared<ExpertRoute>();
    route_->placement = *PlaceExperts(model.config(), workers, replicas);
    for (auto& t : transports_) {
      route_->ids.push_back("w" + std::to_string(route_->ids.size()));
      route_->addresses.push_back(t->address());
      route_->alive.push_back(true);
    }
    experts_->SetRoute(route_);
  }

  absl::Status Compute(const Batch& b, int64_t layer, std::vector<float>* out) {
    out->assign(b.x.size(), 0.0f);
    int meanwhile_calls = 0;
    absl::Status s = experts_->Compute(layer, b.x.data(), b.n, b.k, b.ids.data(),
                                       b.weights.data(), out->data(), [&] { ++meanwhile_calls; });
    EXPECT_EQ(meanwhile_calls, 1);
    return s;
  }

  RemoteRoutedExperts& experts() { return *experts_; }
  InProcessTransport& transport(int64_t w) { return *transports_[w]; }
  InProcessTransport& client() { return *client_transport_; }
  ExpertServer& server(int64_t w) { return *servers_[w]; }
  const ExpertRoute& route() const { return *route_; }

 private:
  std::shared_ptr<InProcessNetwork> network_;
  std::vector<std::unique_ptr<InProcessTransport>> transports_;
  std::vector<std::unique_ptr<ExpertServer>> servers_;
  std::unique_ptr<InProcessTransport> client_transport_;
  std::unique_ptr<RemoteRoutedExperts> experts_;
  std::shared_ptr<ExpertRoute> route_;
};

class ExpertsTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto model = DeepseekV2Model::Load("tests/data/" + GetParam());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    for (int64_t l = 0; l < model_->config().num_hidden_layers; ++l) {
      if (model_->weights().layers[l].is_moe) layer_ = l;
    }
    ASSERT_GE(layer_, 0);
  }

  // The layer's output for `b` from one worker, in bf16 on the wire.
  std::vector<float> Reference(const Batch& b) {
    std::vector<float> out;
    Cluster reference(*model_, 1, 1, DType::kBF16);
    EXPECT_TRUE(reference.Compute(b, layer_, &out).ok());
    return out;
  }

  std::unique_ptr<DeepseekV2Model> model_;
  int64_t layer_ = -1;
};

// A hung worker's request handler: every dispatch is held unanswered.
// Release() lets them go (answered INTERNAL, as a destroyed request is)
// while the transports still exist.
class Hang {
 public:
  transport::RequestHandler Handler() {
    return [this](transport::IncomingRequest request) {
      MutexLock lock(&mutex_);
      held_.push_back(std::move(request));
    };
  }
  // How many were held.
  size_t Release() {
    MutexLock lock(&mutex_);
    const size_t held = held_.size();
    held_.clear();
    return held;
  }

 private:
  Mutex mutex_;
  std::vector<transport::IncomingRequest> held_ ABSL_GUARDED_BY(mutex_);
};

TEST_P(ExpertsTest, RemoteEqualsLocalInF32AndEveryPlacementAgreesInBf16) {
  const Batch b = RandomBatch(*model_, 37, 5);
  std::vector<float> local(b.x.size());
  LocalRoutedExperts experts(model_->config(), model_->weights(), model_->backend());
  ASSERT_TRUE(experts.Compute(layer_, b.x.data(), b.n, b.k, b.ids.data(), b.weights.data(),
                              local.data(), [] {}).ok());
  std::vector<float> bf16_first;
  for (int64_t workers : {1, 2, 3}) {
    SCOPED_TRACE(workers);
    std::vector<float> out;
    Cluster f32(*model_, workers, 1, DType::kF32);
    ASSERT_TRUE(f32.Compute(b, layer_, &out).ok());
    EXPECT_EQ(out, local);  // Bit for bit.

    Cluster bf16(*model_, workers, 1, DType::kBF16);
    ASSERT_TRUE(bf16.Compute(b, layer_, &out).ok());
    if (bf16_first.empty()) bf16_first = out;
    EXPECT_EQ(out, bf16_first);
    // bf16 rounding of x and of the partials (8-bit mantissas): within 1%
    // of the f32 result in relative L2 norm.
    double diff = 0, norm = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      diff += (out[i] - local[i]) * (out[i] - local[i]);
      norm += local[i] * local[i];
    }
    EXPECT_LT(std::sqrt(diff / norm), 1e-2);
  }
}

TEST_P(ExpertsTest, ReplicasTakeOverAndAUnitWithoutWorkerIsUnavailable) {
  const Batch b = RandomBatch(*model_, 16, 9);
  const std::vector<float> expected = Reference(b);
  std::vector<float> out;
  Cluster replicated(*model_, 2, 2, DType::kBF16);
  replicated.transport(0).Shutdown();  // As if killed: calls to it fail UNAVAILABLE.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(replicated.Compute(b, layer_, &out).ok());
    EXPECT_EQ(out, expected);
  }
  EXPECT_GT(replicated.experts().stats().resends, 0);
  EXPECT_GT(replicated.server(1).stats().requests, 0);

  Cluster single(*model_, 2, 1, DType::kBF16);
  single.transport(1).Shutdown();
  const absl::Status status = single.Compute(b, layer_, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("no reachable expert worker"));
  EXPECT_EQ(single.experts().stats().failures, 1);
}

// A worker that stops answering (requests held, never answered): with a
// replica its rows go there after the attempt timeout and it is reported;
// without one the layer fails UNAVAILABLE naming it after `timeout`.
TEST_P(ExpertsTest, AHungWorkerIsRoutedAroundOrUnavailable) {
  const Batch b = RandomBatch(*model_, 16, 13);
  const std::vector<float> expected = Reference(b);
  std::vector<float> out;
  Hang hang;
  std::vector<std::pair<std::string, std::string>> reports;
  RemoteExpertsOptions options{.timeout = absl::Seconds(2),
                               .attempt_timeout = absl::Milliseconds(100),
                               .on_suspect = [&](const std::string& id, const std::string& why) {
                                 reports.emplace_back(id, why);
                               }};
  Cluster replicated(*model_, 2, 2, DType::kBF16, options);
  replicated.transport(0).SetRequestHandler(hang.Handler());
  const absl::Time start = absl::Now();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(replicated.Compute(b, layer_, &out).ok());
    EXPECT_EQ(out, expected);
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "no call waited for the hung worker";
  EXPECT_EQ(replicated.experts().stats().attempt_timeouts, 1) << "then avoided";
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].first, "w0");
  EXPECT_THAT(reports[0].second, HasSubstr("no answer to a dispatch of layer"));

  reports.clear();
  Cluster single(*model_, 2, 1, DType::kBF16, options);
  single.transport(1).SetRequestHandler(hang.Handler());
  const absl::Status status = single.Compute(b, layer_, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("expert worker w1"));
  EXPECT_THAT(status.message(), HasSubstr("no answer within 2s"));
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].first, "w1");
  hang.Release();
}

// A slow worker is not given up on. Worker 0 answers only after 300 ms and
// worker 1 hangs: the rows go to worker 0 first, miss their 100 ms
// deadline, go to worker 1 too, miss it again, and worker 0's late answer
// serves — only the hung worker is reported. Next call, worker 1 is
// avoided and worker 0, late again with no replica left, is waited for.
TEST_P(ExpertsTest, ASlowReplicaServesWhileAnotherHangs) {
  const Batch b = RandomBatch(*model_, 16, 17);
  const std::vector<float> expected = Reference(b);
  std::vector<float> out;
  Hang hang;
  std::vector<std::string> reported;
  RemoteExpertsOptions options{.timeout = absl::Seconds(5),
                               .attempt_timeout = absl::Milliseconds(100),
                               .on_suspect = [&](const std::string& id, const std::string&) {
                                 reported.push_back(id);
                               }};
  Cluster cluster(*model_, 2, 2, DType::kBF16, options, {absl::Milliseconds(300)});
  cluster.transport(1).SetRequestHandler(hang.Handler());
  for (int call = 0; call < 2; ++call) {
    SCOPED_TRACE(call);
    const absl::Time start = absl::Now();
    ASSERT_TRUE(cluster.Compute(b, layer_, &out).ok());
    EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "nothing waited for `timeout`";
    EXPECT_EQ(out, expected);
    EXPECT_EQ(reported, std::vector<std::string>{"w1"});
  }
  const RemoteRoutedExperts::Stats stats = cluster.experts().stats();
  EXPECT_EQ(stats.attempt_timeouts, 3) << "worker 0 twice, worker 1 once";
  EXPECT_EQ(stats.failures, 0);
  EXPECT_GT(stats.resends, 0);
  EXPECT_EQ(cluster.server(0).stats().requests, 2);
  EXPECT_EQ(hang.Release(), 1u);
}

// A worker that answers with errors (here: as a worker of another model
// would) is that worker's failure: its rows go to a replica, and without
// one the layer fails UNAVAILABLE naming it — never the caller's own
// (fatal) error.
TEST_P(ExpertsTest, AWorkerAnsweringErrorsIsRoutedAround) {
  const Batch b = RandomBatch(*model_, 16, 11);
  auto refuse = [](transport::IncomingRequest request) {
    request.RespondError(absl::InvalidArgumentError("dispatch hidden size 64 != the model's 32"));
  };
  const std::vector<float> expected = Reference(b);
  std::vector<float> out;
  Cluster replicated(*model_, 2, 2, DType::kBF16);
  replicated.transport(0).SetRequestHandler(refuse);
  ASSERT_TRUE(replicated.Compute(b, layer_, &out).ok());
  EXPECT_EQ(out, expected);
  EXPECT_GT(replicated.experts().stats().resends, 0);

  Cluster single(*model_, 2, 1, DType::kBF16);
  single.transport(1).SetRequestHandler(refuse);
  const absl::Status status = single.Compute(b, layer_, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("last failure"));
  EXPECT_THAT(status.message(), HasSubstr("hidden size 64"));
}

TEST_P(ExpertsTest, TokensReachAtMostTopkGroupWorkers) {
  const ModelConfig& c = model_->config();
  const int64_t workers = c.n_group > 1 ? c.n_group : 3;
  Cluster cluster(*model_, workers, 1, DType::kBF16);
  std::vector<float> out;
  ASSERT_TRUE(cluster.Compute(RandomBatch(*model_, 64, 3), layer_, &out).ok());
  const RemoteRoutedExperts::Stats stats = cluster.experts().stats();
  EXPECT_EQ(stats.tokens, 64);
  if (c.n_group > 1) {
    EXPECT_LE(stats.max_workers_per_token, c.topk_group);
    EXPECT_GE(stats.max_workers_per_token, 2);  // The bound is reached, not trivially met.
  }
  EXPECT_LE(stats.max_workers_per_token, std::min<int64_t>(workers, c.num_experts_per_tok));
}

// What the metrics show of the data plane, against figures counted here:
// the fan-out histogram, the tokens per expert, the traffic each side
// counted with the other and the round trips.
TEST_P(ExpertsTest, StatsAccountForEveryTokenExpertAndFrame) {
  const ModelConfig& c = model_->config();
  const int64_t workers = c.n_group > 1 ? c.n_group : 3;
  Cluster cluster(*model_, workers, 1, DType::kBF16);
  std::vector<float> out;
  const Batch a = RandomBatch(*model_, 40, 7), b = RandomBatch(*model_, 24, 8);
  ASSERT_TRUE(cluster.Compute(a, layer_, &out).ok());
  ASSERT_TRUE(cluster.Compute(b, layer_, &out).ok());
  const RemoteRoutedExperts::Stats stats = cluster.experts().stats();

  EXPECT_EQ(stats.workers_per_token.count(), 64u);
  EXPECT_EQ(stats.workers_per_token.sum(), static_cast<double>(stats.token_workers));
  const std::vector<uint64_t>& fan_out = stats.workers_per_token.counts();
  for (size_t i = static_cast<size_t>(stats.max_workers_per_token); i < fan_out.size(); ++i) {
    EXPECT_EQ(fan_out[i], 0u) << "a token reached more than the maximum, bucket " << i;
  }
  EXPECT_GT(fan_out[stats.max_workers_per_token - 1], 0u);
  EXPECT_EQ(stats.wait.count(), 2u);  // One per Compute.

  // Tokens per expert: exactly the ids given, in this layer only.
  std::vector<int64_t> expected(c.n_routed_experts, 0);
  for (const Batch* batch : {&a, &b}) {
    for (int32_t id : batch->ids) ++expected[id];
  }
  const std::vector<ExpertLoad::Layer> load = cluster.experts().load().Snapshot();
  ASSERT_EQ(load.size(), 1u);
  EXPECT_EQ(load[0].layer, layer_);
  EXPECT_EQ(load[0].tokens, expected);
  const int64_t busiest = *std::max_element(expected.begin(), expected.end());
  EXPECT_DOUBLE_EQ(load[0].imbalance,
                   static_cast<double>(busiest) * c.n_routed_experts / (64.0 * c.num_experts_per_tok));

  // Traffic: what the client sent each worker is what that worker received,
  // and every answer it sent came back with a round trip.
  int64_t sent = 0;
  ASSERT_FALSE(stats.peers.empty());
  for (int64_t w = 0; w < workers; ++w) {
    SCOPED_TRACE(w);
    const auto it = stats.peers.find(cluster.route().ids[w]);
    const ExpertServer::Stats server = cluster.server(w).stats();
    if (it == stats.peers.end()) {
      EXPECT_TRUE(server.peers.empty());
      continue;
    }
    const transport::PeerTraffic& mine = it->second.traffic;
    ASSERT_EQ(server.peers.size(), 1u);
    const transport::PeerTraffic& theirs = server.peers.at(cluster.client().id());
    EXPECT_EQ(mine.messages_sent, theirs.messages_received);
    EXPECT_EQ(mine.bytes_sent, theirs.bytes_received);
    EXPECT_EQ(mine.messages_received, theirs.messages_sent);
    EXPECT_EQ(mine.bytes_received, theirs.bytes_sent);
    EXPECT_EQ(mine.messages_sent, server.requests);
    EXPECT_EQ(it->second.round_trip.count(), static_cast<uint64_t>(mine.messages_received));
    EXPECT_GT(it->second.round_trip.sum(), 0.0);
    sent += mine.messages_sent;
  }
  EXPECT_EQ(sent, stats.dispatches);
}

TEST(ExpertLoadTest, ImbalanceCoversTheRecentWindowAndBadIdsAreSkipped) {
  ExpertLoad load(/*num_layers=*/3, /*num_experts=*/4, /*window_tokens=*/2);
  EXPECT_TRUE(load.Snapshot().empty());
  const int32_t skewed[] = {0, 1, 0, 2};  // 2 tokens, k = 2.
  load.Record(1, 2, 2, skewed);
  std::vector<ExpertLoad::Layer> s = load.Snapshot();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].layer, 1);
  EXPECT_EQ(s[0].tokens, (std::vector<int64_t>{2, 1, 1, 0}));
  EXPECT_DOUBLE_EQ(s[0].imbalance, 2.0 / (4.0 / 4));
  // The window holds this half and the last: the skew stays while an even
  // half arrives, and leaves when a second even half pushes it out.
  const int32_t even[] = {0, 1, 2, 3};
  load.Record(1, 2, 2, even);
  s = load.Snapshot();
  EXPECT_EQ(s[0].tokens, (std::vector<int64_t>{3, 2, 2, 1}));
  EXPECT_DOUBLE_EQ(s[0].imbalance, 3.0 / (8.0 / 4));
  load.Record(1, 2, 2, even);
  EXPECT_DOUBLE_EQ(load.Snapshot()[0].imbalance, 1.0);
  // Out-of-range ids and layers are not counted.
  const int32_t bad[] = {-1, 4};
  load.Record(1, 1, 2, bad);
  load.Record(7, 2, 2, even);
  load.Record(-1, 2, 2, even);
  s = load.Snapshot();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].tokens, (std::vector<int64_t>{4, 3, 3, 2}));
}

TEST_P(ExpertsTest, MalformedDispatchesAreRefusedAndServingGoesOn) {
  Cluster cluster(*model_, 1, 1, DType::kF32);
  const ModelConfig& c = model_->config();
  const int64_t hidden = c.hidden_size;
  std::vector<uint8_t> act(hidden * 2, 0);
  auto call = [&](uint32_t layer, uint32_t hidden_size, std::vector<int32_t> ids,
                  std::vector<float> weights) {
    std::vector<uint8_t> activations(hidden_size * 2, 0);
    auto dispatch = transport::MakeDispatch({.layer = layer}, hidden_size, 1, DType::kBF16,
                                            activations, ids, weights, nullptr);
    EXPECT_TRUE(dispatch.ok()) << dispatch.status();
    return transport::CallAndWait(cluster.client(), cluster.transport(0).address(),
                                  *std::move(dispatch), absl::Seconds(5));
  };
  auto bad_id = call(layer_, hidden, {static_cast<int32_t>(c.n_routed_experts)}, {0.5f});
  EXPECT_EQ(bad_id.status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_hidden = call(layer_, hidden + 1, {0}, {0.5f});
  EXPECT_EQ(bad_hidden.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_hidden.status().message(), HasSubstr("hidden size"));
  auto dense_layer = call(0, hidden, {0}, {0.5f});  // Layer 0 is dense in both models.
  EXPECT_EQ(dense_layer.status().code(), absl::StatusCode::kInvalidArgument);
  auto nan_weight = call(layer_, hidden, {0}, {std::nanf("")});
  EXPECT_EQ(nan_weight.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cluster.server(0).stats().invalid_requests, 4);
  auto good = call(layer_, hidden, {0}, {0.5f});
  EXPECT_TRUE(good.ok()) << good.status();
  std::vector<float> out;
  EXPECT_TRUE(cluster.Compute(RandomBatch(*model_, 4, 1), layer_, &out).ok());
}

// The requests waiting for the compute thread are bounded: while a batch
// window holds the queue, a dispatch beyond the byte bound is answered
// RESOURCE_EXHAUSTED at once, and the queued one is computed.
TEST_P(ExpertsTest, TheQueueIsBoundedAndTheOverflowIsResourceExhausted) {
  auto network = InProcessNetwork::Create();
  auto server_transport = *InProcessTransport::Create(network, {.id = 10});
  auto client = *InProcessTransport::Create(network, {.id = 1});
  const int64_t hidden = model_->config().hidden_size;
  ExpertServer server(*model_, *server_transport,
                      {.batch_window = absl::Milliseconds(500),
                       .max_queued_bytes = static_cast<size_t>(hidden) * 2 + 64});
  auto dispatch = [&] {
    std::vector<uint8_t> activations(hidden * 2, 0);
    return *transport::MakeDispatch({.layer = static_cast<uint32_t>(layer_)},
                                    static_cast<uint32_t>(hidden), 1, DType::kBF16, activations,
                                    {0}, {0.5f}, nullptr);
  };
  auto first = transport::CallFuture(*client, server_transport->address(), dispatch(),
                                     absl::Now() + absl::Seconds(10));
  // The first is queued (its window runs); the second does not fit.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (server.stats().queued == 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_EQ(server.stats().queued, 1);
  const absl::Status second =
      transport::CallAndWait(*client, server_transport->address(), dispatch(), absl::Seconds(10))
          .status();
  EXPECT_EQ(second.code(), absl::StatusCode::kResourceExhausted) << second;
  EXPECT_TRUE(first.get().ok());
  EXPECT_EQ(server.stats().overloaded, 1);
  EXPECT_EQ(server.stats().requests, 1);
}

INSTANTIATE_TEST_SUITE_P(Models, ExpertsTest, ::testing::Values("tiny-v2", "tiny-lite"));

}  // namespace
}  // namespace dsv2
