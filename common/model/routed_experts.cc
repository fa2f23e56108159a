#include "common/model/routed_experts.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/cpu/ops.h"

namespace dsv2 {

void RunMlp(const MlpWeights& mlp, const float* x, int64_t n, float* out) {
  const int64_t width = mlp.gate.rows;
  std::vector<float> gate(n * width), up(n * width);  // [n, width]
  cpu::Linear(x, n, mlp.gate, gate.data());
  cpu::Linear(x, n, mlp.up, up.data());
  cpu::SiluMul(gate.data(), up.data(), gate.data(), n * width);
  cpu::Linear(gate.data(), n, mlp.down, out);
}

int64_t CombineGranuleSize(const ModelConfig& config) {
  return config.topk_method == TopkMethod::kGroupLimitedGreedy && config.n_group > 1
             ? config.n_routed_experts / config.n_group
             : 1;
}

ExpertRows GroupByGranule(int64_t n, int64_t k, const int32_t* ids, const float* weights,
                          int64_t granule_size) {
  ExpertRows rows;
  rows.k = k;
  std::vector<int64_t> order(k);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t* token_ids = ids + t * k;
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return token_ids[a] < token_ids[b]; });
    int64_t slot = 0;  // Next slot of the current row.
    for (int64_t j : order) {
      const int32_t granule = static_cast<int32_t>(token_ids[j] / granule_size);
      if (rows.token.empty() || rows.token.back() != t || rows.granule.back() != granule) {
        rows.token.push_back(static_cast<int32_t>(t));
        rows.granule.push_back(granule);
        rows.ids.resize(rows.ids.size() + k, -1);
        rows.weights.resize(rows.weights.size() + k, 0.0f);
        slot = 0;
      }
      const size_t at = (rows.token.size() - 1) * k + slot++;
      rows.ids[at] = token_ids[j];
      rows.weights[at] = weights[t * k + j];
    }
  }
  return rows;
}

void ComputeExpertRows(const LayerWeights& layer, const float* x, std::span<const int32_t> source,
                       int64_t k, const int32_t* ids, const float* weights, float* partials) {
  const int64_t hidden = layer.post_attention_norm.size();
  const int64_t num_rows = static_cast<int64_t>(source.size());
  const int64_t num_experts = static_cast<int64_t>(layer.experts.size());
  // Slots by expert, rows ascending within each expert.
  std::vector<std::vector<int64_t>> slots(num_experts);
  for (int64_t slot = 0; slot < num_rows * k; ++slot) {
    if (ids[slot] >= 0) slots[ids[slot]].push_back(slot);
  }
  std::fill(partials, partials + num_rows * hidden, 0.0f);
  std::vector<float> gathered, expert_out;
  // Ascending experts: each row's slots are added in ascending id order.
  for (int64_t e = 0; e < num_experts; ++e) {
    const std::vector<int64_t>& mine = slots[e];
    if (mine.empty()) continue;
    const int64_t m = static_cast<int64_t>(mine.size());
    gathered.resize(m * hidden);
    expert_out.resize(m * hidden);
    for (int64_t i = 0; i < m; ++i) {
      std::copy_n(x + source[mine[i] / k] * hidden, hidden, &gathered[i * hidden]);
    }
    RunMlp(layer.experts[e], gathered.data(), m, expert_out.data());
    for (int64_t i = 0; i < m; ++i) {
      cpu::Axpy(weights[mine[i]], &expert_out[i * hidden], partials + (mine[i] / k) * hidden,
                hidden);
    }
  }
}

void SumRowPartials(const ExpertRows& rows, const float* partials, int64_t n, int64_t hidden,
                    float* out) {
  std::fill(out, out + n * hidden, 0.0f);
  for (int64_t r = 0; r < rows.size(); ++r) {
    float* dst = out + int64_t{rows.token[r]} * hidden;
    const float* src = partials + r * hidden;
    for (int64_t i = 0; i < hidden; ++i) dst[i] += src[i];
  }
}

absl::Status LocalRoutedExperts::Compute(int64_t layer, const float* x, int64_t n, int64_t k,
                                         const int32_t* ids, const float* weights, float* out,
                                         absl::FunctionRef<void()> meanwhile) {
  meanwhile();
  const int64_t hidden = weights_.embed.cols;
  const ExpertRows rows = GroupByGranule(n, k, ids, weights, granule_size_);
  std::vector<float> partials(rows.size() * hidden);
  ComputeExpertRows(weights_.layers[layer], x, rows.token, k, rows.ids.data(),
                    rows.weights.data(), partials.data());
  SumRowPartials(rows, partials.data(), n, hidden, out);
  return absl::OkStatus();
}

}  // namespace dsv2
