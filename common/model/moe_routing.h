// Expert selection of DeepSeek-V2's MoE gate [model reference §3]: softmax
// scores over the routed experts, top-k either over all experts ("greedy") or
// within the topk_group best groups, a group scored by its best expert
// ("group_limited_greedy", the paper's device-limited routing), then weights
// per the remote code: s / Σs when norm_topk_prob (and k > 1), else
// s · routed_scaling_factor.
#pragma once

#include <cstdint>

#include "common/model/config.h"

namespace dsv2 {

// For one token: `scores` [n_routed_experts] are the softmax probabilities.
// Writes num_experts_per_tok expert ids, best first (ties go to the lower
// id), and their weights.
void SelectExperts(const ModelConfig& config, const float* scores, int32_t* expert_ids,
                   float* weights);

}  // namespace dsv2
