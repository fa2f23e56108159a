// How the router spreads tokens over the routed experts, per MoE layer:
// tokens routed to each expert since start, and the imbalance — the
// busiest expert's tokens over the mean — across a recent window. What the
// metrics show as dsv2:moe_expert_tokens_total and dsv2:moe_expert_imbalance.
//
// The window is counted in tokens, per layer: its figures cover the last
// `window_tokens` to 2 × `window_tokens` tokens of the layer (two halves;
// the older is dropped when the newer fills), so the imbalance follows the
// recent routing without a clock.
//
// Thread safety: Record and Snapshot may be called from any thread.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/base/mutex.h"

namespace dsv2 {

class ExpertLoad {
 public:
  struct Layer {
    int64_t layer = 0;
    std::vector<int64_t> tokens;  // Per expert, since start.
    double imbalance = 0;         // max / mean over the window (>= 1).
  };

  // Layers [0, num_layers), experts [0, num_experts).
  ExpertLoad(int64_t num_layers, int64_t num_experts, int64_t window_tokens = 4096);

  int64_t num_experts() const { return num_experts_; }

  // `n` tokens of `layer`, each routed to the `k` experts `ids[t * k ...]`.
  // Ids out of range are not counted (the caller validated them).
  void Record(int64_t layer, int64_t n, int64_t k, const int32_t* ids) ABSL_LOCKS_EXCLUDED(mutex_);

  // The layers that have routed a token, ascending.
  std::vector<Layer> Snapshot() const ABSL_LOCKS_EXCLUDED(mutex_);

 private:
  struct Counts {
    std::vector<int64_t> total, recent, older;  // Per expert.
    int64_t recent_tokens = 0;
  };

  const int64_t num_experts_;
  const int64_t window_tokens_;
  mutable Mutex mutex_;
  std::vector<Counts> layers_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dsv2
