// What the metrics add to a decode step, on a real-dimension checkpoint
// (`dsv2 make-model --preset lite --layers 4`) at batch B (default 32), with
// the routed experts computed through RemoteRoutedExperts over the
// in-process data plane as dsv2-standalone computes them:
//  - the step: ForwardBatch of B sequences' next tokens (median of --steps);
//  - the metrics work of that step, timed alone over many repetitions with
//    the step's own routing: the engine observer's calls (one OnStep, B
//    OnNextToken), and the data plane's accounting that RemoteRoutedExperts
//    does in every MoE call (ExpertLoad::Record of the layer's routing, the
//    fan-out, wait and round-trip observations, the per-peer counts);
//  - a scrape: everything dsv2-standalone exports, collected and
//    serialized to the text format, charged to the steps of one scrape
//    interval (--scrape-interval-s, default 10 s: Prometheus's default
//    global interval is 60 s, the dashboards here use 1 s).
// The total is printed as a share of the step, against the 1 % budget.
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/stats.h"
#include "common/cluster/expert_placement.h"
#include "common/experts/expert_load.h"
#include "common/experts/expert_server.h"
#include "common/experts/remote_experts.h"
#include "common/metrics/metrics_registry.h"
#include "common/metrics/serving_metrics.h"
#include "common/model/deepseek_v2.h"
#include "common/model/latent_kv_cache.h"
#include "common/transport/inprocess_transport.h"

namespace dsv2::bench {
namespace {

// Keeps the routing of the latest step, per MoE layer, and passes the call on.
class RecordingExperts : public RoutedExperts {
 public:
  explicit RecordingExperts(std::shared_ptr<RoutedExperts> inner) : inner_(std::move(inner)) {}

  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* w, float* out, absl::FunctionRef<void()> meanwhile) override {
    routing_[layer] = {n, k, std::vector<int32_t>(ids, ids + n * k)};
    return inner_->Compute(layer, x, n, k, ids, w, out, meanwhile);
  }

  struct Routing {
    int64_t n = 0, k = 0;
    std::vector<int32_t> ids;
  };
  const std::map<int64_t, Routing>& routing() const { return routing_; }

 private:
  std::shared_ptr<RoutedExperts> inner_;
  std::map<int64_t, Routing> routing_;
};

int Main(int argc, char** argv) {
  Flags flags(argc, argv);
  const int64_t batch = flags.GetInt("batch", 32, 1, 4096);
  const int steps = static_cast<int>(flags.GetInt("steps", 8, 1, 1 << 20));
  const int64_t context = flags.GetInt("context", 64, 1, 1 << 20);
  const double scrape_interval =
      static_cast<double>(flags.GetInt("scrape-interval-s", 10, 1, 86400));
  if (const std::optional<int> stop = flags.StopForUsage(
          "metrics_cost_bench", {"model", "batch", "steps", "context", "scrape-interval-s"},
          "usage: metrics_cost_bench --model DIR [--batch 32] [--steps 8] [--context 64]\n"
          "                          [--scrape-interval-s 10]\n",
          /*invalid=*/flags.Get("model", "").empty())) {
    return *stop;
  }

  auto loaded = DeepseekV2Model::Load(flags.Get("model", ""));
  if (!loaded.ok()) {
    std::fprintf(stderr, "metrics_cost_bench: %s\n",
                 std::string(loaded.status().message()).c_str());
    return 1;
  }
  DeepseekV2Model& model = **loaded;
  const ModelConfig& config = model.config();
  model.checkpoint().Prefault([](int64_t, int64_t) {});

  // dsv2-standalone's data plane: one in-process expert server.
  auto network = transport::InProcessNetwork::Create();
  auto expert_side = transport::InProcessTransport::Create(network, {.id = 2, .name = "experts"});
  auto attention_side =
      transport::InProcessTransport::Create(network, {.id = 1, .name = "attention"});
  if (!expert_side.ok() || !attention_side.ok()) return 1;
  ExpertServer server(model, **expert_side, {});
  auto remote =
      std::make_shared<RemoteRoutedExperts>(config, **attention_side, RemoteExpertsOptions{});
  auto route = std::make_shared<ExpertRoute>();
  route->placement = *PlaceExperts(config, 1, 1);
  route->ids = {"experts"};
  route->addresses = {(*expert_side)->address()};
  route->alive = {true};
  remote->SetRoute(route);
  auto recording = std::make_shared<RecordingExperts>(remote);
  model.SetRoutedExperts(recording);

  // The step.
  std::mt19937 rng(1);
  std::vector<std::unique_ptr<LatentKvCache>> caches;
  std::vector<int32_t> next(batch);
  std::vector<float> logits;
  for (int64_t s = 0; s < batch; ++s) {
    caches.push_back(std::make_unique<LatentKvCache>(config, context + steps + 2));
    std::vector<int32_t> prompt(context);
    for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % config.vocab_size);
    if (!model.Forward(prompt, *caches.back(), {.attention = AttentionForm::kDecompressed}, &logits)
             .ok()) {
      return 1;
    }
    next[s] = static_cast<int32_t>(rng() % config.vocab_size);
  }
  std::vector<double> times;
  for (int step = 0; step < steps; ++step) {
    std::vector<SequenceChunk> chunks;
    for (int64_t s = 0; s < batch; ++s) {
      chunks.push_back({{&next[s], 1}, caches[s].get(), AttentionForm::kAbsorbed});
    }
    const double start = NowSeconds();
    if (!model.ForwardBatch(chunks, &logits).ok()) return 1;
    times.push_back(NowSeconds() - start);
    for (int64_t s = 0; s < batch; ++s) next[s] = static_cast<int32_t>(rng() % config.vocab_size);
  }
  const double step_s = Median(times);

