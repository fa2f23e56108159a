// The routed-expert half of a MoE layer, behind an interface: the forward
// pass computes routing and the shared experts itself and reaches the routed
// experts only through RoutedExperts, so they can live in this process
// (LocalRoutedExperts) or on expert workers elsewhere (RemoteRoutedExperts,
// common/experts).
//
// x and out of RoutedExperts::Compute are host memory (the data plane sends
// them); LocalRoutedExperts computes on a Backend and copies to it when its
// memory is elsewhere.
//
// One summation order everywhere. A token's routed output is summed per
// *combine granule* — a routing group under group-limited routing (whole
// groups live on one expert worker), a single expert under plain greedy
// routing (any expert slice is a union of those) — then over its granules:
//
//   partial[t, g] = Σ_{experts e of t in g, ascending} w[t, e] · E_e(x[t])
//   out[t]        = Σ_{granules g of t, ascending} partial[t, g]
//
// An expert worker computes whole granules, so however the experts are
// placed, the same partials are summed in the same order, and a cluster's
// numbers equal one process's bit for bit (given the same data-plane
// dtypes, which round x and the partials).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "common/model/backend.h"
#include "common/model/config.h"
#include "common/model/weights.h"

namespace dsv2 {

class RoutedExperts {
 public:
  virtual ~RoutedExperts() = default;

  // For n tokens x [n, hidden] routed to experts `ids` [n, k] with `weights`
  // [n, k], writes out[t] = Σ_j weights[t, j] · E_ids[t, j](x[t]) for each
  // token t, in the order above. `out` is [n, hidden]. Runs `meanwhile`
  // exactly once (the shared experts), while the routed ones are away when
  // they are remote. UNAVAILABLE or DEADLINE_EXCEEDED when remote experts
  // are unreachable or late.
  virtual absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k,
                               const int32_t* ids, const float* weights, float* out,
                               absl::FunctionRef<void()> meanwhile) = 0;
};

// Experts per combine granule: n_routed_experts / n_group under
// group-limited routing, else 1.
int64_t CombineGranuleSize(const ModelConfig& config);

// A layer's routing regrouped as one row per (token, granule reached),
// ordered by token then granule: the rows an expert worker computes.
struct ExpertRows {
  int64_t k = 0;                // Slots per row: the model's top-k.
  std::vector<int32_t> token;   // [rows] the row's token.
  std::vector<int32_t> granule; // [rows]
  std::vector<int32_t> ids;     // [rows, k] its experts, ascending; -1 pads.
  std::vector<float> weights;   // [rows, k]

  int64_t size() const { return static_cast<int64_t>(token.size()); }
};

ExpertRows GroupByGranule(int64_t n, int64_t k, const int32_t* ids, const float* weights,
                          int64_t granule_size);

// partials[r] = Σ over row r's non-empty slots (ascending ids) of w · E(x[source[r]]),
// for `rows` rows of `k` slots, on `backend` (Backend::ExpertRows); x
// [x_rows, hidden] and partials [rows, hidden] are host memory, copied to
// and from the backend when its memory is not.
void ComputeExpertRows(Backend& backend, const LayerWeights& layer, const float* x, int64_t x_rows,
                       std::span<const int32_t> source, int64_t k, const int32_t* ids,
                       const float* weights, float* partials);

// out[t] = Σ of the partials of t's rows, in row order; `out` is [n, hidden].
void SumRowPartials(const ExpertRows& rows, const float* partials, int64_t n, int64_t hidden,
                    float* out);

// The experts of `weights`, computed here on `backend`. Thread-safe.
class LocalRoutedExperts final : public RoutedExperts {
 public:
  // `weights` and `backend` must outlive this object.
  LocalRoutedExperts(const ModelConfig& config, const ModelWeights& weights, Backend& backend)
      : granule_size_(CombineGranuleSize(config)), weights_(weights), backend_(backend) {}

  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* weights, float* out,
                       absl::FunctionRef<void()> meanwhile) override;

 private:
  const int64_t granule_size_;
  const ModelWeights& weights_;
  Backend& backend_;
};

}  // namespace dsv2
