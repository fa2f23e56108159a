// Which expert worker holds which routed experts. With group-limited
// routing (n_group > 1) whole routing groups go to one worker, so a token's
// experts — drawn from at most topk_group groups — live on at most
// topk_group workers (the paper's device-limited routing, M = topk_group).
// With plain greedy routing, workers hold contiguous balanced slices.
// With replicas R, every group (or slice) lives on R distinct workers.
//
// The placement is a pure function of the config, the worker list and R,
// so every process that computes it from the same cluster map agrees.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/config.h"

namespace dsv2 {

struct ExpertPlacement {
  // The unit of placement: a routing group (group-limited routing) or a
  // slice (greedy); unit u holds experts [unit_begin[u], unit_begin[u + 1]).
  int64_t num_units = 0;
  std::vector<int32_t> unit_begin;  // num_units + 1 entries.
  // unit_workers[u]: indexes into the worker list that hold unit u (R of them).
  std::vector<std::vector<int32_t>> unit_workers;
  // worker_units[w]: the units worker w holds, ascending.
  std::vector<std::vector<int32_t>> worker_units;

  int32_t UnitOf(int32_t expert) const;
  // The experts worker w holds, ascending.
  std::vector<int32_t> ExpertsOf(int32_t worker) const;
};

// Places the routed experts of `config` on `num_workers` expert workers with
// `replicas` copies of each unit. InvalidArgument when there are fewer
// workers than replicas or the config has no routed experts.
absl::StatusOr<ExpertPlacement> PlaceExperts(const ModelConfig& config, int64_t num_workers,
                                             int64_t replicas);

}  // namespace dsv2
