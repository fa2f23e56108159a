#include "common/metrics/serving_metrics.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dsv2 {
namespace {

prometheus::Histogram& MakeHistogram(MetricsRegistry& registry, const std::string& name,
                                     const std::string& help, const std::vector<double>& buckets) {
  return prometheus::BuildHistogram()
      .Name(name)
      .Help(help)
      .Register(registry.registry())
      .Add({}, buckets);
}

}  // namespace

const std::vector<double>& TimeToFirstTokenBuckets() {
  static const std::vector<double> b = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06,  0.08, 0.1,
                                        0.2,   0.25,  0.5,  0.75, 1.0,  2.0,   2.5,  5.0,
                                        7.5,   10.0,  20.0, 40.0, 80.0, 160.0, 640.0};
  return b;
}

const std::vector<double>& InterTokenLatencyBuckets() {
  static const std::vector<double> b = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                        0.15,  0.2,    0.3,   0.4,  0.5,   0.75, 1.0,   2.5,
                                        5.0,   7.5,    10.0,  20.0, 40.0,  80.0};
  return b;
}

const std::vector<double>& RequestLatencyBuckets() {
  static const std::vector<double> b = {0.01, 0.05, 0.1,   0.3,   0.5,   0.8,   1.0,    1.5,
                                        2.0,  2.5,  5.0,   10.0,  15.0,  20.0,  30.0,   40.0,
                                        50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  return b;
}

const std::vector<double>& TokenCountBuckets() {
  static const std::vector<double> b = {1,    2,    5,    10,    20,    50,    100,    200,   500,
                                        1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000};
  return b;
}

ServingMetrics::ServingMetrics(MetricsRegistry& registry)
    : time_to_first_token_(MakeHistogram(registry, "dsv2:time_to_first_token_seconds",
                                         "Histogram of time to first token in seconds.",
                                         TimeToFirstTokenBuckets())),
      inter_token_latency_(MakeHistogram(registry, "dsv2:inter_token_latency_seconds",
                                         "Histogram of inter-token latency in seconds.",
                                         InterTokenLatencyBuckets())),
      e2e_latency_(MakeHistogram(registry, "dsv2:e2e_request_latency_seconds",
                                 "Histogram of end to end request latency in seconds.",
                                 RequestLatencyBuckets())),
      queue_time_(
          MakeHistogram(registry, "dsv2:request_queue_time_seconds",
                        "Histogram of time spent waiting before first scheduled, in seconds.",
                        RequestLatencyBuckets())),
      prefill_time_(
          MakeHistogram(registry, "dsv2:request_prefill_time_seconds",
                        "Histogram of time from first scheduled to first token, in seconds.",
                        RequestLatencyBuckets())),
      decode_time_(MakeHistogram(registry, "dsv2:request_decode_time_seconds",
                                 "Histogram of time from first to last token, in seconds.",
                                 RequestLatencyBuckets())),
      prompt_tokens_(MakeHistogram(registry, "dsv2:request_prompt_tokens",
                                   "Number of prompt tokens per finished request.",
                                   TokenCountBuckets())),
      generation_tokens_(MakeHistogram(registry, "dsv2:request_generation_tokens",
                                       "Number of generated tokens per finished request.",
                                       TokenCountBuckets())),
      iteration_tokens_(MakeHistogram(registry, "dsv2:iteration_tokens_total",
                                      "Histogram of the number of tokens per engine step.",
                                      TokenCountBuckets())) {}

void ServingMetrics::OnStep(int64_t tokens) {
  iteration_tokens_.Observe(static_cast<double>(tokens));
}

void ServingMetrics::OnFirstToken(double seconds) { time_to_first_token_.Observe(seconds); }

void ServingMetrics::OnNextToken(double seconds) { inter_token_latency_.Observe(seconds); }

void ServingMetrics::OnFinished(const FinishedRequest& r) {
  e2e_latency_.Observe(r.e2e_s);
  queue_time_.Observe(r.queue_s);
  if (r.scheduled && r.generation_tokens > 0) {
    prefill_time_.Observe(r.prefill_s);
    decode_time_.Observe(r.decode_s);
  }
  prompt_tokens_.Observe(static_cast<double>(r.prompt_tokens));
  generation_tokens_.Observe(static_cast<double>(r.generation_tokens));
}

void CollectEngineStats(const EngineStats& s, std::vector<prometheus::MetricFamily>* out) {
  PushSample(
      out,
      GaugeFamily("dsv2:num_requests_running", "Number of requests in model execution batches."),
      static_cast<double>(s.running));
  PushSample(
      out, GaugeFamily("dsv2:num_requests_waiting", "Number of requests waiting to be processed."),
      static_cast<double>(s.waiting));
  PushSample(
      out,
      GaugeFamily("dsv2:kv_cache_usage_perc",
                  "KV-cache usage: the fraction of blocks referenced by requests (1 = 100%)."),
      s.kv_usage);
  PushSample(out, GaugeFamily("dsv2:kv_cache_blocks_total", "KV-cache blocks in the pool."),
             static_cast<double>(s.kv_blocks_total));
  PushSample(out,
             GaugeFamily("dsv2:kv_cache_blocks_used", "KV-cache blocks referenced by requests."),
             static_cast<double>(s.kv_blocks_used));
  PushSample(out,
             GaugeFamily("dsv2:kv_cache_blocks_cached",
                         "KV-cache blocks kept only for prefix reuse (evictable)."),
             static_cast<double>(s.kv_blocks_cached));
  PushSample(out,
             CounterFamily("dsv2:prefix_cache_queries_total",
                           "Prompt tokens looked up in the prefix cache."),
             static_cast<double>(s.prefix_queries));
  PushSample(
      out,
      CounterFamily("dsv2:prefix_cache_hits_total", "Prompt tokens found in the prefix cache."),
      static_cast<double>(s.prefix_hits));
  PushSample(out, CounterFamily("dsv2:num_preemptions_total", "Cumulative number of preemptions."),
             static_cast<double>(s.preemptions));
  PushSample(out,
             CounterFamily("dsv2:prompt_tokens_total",
                           "Prompt tokens computed (not served from the prefix cache)."),
             static_cast<double>(s.prompt_tokens));
  PushSample(out, CounterFamily("dsv2:generation_tokens_total", "Generated tokens."),
             static_cast<double>(s.generation_tokens));
  PushSample(out, CounterFamily("dsv2:engine_steps_total", "Engine steps that computed tokens."),
             static_cast<double>(s.steps));
  prometheus::MetricFamily finished =
      CounterFamily("dsv2:request_success_total", "Finished requests by finished_reason.");
  for (FinishReason reason : {FinishReason::kStop, FinishReason::kLength, FinishReason::kAbort,
                              FinishReason::kTimeLimit, FinishReason::kError}) {
    AddSample(&finished, static_cast<double>(s.finished[static_cast<int>(reason)]),
              {{"finished_reason", FinishReasonName(reason)}});
  }
  out->push_back(std::move(finished));
  prometheus::MetricFamily rejected = CounterFamily(
      "dsv2:request_rejected_total", "Requests the engine refused at admission, by cause.");
  AddSample(&rejected, static_cast<double>(s.rejected_invalid), {{"cause", "invalid"}});
  AddSample(&rejected, static_cast<double>(s.rejected_queue_full), {{"cause", "queue_full"}});
  AddSample(&rejected, static_cast<double>(s.rejected_unavailable), {{"cause", "unavailable"}});
  out->push_back(std::move(rejected));
}

void CollectPeerTraffic(const std::vector<std::pair<std::string, transport::PeerTraffic>>& peers,
                        std::vector<prometheus::MetricFamily>* out) {
  prometheus::MetricFamily messages = CounterFamily(
      "dsv2:data_plane_peer_messages_total",
      "Data-plane frames exchanged with each peer (dispatches and combine replies), by direction.");
  prometheus::MetricFamily bytes = CounterFamily(
      "dsv2:data_plane_peer_bytes_total",
      "Data-plane bytes (headers and payloads) exchanged with each peer, by direction.");
  for (const auto& [peer, t] : peers) {
    AddSample(&messages, static_cast<double>(t.messages_sent),
              {{"peer", peer}, {"direction", "sent"}});
    AddSample(&messages, static_cast<double>(t.messages_received),
              {{"peer", peer}, {"direction", "received"}});
    AddSample(&bytes, static_cast<double>(t.bytes_sent), {{"peer", peer}, {"direction", "sent"}});
    AddSample(&bytes, static_cast<double>(t.bytes_received),
              {{"peer", peer}, {"direction", "received"}});
  }
  out->push_back(std::move(messages));
  out->push_back(std::move(bytes));
}

void CollectTransport(const transport::TransportCounters& t,
                      std::vector<prometheus::MetricFamily>* out) {
  prometheus::MetricFamily messages = CounterFamily(
      "dsv2:data_plane_messages_total", "Data-plane frames sent and accepted, by direction.");
  AddSample(&messages, static_cast<double>(t.messages_sent), {{"direction", "sent"}});
  AddSample(&messages, static_cast<double>(t.messages_received), {{"direction", "received"}});
  out->push_back(std::move(messages));
  prometheus::MetricFamily bytes = CounterFamily(
      "dsv2:data_plane_bytes_total", "Data-plane bytes (headers and payloads), by direction.");
  AddSample(&bytes, static_cast<double>(t.bytes_sent), {{"direction", "sent"}});
  AddSample(&bytes, static_cast<double>(t.bytes_received), {{"direction", "received"}});
  out->push_back(std::move(bytes));
  prometheus::MetricFamily calls =
      CounterFamily("dsv2:data_plane_calls_total", "Data-plane calls made, by result.");
  AddSample(&calls, static_cast<double>(t.calls_succeeded), {{"result", "succeeded"}});
  AddSample(&calls, static_cast<double>(t.timeouts), {{"result", "timeout"}});
  AddSample(&calls, static_cast<double>(t.peer_failures), {{"result", "peer_failure"}});
  AddSample(
      &calls,
      static_cast<double>(t.calls_failed - std::min(t.calls_failed, t.timeouts + t.peer_failures)),
      {{"result", "other_failure"}});
  out->push_back(std::move(calls));
  prometheus::MetricFamily dropped = CounterFamily(
      "dsv2:data_plane_dropped_total", "Data-plane frames or replies dropped, by cause.");
  const std::pair<const char*, uint64_t> causes[] = {
      {"late_reply", t.late_replies_dropped},
      {"malformed", t.malformed_dropped},
      {"unexpected", t.unexpected_dropped},
      {"disallowed", t.disallowed_dropped},
      {"unauthenticated", t.unauthenticated_dropped},
      {"overload", t.overload_dropped},
      {"send_timeout", t.send_timeouts},
      {"receive_timeout", t.receive_timeouts},
      {"response_for_gone_peer", t.responses_dropped}};
  for (const auto& [cause, n] : causes) {
    AddSample(&dropped, static_cast<double>(n), {{"cause", cause}});
  }
  out->push_back(std::move(dropped));
}

void CollectDataPlane(const RemoteRoutedExperts& experts,
                      const transport::TransportCounters& transport, int64_t expert_series_limit,
                      std::vector<prometheus::MetricFamily>* out) {
  const RemoteRoutedExperts::Stats e = experts.stats();
  PushSample(
      out, CounterFamily("dsv2:moe_calls_total", "MoE layer computations sent to expert workers."),
      static_cast<double>(e.calls));
  PushHistogram(out,
                HistogramFamily("dsv2:moe_workers_per_token",
                                "Distinct expert workers each routed token reached, per MoE layer "
                                "(never above topk_group under group-limited routing)."),
                e.workers_per_token);
  PushHistogram(out,
                HistogramFamily("dsv2:moe_wait_seconds",
                                "Per MoE computation: seconds waited for expert workers after the "
                                "overlapped work (shared experts) was done."),
                e.wait);
  PushSample(
      out,
      CounterFamily("dsv2:expert_dispatches_total", "Dispatch messages sent, resends included."),
      static_cast<double>(e.dispatches));
  PushSample(out,
             CounterFamily("dsv2:expert_resends_total",
                           "Rows sent again to another replica after a worker failed (failovers)."),
             static_cast<double>(e.resends));
  PushSample(out,
             CounterFamily("dsv2:expert_dispatch_failures_total",
                           "MoE computations that failed; their step's requests ended."),
             static_cast<double>(e.failures));
  PushSample(out,
             CounterFamily(
                 "dsv2:expert_attempt_timeouts_total",
                 "Dispatches to expert workers past their attempt deadline (hung or slow)."),
             static_cast<double>(e.attempt_timeouts));

  const std::vector<ExpertLoad::Layer> layers = experts.load().Snapshot();
  prometheus::MetricFamily imbalance = GaugeFamily(
      "dsv2:moe_expert_imbalance",
      "Tokens of the busiest routed expert over the mean, per MoE layer, over the layer's last "
      "4096 to 8192 tokens (1 = even).");
  for (const ExpertLoad::Layer& l : layers) {
    AddSample(&imbalance, l.imbalance, {{"layer", absl::StrCat(l.layer)}});
  }
  out->push_back(std::move(imbalance));
  const int64_t series = static_cast<int64_t>(layers.size()) * experts.load().num_experts();
  if (series <= expert_series_limit) {
    prometheus::MetricFamily per_expert = CounterFamily(
        "dsv2:moe_expert_tokens_total", "Tokens routed to each routed expert, per MoE layer.");
    for (const ExpertLoad::Layer& l : layers) {
      for (size_t x = 0; x < l.tokens.size(); ++x) {
        AddSample(&per_expert, static_cast<double>(l.tokens[x]),
                  {{"layer", absl::StrCat(l.layer)}, {"expert", absl::StrCat(x)}});
      }
    }
    out->push_back(std::move(per_expert));
  }

  std::vector<std::pair<std::string, transport::PeerTraffic>> traffic;
  prometheus::MetricFamily round_trip =
      HistogramFamily("dsv2:data_plane_round_trip_seconds",
                      "Dispatch to combine reply, per expert worker (answered dispatches).");
  for (const auto& [id, peer] : e.peers) {
    traffic.emplace_back(id, peer.traffic);
    AddHistogram(&round_trip, peer.round_trip, {{"peer", id}});
  }
  out->push_back(std::move(round_trip));
  CollectPeerTraffic(traffic, out);
  CollectTransport(transport, out);
}

void CollectExpertServer(const ExpertServer::Stats& s, std::vector<prometheus::MetricFamily>* out) {
  PushSample(
      out, CounterFamily("dsv2:expert_server_requests_total", "Dispatches computed and answered."),
      static_cast<double>(s.requests));
  PushSample(out,
             CounterFamily("dsv2:expert_server_rows_total", "(token, expert group) rows computed."),
             static_cast<double>(s.rows));
  PushSample(out, CounterFamily("dsv2:expert_server_batches_total", "Compute rounds."),
             static_cast<double>(s.batches));
  prometheus::MetricFamily refused = CounterFamily("dsv2:expert_server_refused_total",
                                                   "Dispatches answered with an error, by cause.");
  AddSample(&refused, static_cast<double>(s.invalid_requests), {{"cause", "invalid"}});
  AddSample(&refused, static_cast<double>(s.overloaded), {{"cause", "overloaded"}});
  out->push_back(std::move(refused));
  PushSample(out,
             GaugeFamily("dsv2:expert_server_queued", "Dispatches waiting for the compute thread."),
             static_cast<double>(s.queued));
}

void CollectCluster(uint64_t epoch, const ClusterMap& map, const ClusterState::Counters& counters,
                    std::vector<prometheus::MetricFamily>* out) {
  PushSample(
      out,
      GaugeFamily("dsv2:controller_epoch",
                  "This controller's epoch (its start time, microseconds since the Unix epoch)."),
      static_cast<double>(epoch));
  PushSample(out,
             GaugeFamily("dsv2:cluster_map_version", "Version of the controller's cluster map."),
             static_cast<double>(map.version));
  PushSample(out,
             GaugeFamily("dsv2:cluster_map_complete",
                         "1 when every expert has a live expert worker (the cluster can serve)."),
             map.complete ? 1.0 : 0.0);
  // Every (role, state) pair, zeros included, so a state that empties reads 0.
  const char* const kRoles[] = {"attention", "expert"};
  const char* const kStates[] = {"alive", "suspect", "draining", "dead"};
  int64_t count[2][4] = {};
  for (const ClusterMap::Worker& w : map.workers) {
    const int role = w.info.role == WorkerRole::kExpert ? 1 : 0;
    const int state = w.state == WorkerState::kDead       ? 3
                      : w.state == WorkerState::kDraining ? 2
                      : w.suspect                         ? 1
                                                          : 0;
    ++count[role][state];
  }
  prometheus::MetricFamily workers =
      GaugeFamily("dsv2:cluster_workers", "Workers in the cluster map, by role and state.");
  for (int r = 0; r < 2; ++r) {
    for (int st = 0; st < 4; ++st) {
      AddSample(&workers, static_cast<double>(count[r][st]),
                {{"role", kRoles[r]}, {"state", kStates[st]}});
    }
  }
  out->push_back(std::move(workers));
  PushSample(out,
             CounterFamily("dsv2:controller_lease_expiries_total",
                           "Workers marked dead because their lease lapsed."),
             static_cast<double>(counters.lease_expiries));
  PushSample(out,
             CounterFamily("dsv2:controller_suspect_marks_total",
                           "Expert workers marked suspect (hung) on an attention worker's report."),
             static_cast<double>(counters.suspect_marks));
}

}  // namespace dsv2
