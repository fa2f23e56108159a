#include "common/experts/expert_load.h"

#include <algorithm>

namespace dsv2 {

ExpertLoad::ExpertLoad(int64_t num_layers, int64_t num_experts, int64_t window_tokens)
    : num_experts_(num_experts),
      window_tokens_(std::max<int64_t>(1, window_tokens)),
      layers_(std::max<int64_t>(0, num_layers)) {}

void ExpertLoad::Record(int64_t layer, int64_t n, int64_t k, const int32_t* ids) {
  MutexLock lock(&mutex_);
  if (layer < 0 || layer >= static_cast<int64_t>(layers_.size()) || n <= 0) return;
  Counts& c = layers_[layer];
  if (c.total.empty()) {
    c.total.assign(num_experts_, 0);
    c.recent.assign(num_experts_, 0);
    c.older.assign(num_experts_, 0);
  }
  if (c.recent_tokens >= window_tokens_) {
    c.older.swap(c.recent);
    std::fill(c.recent.begin(), c.recent.end(), 0);
    c.recent_tokens = 0;
  }
  for (int64_t i = 0; i < n * k; ++i) {
    const int32_t e = ids[i];
    if (e < 0 || e >= num_experts_) continue;
    ++c.total[e];
    ++c.recent[e];
  }
  c.recent_tokens += n;
}

std::vector<ExpertLoad::Layer> ExpertLoad::Snapshot() const {
  std::vector<Layer> out;
  MutexLock lock(&mutex_);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Counts& c = layers_[l];
    if (c.total.empty()) continue;
    int64_t busiest = 0, sum = 0;
    for (int64_t e = 0; e < num_experts_; ++e) {
      const int64_t window = c.recent[e] + c.older[e];
      busiest = std::max(busiest, window);
      sum += window;
    }
    out.push_back({.layer = static_cast<int64_t>(l),
                   .tokens = c.total,
                   .imbalance = sum == 0 ? 0.0
                                         : static_cast<double>(busiest) * num_experts_ /
                                               static_cast<double>(sum)});
  }
  return out;
}

}  // namespace dsv2
