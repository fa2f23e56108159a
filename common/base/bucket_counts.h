// Observations counted in fixed buckets, the way a Prometheus histogram
// keeps them: a plain value for components that keep their own figures
// under their own lock and hand out snapshots (common/metrics turns one
// into a histogram sample), so they need no metrics library.
//
// Thread safety: none (a value type); guard it like any other field.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace dsv2 {

class BucketCounts {
 public:
  BucketCounts() = default;
  // `upper_bounds` ascending; a last bucket (+Inf) is implied.
  explicit BucketCounts(std::vector<double> upper_bounds)
      : upper_bounds_(std::move(upper_bounds)), counts_(upper_bounds_.size() + 1, 0) {}

  // Counts `value` in the first bucket whose upper bound is >= it.
  void Observe(double value) {
    const size_t i =
        std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin();
    ++counts_[i];
    ++count_;
    sum_ += value;
  }

  // Adds `other`'s observations; it must have the same bounds.
  void Add(const BucketCounts& other) {
    for (size_t i = 0; i < counts_.size() && i < other.counts_.size(); ++i) {
      counts_[i] += other.counts_[i];
    }
    count_ += other.count_;
    sum_ += other.sum_;
  }

  const std::vector<double>& upper_bounds() const { return upper_bounds_; }
  // Per bucket (not cumulative), the +Inf bucket last.
  const std::vector<uint64_t>& counts() const { return counts_; }
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> upper_bounds_;
  std::vector<uint64_t> counts_ = {0};
  uint64_t count_ = 0;
  double sum_ = 0;
};

}  // namespace dsv2
