#include "common/model/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ops.h"

namespace dsv2 {
namespace {

// Indices of the k largest values, largest first, lower index on ties.
std::vector<int32_t> TopK(const std::vector<float>& values, int64_t k) {
  std::vector<int32_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  order.resize(k);
  return order;
}

// The first non-finite value of `values` [count], if any.
const float* FirstNonFinite(const float* values, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) return values + i;
  }
  return nullptr;
}

absl::Status NonFinite(int64_t layer, const char* what, int64_t token, const char* slot,
                       int64_t index, float value) {
  return absl::InternalError(absl::StrCat(
      "layer ", layer, ": non-finite ", what, " for token ", token, " (", slot, " ", index, " is ",
      std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf"),
      "); the model's weights or activations overflow (a full weight check at load scans every "
      "tensor)"));
}

}  // namespace

absl::Status RouteTokens(const ModelConfig& config, int64_t layer, float* logits, int64_t n,
                         int32_t* expert_ids, float* weights) {
  const int64_t num_experts = config.n_routed_experts;
  const int64_t k = config.num_experts_per_tok;
  for (int64_t i = 0; i < n; ++i) {
    float* scores = logits + i * num_experts;
    cpu::Softmax(scores, num_experts);
    // Before selection: top-k over NaN has no meaning (and no strict order).
    if (const float* bad = FirstNonFinite(scores, num_experts)) {
      return NonFinite(layer, "router scores", i, "expert", bad - scores, *bad);
    }
    SelectExperts(config, scores, expert_ids + i * k, weights + i * k);
    if (const float* bad = FirstNonFinite(weights + i * k, k)) {
      return NonFinite(layer, "routing weights", i, "slot", bad - (weights + i * k), *bad);
    }
  }
  return absl::OkStatus();
}

void SelectExperts(const ModelConfig& config, const float* scores, int32_t* expert_ids,
                   float* weights) {
  const int64_t num_experts = config.n_routed_experts;
  const int64_t k = config.num_experts_per_tok;
  std::vector<float> candidates(scores, scores + num_experts);
  if (config.topk_method == TopkMethod::kGroupLimitedGreedy) {
    const int64_t group_size = config.experts_per_group();
    std::vector<float> group_scores(config.n_group);
    for (int64_t g = 0; g < config.n_group; ++g) {
      group_scores[g] = *std::max_element(scores + g * group_size, scores + (g + 1) * group_size);
    }
    std::vector<bool> kept(config.n_group, false);
    for (int32_t g : TopK(group_scores, config.topk_group)) kept[g] = true;
    // The remote code zeroes the other groups' scores (vLLM uses -inf; the
    // same choice since softmax scores are positive).
    for (int64_t e = 0; e < num_experts; ++e) {
      if (!kept[e / group_size]) candidates[e] = 0.0f;
    }
  }
  const std::vector<int32_t> top = TopK(candidates, k);
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    expert_ids[i] = top[i];
    weights[i] = scores[top[i]];
    sum += weights[i];
  }
  if (k > 1 && config.norm_topk_prob) {
    for (int64_t i = 0; i < k; ++i) weights[i] /= sum + 1e-20f;
  } else {
    const float scale = static_cast<float>(config.routed_scaling_factor);
    for (int64_t i = 0; i < k; ++i) weights[i] *= scale;
  }
}

}  // namespace dsv2
