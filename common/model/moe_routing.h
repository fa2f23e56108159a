// Expert selection of DeepSeek-V2's MoE gate [model reference §3]: softmax
// scores over the routed experts, top-k either over all experts ("greedy") or
// within the topk_group best groups, a group scored by its best expert
// ("group_limited_greedy", the paper's device-limited routing), then weights
// per the remote code: s / Σs when norm_topk_prob (and k > 1), else
// s · routed_scaling_factor.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "common/model/config.h"

namespace dsv2 {

// For one token: `scores` [n_routed_experts] are the softmax probabilities.
// Writes num_experts_per_tok expert ids, best first (ties go to the lower
// id), and their weights.
void SelectExperts(const ModelConfig& config, const float* scores, int32_t* expert_ids,
                   float* weights);

// The gate of MoE layer `layer` for n tokens: `logits` [n, n_routed_experts]
// (the router's outputs) become softmax scores in place, then SelectExperts
// writes `expert_ids` and `weights` [n, num_experts_per_tok] per token.
//
// A non-finite score (router weights or activations that overflowed, or a
// NaN that reached them) leaves no right choice of experts, so it is an
// error naming the layer, the token and the expert, e.g. "layer 1:
// non-finite router scores for token 0 (expert 3 is nan); ...". Its code is
// INTERNAL: nothing about the request is wrong and retrying cannot help —
// the model computed something impossible, an invariant of the forward pass
// is broken — and the engine treats it as fatal (health NOT_SERVING).
// Routing weights are checked the same way.
absl::Status RouteTokens(const ModelConfig& config, int64_t layer, float* logits, int64_t n,
                         int32_t* expert_ids, float* weights);

}  // namespace dsv2
