// The serving metric set, named after vLLM's (`vllm:` → `dsv2:`, same
// meaning and units) so that dashboards, alerts and autoscalers written for
// vLLM find them; every metric is listed in docs/observability.md.
//
// ServingMetrics declares the histograms once and is the engine's
// EngineObserver; CollectEngineStats turns an Engine::stats() snapshot into
// the gauges and counters at scrape time. The data-plane and expert-server
// collectors do the same for the disaggregation figures.
//
// Usage (a process running an Engine):
//   ServingMetrics serving(*registry);
//   options.observer = &serving;            // before the engine is built
//   Engine engine(..., options);
//   MetricsCollector c = registry->AddCollector(
//       [&engine](auto* out) { CollectEngineStats(engine.stats(), out); });
//
// Thread safety: the observer methods may be called from any thread.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/engine/engine.h"
#include "common/experts/expert_server.h"
#include "common/experts/remote_experts.h"
#include "common/metrics/metrics_registry.h"
#include "common/transport/transport.h"
#include "prometheus/histogram.h"

namespace dsv2 {

// Bucket bounds, seconds or tokens. Latency buckets contain the thresholds
// people alert on (TTFT 0.1, 0.2, 0.5, 1, 2, 5 s; ITL 25, 50, 100 ms).
const std::vector<double>& TimeToFirstTokenBuckets();
const std::vector<double>& InterTokenLatencyBuckets();
const std::vector<double>& RequestLatencyBuckets();
const std::vector<double>& TokenCountBuckets();

class ServingMetrics : public EngineObserver {
 public:
  // Registers the histograms in `registry` (once per registry).
  explicit ServingMetrics(MetricsRegistry& registry);

  void OnStep(int64_t tokens) override;
  void OnFirstToken(double seconds) override;
  void OnNextToken(double seconds) override;
  void OnFinished(const FinishedRequest& request) override;

 private:
  prometheus::Histogram& time_to_first_token_;
  prometheus::Histogram& inter_token_latency_;
  prometheus::Histogram& e2e_latency_;
  prometheus::Histogram& queue_time_;
  prometheus::Histogram& prefill_time_;
  prometheus::Histogram& decode_time_;
  prometheus::Histogram& prompt_tokens_;
  prometheus::Histogram& generation_tokens_;
  prometheus::Histogram& iteration_tokens_;
};

// dsv2:num_requests_running, _waiting, kv cache usage and blocks, prefix
// cache queries and hits, preemptions, prompt and generation tokens,
// requests by finished_reason, admission rejections by cause.
void CollectEngineStats(const EngineStats& stats, std::vector<prometheus::MetricFamily>* out);

// The attention side of the data plane (an attention worker, or
// dsv2-standalone): MoE calls, the fan-out and wait histograms, dispatches,
// resends, failures, attempt timeouts, the routed experts' load per layer
// (tokens per expert only while layers × experts <= `expert_series_limit`),
// traffic and round trips per expert worker, and the transport's messages,
// bytes and drops.
void CollectDataPlane(const RemoteRoutedExperts& experts,
                      const transport::TransportCounters& transport, int64_t expert_series_limit,
                      std::vector<prometheus::MetricFamily>* out);

// An expert server (a dsv2-expert, or the one inside dsv2-standalone).
void CollectExpertServer(const ExpertServer::Stats& stats,
                         std::vector<prometheus::MetricFamily>* out);

// The controller's view: its epoch, the map's version and whether it is
// complete, workers by role and state (alive, suspect, draining, dead),
// lease expiries and suspect marks.
void CollectCluster(uint64_t epoch, const ClusterMap& map, const ClusterState::Counters& counters,
                    std::vector<prometheus::MetricFamily>* out);

// dsv2:data_plane_peer_messages_total and dsv2:data_plane_peer_bytes_total,
// by peer (a worker id) and direction. CollectDataPlane includes the
// attention side's; dsv2-expert adds its own (ExpertServer::Stats::peers).
void CollectPeerTraffic(const std::vector<std::pair<std::string, transport::PeerTraffic>>& peers,
                        std::vector<prometheus::MetricFamily>* out);

// The transport counters alone (dsv2-expert, which dispatches nothing).
void CollectTransport(const transport::TransportCounters& transport,
                      std::vector<prometheus::MetricFamily>* out);

}  // namespace dsv2
