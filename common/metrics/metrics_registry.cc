#include "common/metrics/metrics_registry.h"

#include <limits>

#include "common/metrics/process_metrics.h"
#include "prometheus/text_serializer.h"

namespace dsv2 {

MetricsCollector& MetricsCollector::operator=(MetricsCollector&& other) noexcept {
  if (this != &other) {
    if (auto registry = registry_.lock()) registry->RemoveCollector(id_);
    registry_ = std::move(other.registry_);
    id_ = other.id_;
    other.registry_.reset();
    other.id_ = -1;
  }
  return *this;
}

MetricsCollector::~MetricsCollector() {
  if (auto registry = registry_.lock()) registry->RemoveCollector(id_);
}

MetricsRegistry::MetricsRegistry(bool process_metrics)
    : registry_(std::make_shared<prometheus::Registry>()) {
  if (process_metrics) {
    // Never removed: it reads only this process.
    collectors_.emplace(next_id_++, std::make_shared<CollectFunction>(&CollectProcessMetrics));
  }
}

MetricsCollector MetricsRegistry::AddCollector(CollectFunction collect) {
  MutexLock lock(&mutex_);
  const int64_t id = next_id_++;
  collectors_.emplace(id, std::make_shared<CollectFunction>(std::move(collect)));
  return MetricsCollector(weak_from_this(), id);
}

void MetricsRegistry::RemoveCollector(int64_t id) {
  std::shared_ptr<CollectFunction> removed;
  MutexLock lock(&mutex_);
  auto it = collectors_.find(id);
  if (it == collectors_.end()) return;
  removed = std::move(it->second);
  collectors_.erase(it);
  // A scrape running it now holds the lock below, so once this returns no
  // scrape runs it (Collect calls collectors under mutex_).
}

std::vector<prometheus::MetricFamily> MetricsRegistry::Collect() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  // Collectors run under the lock so that RemoveCollector waits for a
  // running scrape: the object a collector reads may be destroyed as soon
  // as its handle is. Scrapes are rare and short, so serializing them costs
  // nothing that matters.
  MutexLock lock(&mutex_);
  for (const auto& [id, collect] : collectors_) (*collect)(&families);
  return families;
}

std::string MetricsRegistry::Text() const {
  return prometheus::TextSerializer().Serialize(Collect());
}

prometheus::MetricFamily GaugeFamily(std::string name, std::string help) {
  return {std::move(name), std::move(help), prometheus::MetricType::Gauge, {}};
}

prometheus::MetricFamily CounterFamily(std::string name, std::string help) {
  return {std::move(name), std::move(help), prometheus::MetricType::Counter, {}};
}

prometheus::MetricFamily HistogramFamily(std::string name, std::string help) {
  return {std::move(name), std::move(help), prometheus::MetricType::Histogram, {}};
}

void AddSample(prometheus::MetricFamily* family, double value,
               std::vector<prometheus::ClientMetric::Label> labels) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  if (family->type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family->metric.push_back(std::move(metric));
}

void AddHistogram(prometheus::MetricFamily* family, const BucketCounts& counts,
                  std::vector<prometheus::ClientMetric::Label> labels) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  metric.histogram.sample_count = counts.count();
  metric.histogram.sample_sum = counts.sum();
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts.counts().size(); ++i) {
    cumulative += counts.counts()[i];
    metric.histogram.bucket.push_back({cumulative, i < counts.upper_bounds().size()
                                                       ? counts.upper_bounds()[i]
                                                       : std::numeric_limits<double>::infinity()});
  }
  family->metric.push_back(std::move(metric));
}

void PushSample(std::vector<prometheus::MetricFamily>* out, prometheus::MetricFamily family,
                double value) {
  AddSample(&family, value);
  out->push_back(std::move(family));
}

void PushByLabel(std::vector<prometheus::MetricFamily>* out, prometheus::MetricFamily family,
                 const std::string& label, const std::map<std::string, int64_t>& values) {
  for (const auto& [key, value] : values) {
    AddSample(&family, static_cast<double>(value), {{label, key}});
  }
  out->push_back(std::move(family));
}

void PushHistogram(std::vector<prometheus::MetricFamily>* out, prometheus::MetricFamily family,
                   const BucketCounts& counts) {
  AddHistogram(&family, counts);
  out->push_back(std::move(family));
}

}  // namespace dsv2
