// The routed-expert half of a MoE layer, behind an interface: the forward
// pass computes routing and the shared experts itself and reaches the routed
// experts only through RoutedExperts, so they can live in this process
// (LocalRoutedExperts) or on expert workers elsewhere.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/model/weights.h"

namespace dsv2 {

class RoutedExperts {
 public:
  virtual ~RoutedExperts() = default;

  // For n tokens x [n, hidden] routed to experts `ids` [n, k] with `weights`
  // [n, k], writes out[t] = Σ_j weights[t, j] · E_ids[t, j](x[t]) for each
  // token t, summed in ascending expert id order. `out` is [n, hidden].
  virtual absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k,
                               const int32_t* ids, const float* weights, float* out) = 0;
};

// The experts of `weights`, computed here: tokens grouped by expert, each
// expert's SwiGLU run once over its tokens. Thread-safe; its kernels use the
// default ThreadPool.
class LocalRoutedExperts final : public RoutedExperts {
 public:
  // `weights` must outlive this object.
  explicit LocalRoutedExperts(const ModelWeights& weights) : weights_(weights) {}

  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* weights, float* out) override;

 private:
  const ModelWeights& weights_;
};

// down(silu(gate·x) ⊙ up·x) for n tokens x [n, in] → out [n, out].
void RunMlp(const MlpWeights& mlp, const float* x, int64_t n, float* out);

}  // namespace dsv2
