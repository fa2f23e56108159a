#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/cluster/cluster_state.h"
#include "common/experts/expert_server.h"
#include "common/experts/remote_experts.h"
#include "common/metrics/metrics_registry.h"
#include "common/metrics/metrics_test_util.h"
#include "common/metrics/process_metrics.h"
#include "common/metrics/serving_metrics.h"
#include "common/transport/inprocess_transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;
using testutil::Sample;

TEST(ProcessMetricsTest, ReadsThisProcessFromProc) {
  std::vector<prometheus::MetricFamily> families;
  CollectProcessMetrics(&families);
  auto value = [&](const std::string& name) {
    for (const auto& f : families) {
      if (f.name == name) return f.type == prometheus::MetricType::Counter ? f.metric[0].counter.value
                                                                          : f.metric[0].gauge.value;
    }
    ADD_FAILURE() << "no " << name;
    return -1.0;
  };
  EXPECT_EQ(value("process_threads"), 1);  // gtest runs on the main thread only.
  std::thread extra([] {});
  extra.join();
  EXPECT_GT(value("process_resident_memory_bytes"), 1 << 20);
  EXPECT_GT(value("process_virtual_memory_bytes"), value("process_resident_memory_bytes"));
  const double fds = value("process_open_fds");
  const int fd = open("/dev/null", O_RDONLY);
  families.clear();
  CollectProcessMetrics(&families);
  EXPECT_EQ(value("process_open_fds"), fds + 1);
  close(fd);
  const double now = std::chrono::duration<double>(
      std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_LE(value("process_start_time_seconds"), now + 1);
  EXPECT_GT(value("process_start_time_seconds"), now - 600);
  // Burn 0.3 s of this process's CPU time (however busy the machine): the
  // counter moves by about that (its resolution is a clock tick, 10 ms).
  const double cpu = value("process_cpu_seconds_total");
  auto cpu_now = [] {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
  };
  const double until = cpu_now() + 0.3;
  volatile uint64_t spin = 0;
  while (cpu_now() < until) spin = spin + 1;
  families.clear();
  CollectProcessMetrics(&families);
  EXPECT_GT(value("process_cpu_seconds_total"), cpu + 0.25);
  EXPECT_GT(value("process_max_fds"), fds);
}

TEST(MetricsRegistryTest, CollectorsRunUntilTheirHandleIsGone) {
  auto registry = std::make_shared<MetricsRegistry>(/*process_metrics=*/false);
  int calls = 0;
  {
    MetricsCollector handle = registry->AddCollector([&](auto* out) {
      ++calls;
      prometheus::MetricFamily f = GaugeFamily("dsv2:test_value", "A test.");
      AddSample(&f, 42, {{"kind", "x"}});
      out->push_back(std::move(f));
    });
    EXPECT_EQ(Sample(registry->Text(), "dsv2:test_value{kind=\"x\"}"), 42);
    EXPECT_EQ(calls, 1);
  }
  EXPECT_THAT(registry->Text(), Not(HasSubstr("dsv2:test_value")));
  EXPECT_EQ(calls, 1);
}

TEST(ServingMetricsTest, ObservationsAndStatsAppearWithVllmNamesAndUnits) {
  auto registry = std::make_shared<MetricsRegistry>(false);
  ServingMetrics serving(*registry);
  serving.OnStep(7);
  serving.OnFirstToken(0.15);
  serving.OnNextToken(0.02);
  serving.OnNextToken(0.03);
  serving.OnFinished({.reason = FinishReason::kLength, .prompt_tokens = 7, .generation_tokens = 3,
                      .e2e_s = 0.3, .queue_s = 0.05, .scheduled = true, .prefill_s = 0.1,
                      .decode_s = 0.05});
  // Ended while waiting: no prefill or decode observation.
  serving.OnFinished({.reason = FinishReason::kAbort, .prompt_tokens = 4, .e2e_s = 0.2, .queue_s = 0.2});
  EngineStats stats;
  stats.running = 2;
  stats.waiting = 5;
  stats.kv_usage = 0.25;
  stats.generation_tokens = 3;
  stats.finished[static_cast<int>(FinishReason::kLength)] = 1;
  stats.finished[static_cast<int>(FinishReason::kAbort)] = 1;
  stats.rejected_queue_full = 4;
  MetricsCollector c = registry->AddCollector([&](auto* out) { CollectEngineStats(stats, out); });
  const std::string text = registry->Text();
  EXPECT_EQ(Sample(text, "dsv2:time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(Sample(text, "dsv2:time_to_first_token_seconds_bucket{le=\"0.1\"}"), 0);
  EXPECT_EQ(Sample(text, "dsv2:time_to_first_token_seconds_bucket{le=\"0.2\"}"), 1);
  EXPECT_EQ(Sample(text, "dsv2:inter_token_latency_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(Sample(text, "dsv2:inter_token_latency_seconds_sum"), 0.05);
  EXPECT_EQ(Sample(text, "dsv2:e2e_request_latency_seconds_count"), 2);
  EXPECT_EQ(Sample(text, "dsv2:request_queue_time_seconds_count"), 2);
  EXPECT_EQ(Sample(text, "dsv2:request_prefill_time_seconds_count"), 1);
  EXPECT_EQ(Sample(text, "dsv2:request_decode_time_seconds_count"), 1);
  EXPECT_EQ(Sample(text, "dsv2:request_generation_tokens_sum"), 3);
  EXPECT_EQ(Sample(text, "dsv2:request_prompt_tokens_sum"), 11);
  EXPECT_EQ(Sample(text, "dsv2:iteration_tokens_total_sum"), 7);
  EXPECT_EQ(Sample(text, "dsv2:num_requests_running"), 2);
  EXPECT_EQ(Sample(text, "dsv2:num_requests_waiting"), 5);
  EXPECT_EQ(Sample(text, "dsv2:kv_cache_usage_perc"), 0.25);
  EXPECT_EQ(Sample(text, "dsv2:generation_tokens_total"), 3);
  EXPECT_EQ(Sample(text, "dsv2:request_success_total{finished_reason=\"length\"}"), 1);
  EXPECT_EQ(Sample(text, "dsv2:request_success_total{finished_reason=\"abort\"}"), 1);
  EXPECT_EQ(Sample(text, "dsv2:request_success_total{finished_reason=\"stop\"}"), 0);
  EXPECT_EQ(Sample(text, "dsv2:request_rejected_total{cause=\"queue_full\"}"), 4);
  EXPECT_THAT(text, HasSubstr("# TYPE dsv2:prompt_tokens_total counter"));
  EXPECT_THAT(text, HasSubstr("# TYPE dsv2:kv_cache_usage_perc gauge"));
}

// The data-plane set of an attention side talking to one expert server:
// tokens per expert sum to tokens × k, the fan-out and round-trip
// histograms count what was sent, and the per-expert series obey the limit.
TEST(DataPlaneMetricsTest, ExpertLoadFanOutAndPeerTrafficAreExported) {
  auto model = DeepseekV2Model::Load("tests/data/tiny-v2");
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  auto network = transport::InProcessNetwork::Create();
  auto server_side = transport::InProcessTransport::Create(network, {.id = 2});
  auto client_side = transport::InProcessTransport::Create(network, {.id = 1});
  ASSERT_TRUE(server_side.ok() && client_side.ok());
  ExpertServer server(**model, **server_side, {});
  RemoteRoutedExperts experts(c, **client_side, {});
  auto route = std::make_shared<ExpertRoute>();
  route->placement = *PlaceExperts(c, 1, 1);
  route->ids = {"expert-1"};
  route->addresses = {(*server_side)->address()};
  route->alive = {true};
  experts.SetRoute(route);
  int64_t layer = 0;
  while (!(*model)->weights().layers[layer].is_moe) ++layer;
  const int64_t n = 5, k = c.num_experts_per_tok;
  std::vector<float> x(n * c.hidden_size, 0.5f), out(x.size());
  std::vector<int32_t> ids(n * k);
  std::vector<float> weights(n * k, 0.25f);
  for (int64_t i = 0; i < n * k; ++i) ids[i] = static_cast<int32_t>(i % c.n_routed_experts);
  ASSERT_TRUE(experts.Compute(layer, x.data(), n, k, ids.data(), weights.data(), out.data(), [] {})
                  .ok());

  auto registry = std::make_shared<MetricsRegistry>(false);
  int64_t limit = 1 << 20;
  MetricsCollector collector = registry->AddCollector(
      [&](auto* families) { CollectDataPlane(experts, (*client_side)->counters(), limit, families); });
  std::string text = registry->Text();
  const std::string l = "layer=\"" + std::to_string(layer) + "\"";
  double per_expert = 0;
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    per_expert += Sample(text, "dsv2:moe_expert_tokens_total{" + l + ",expert=\"" +
                                   std::to_string(e) + "\"}");
  }
  EXPECT_EQ(per_expert, n * k);
  EXPECT_GE(Sample(text, "dsv2:moe_expert_imbalance{" + l + "}"), 1.0);
  EXPECT_EQ(Sample(text, "dsv2:moe_workers_per_token_count"), n);
  EXPECT_EQ(Sample(text, "dsv2:moe_workers_per_token_bucket{le=\"1\"}"), n);  // One worker.
  EXPECT_EQ(Sample(text, "dsv2:moe_wait_seconds_count"), 1);
  EXPECT_EQ(Sample(text, "dsv2:data_plane_round_trip_seconds_count{peer=\"expert-1\"}"), 1);
  const ExpertServer::Stats served = server.stats();
  EXPECT_EQ(Sample(text, "dsv2:data_plane_peer_bytes_total{peer=\"expert-1\",direction=\"sent\"}"),
            served.peers.at(1).bytes_received);
  EXPECT_EQ(
      Sample(text, "dsv2:data_plane_peer_messages_total{peer=\"expert-1\",direction=\"received\"}"),
      1);
  EXPECT_THAT(text, HasSubstr("# TYPE dsv2:moe_workers_per_token histogram"));

  limit = c.n_routed_experts - 1;  // One MoE layer has routed: one series too many.
  text = registry->Text();
  EXPECT_THAT(text, Not(HasSubstr("dsv2:moe_expert_tokens_total")));
  EXPECT_THAT(text, HasSubstr("dsv2:moe_expert_imbalance{"));
}

}  // namespace
}  // namespace dsv2
