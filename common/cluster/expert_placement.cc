#include "common/cluster/expert_placement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dsv2 {

int32_t ExpertPlacement::UnitOf(int32_t expert) const {
  return static_cast<int32_t>(std::upper_bound(unit_begin.begin(), unit_begin.end(), expert) -
                              unit_begin.begin() - 1);
}

std::vector<int32_t> ExpertPlacement::ExpertsOf(int32_t worker) const {
  std::vector<int32_t> experts;
  for (int32_t unit : worker_units[worker]) {
    for (int32_t e = unit_begin[unit]; e < unit_begin[unit + 1]; ++e) experts.push_back(e);
  }
  return experts;
}

absl::StatusOr<ExpertPlacement> PlaceExperts(const ModelConfig& config, int64_t num_workers,
                                             int64_t replicas) {
  if (config.n_routed_experts <= 0) {
    return absl::InvalidArgumentError("the model has no routed experts to place");
  }
  if (replicas < 1) return absl::InvalidArgumentError("replicas must be at least 1");
  if (num_workers < replicas) {
    return absl::InvalidArgumentError(absl::StrCat("placing ", replicas, " replicas needs at least ",
                                                   replicas, " expert workers, got ", num_workers));
  }
  ExpertPlacement p;
  // Group-limited routing places whole groups; greedy routing one
  // contiguous slice per worker (sizes differing by at most one expert).
  const bool groups = config.topk_method == TopkMethod::kGroupLimitedGreedy && config.n_group > 1;
  p.num_units = groups ? config.n_group : std::min<int64_t>(config.n_routed_experts, num_workers);
  for (int64_t u = 0; u <= p.num_units; ++u) {
    p.unit_begin.push_back(static_cast<int32_t>(u * config.n_routed_experts / p.num_units));
  }
  p.unit_workers.resize(p.num_units);
  p.worker_units.resize(num_workers);
  // Copy r of unit u goes to worker (u + r·stride) mod W: each worker gets
  // floor or ceil of units·R / W, and a unit's copies land on distinct
  // workers because stride·r < W for r < R.
  const int64_t stride = std::max<int64_t>(1, num_workers / replicas);
  for (int64_t r = 0; r < replicas; ++r) {
    for (int64_t u = 0; u < p.num_units; ++u) {
      const auto w = static_cast<int32_t>((u + r * stride) % num_workers);
      p.unit_workers[u].push_back(w);
      p.worker_units[w].push_back(static_cast<int32_t>(u));
    }
  }
  for (auto& units : p.worker_units) std::sort(units.begin(), units.end());
  return p;
}

}  // namespace dsv2