  // The metrics work of one step, alone, with that step's routing.
  auto registry = std::make_shared<MetricsRegistry>();
  ServingMetrics serving(*registry);
  ExpertLoad load(config.num_hidden_layers, config.n_routed_experts);
  RemoteRoutedExperts::Stats stats;
  const int kReps = 2000;
  const double work_start = NowSeconds();
  for (int rep = 0; rep < kReps; ++rep) {
    serving.OnStep(batch);
    for (int64_t s = 0; s < batch; ++s) serving.OnNextToken(0.05);
    for (const auto& [layer, r] : recording->routing()) {
      // What RemoteRoutedExperts::Compute adds: the load, and a call's
      // share of the stats merged into the totals.
      load.Record(layer, r.n, r.k, r.ids.data());
      RemoteRoutedExperts::Stats call;
      for (int64_t t = 0; t < r.n; ++t) call.workers_per_token.Observe(1);
      call.wait.Observe(0.001);
      RemoteRoutedExperts::PeerStats& peer = call.peers["experts"];
      ++peer.traffic.messages_sent;
      peer.traffic.bytes_sent += 4096;
      ++peer.traffic.messages_received;
      peer.traffic.bytes_received += 4096;
      peer.round_trip.Observe(0.001);
      stats.workers_per_token.Add(call.workers_per_token);
      stats.wait.Add(call.wait);
      for (const auto& [id, p] : call.peers) {
        stats.peers[id].traffic += p.traffic;
        stats.peers[id].round_trip.Add(p.round_trip);
      }
    }
  }
  const double work_s = (NowSeconds() - work_start) / kReps;

  // A scrape of what dsv2-standalone exports (the step's figures in it).
  MetricsCollector collector = registry->AddCollector([&](auto* out) {
    CollectEngineStats(EngineStats{}, out);
    CollectDataPlane(*remote, (*attention_side)->counters(), 4096, out);
    CollectExpertServer(server.stats(), out);
  });
  std::vector<double> scrapes;
  size_t text_bytes = 0;
  for (int i = 0; i < 20; ++i) {
    const double start = NowSeconds();
    text_bytes = registry->Text().size();
    scrapes.push_back(NowSeconds() - start);
  }
  const double scrape_s = Median(scrapes);
  const double scrape_per_step = scrape_s * step_s / scrape_interval;

  const double total = work_s + scrape_per_step;
  std::printf("model %s: %lld layers, %lld routed experts (%lld per token), batch %lld\n",
              flags.Get("model", "").c_str(), (long long)config.num_hidden_layers,
              (long long)config.n_routed_experts, (long long)config.num_experts_per_tok,
              (long long)batch);
  std::printf("decode step (RemoteRoutedExperts, in-process data plane): %.2f ms (median of %d)\n",
              step_s * 1e3, steps);
  std::printf("metrics work per step (observer + data-plane accounting): %.2f us\n", work_s * 1e6);
  std::printf("scrape (%zu bytes of text): %.2f ms; per step at one scrape per %.0f s: %.3f us\n",
              text_bytes, scrape_s * 1e3, scrape_interval, scrape_per_step * 1e6);
  std::printf("metrics cost: %.4f %% of the step (budget: 1 %%)\n", 100.0 * total / step_s);
  return 0;
}

}  // namespace
}  // namespace dsv2::bench

int main(int argc, char** argv) { return dsv2::bench::Main(argc, argv); }
