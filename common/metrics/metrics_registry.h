// A process's metrics, as one Prometheus collectable: the families that
// components declare once (counters, gauges, histograms they update as
// they work, in `registry()`), and collectors called at each scrape that
// turn a component's own figures (Engine::stats(), transport counters,
// /proc) into families, so that nothing is counted twice.
//
// Usage:
//   auto metrics = std::make_shared<MetricsRegistry>();   // has process_* already
//   ServingMetrics serving(*metrics);                     // histograms, an EngineObserver
//   MetricsCollector engine_figures = metrics->AddCollector(
//       [&](std::vector<prometheus::MetricFamily>* out) { ... engine.stats() ... });
//   ASSIGN_OR_RETURN(auto server, MetricsServer::Start("127.0.0.1:0", metrics));
//
// Thread safety: every method may be called from any thread; collectors run
// on the metrics server's threads and must be thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/base/bucket_counts.h"
#include "common/base/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace dsv2 {

using CollectFunction = std::function<void(std::vector<prometheus::MetricFamily>*)>;

class MetricsRegistry;

// Keeps a collector registered; removing it on destruction, so that a
// collector that reads an object never outlives it (declare the handle
// after the object).
class MetricsCollector {
 public:
  MetricsCollector() = default;
  MetricsCollector(std::weak_ptr<MetricsRegistry> registry, int64_t id)
      : registry_(std::move(registry)), id_(id) {}
  MetricsCollector(MetricsCollector&& other) noexcept { *this = std::move(other); }
  MetricsCollector& operator=(MetricsCollector&& other) noexcept;
  ~MetricsCollector();

 private:
  std::weak_ptr<MetricsRegistry> registry_;
  int64_t id_ = -1;
};

class MetricsRegistry : public prometheus::Collectable,
                        public std::enable_shared_from_this<MetricsRegistry> {
 public:
  // With the process collector (process_cpu_seconds_total, ...) unless
  // `process_metrics` is false.
  explicit MetricsRegistry(bool process_metrics = true);

  // For families updated as work happens (prometheus::BuildCounter() ...
  // .Register(registry())).
  prometheus::Registry& registry() { return *registry_; }

  // Adds a collector called at every scrape until the handle is destroyed.
  // The registry must be held by a shared_ptr.
  [[nodiscard]] MetricsCollector AddCollector(CollectFunction collect);

  // Every family: the registry's, then the collectors' in the order added.
  std::vector<prometheus::MetricFamily> Collect() const override;
  // The text exposition format of Collect() (what /metrics serves).
  std::string Text() const;

 private:
  friend class MetricsCollector;
  void RemoveCollector(int64_t id);

  std::shared_ptr<prometheus::Registry> registry_;
  mutable Mutex mutex_;
  int64_t next_id_ ABSL_GUARDED_BY(mutex_) = 0;
  std::map<int64_t, std::shared_ptr<CollectFunction>> collectors_ ABSL_GUARDED_BY(mutex_);
};

// A family of one type, for collectors.
prometheus::MetricFamily GaugeFamily(std::string name, std::string help);
prometheus::MetricFamily CounterFamily(std::string name, std::string help);
prometheus::MetricFamily HistogramFamily(std::string name, std::string help);
// Adds a sample (a gauge's or a counter's value, by the family's type).
void AddSample(prometheus::MetricFamily* family, double value,
               std::vector<prometheus::ClientMetric::Label> labels = {});
// Adds a histogram sample (cumulative buckets, +Inf last) from `counts`.
void AddHistogram(prometheus::MetricFamily* family, const BucketCounts& counts,
                  std::vector<prometheus::ClientMetric::Label> labels = {});

// Append `family` to `out` with: one unlabelled sample; one sample per entry
// of `values`, labelled `label`=key; one histogram sample from `counts`.
void PushSample(std::vector<prometheus::MetricFamily>* out, prometheus::MetricFamily family,
                double value);
void PushByLabel(std::vector<prometheus::MetricFamily>* out, prometheus::MetricFamily family,
                 const std::string& label, const std::map<std::string, int64_t>& values);
void PushHistogram(std::vector<prometheus::MetricFamily>* out, prometheus::MetricFamily family,
                   const BucketCounts& counts);

}  // namespace dsv2
