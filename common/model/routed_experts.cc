#include "common/model/routed_experts.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace dsv2 {

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

void ComputeExpertRows(Backend& backend, const LayerWeights& layer, const float* x, int64_t x_rows,
                       std::span<const int32_t> source, int64_t k, const int32_t* ids,
                       const float* weights, float* partials) {
  const int64_t hidden = static_cast<int64_t>(layer.post_attention_norm.size());
  const int64_t rows = static_cast<int64_t>(source.size());
  if (backend.host_memory()) {
    backend.ExpertRows(layer.experts, hidden, x, source, k, ids, weights, partials);
    return;
  }
  Buffer x_there = backend.Allocate(x_rows * hidden), partials_there = backend.Allocate(rows * hidden);
  backend.Upload(x, x_there.data(), x_rows * hidden);
  backend.ExpertRows(layer.experts, hidden, x_there.data(), source, k, ids, weights,
                     partials_there.data());
  backend.Download(partials_there.data(), partials, rows * hidden);
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
  ComputeExpertRows(backend_, weights_.layers[layer], x, n, rows.token, k, rows.ids.data(),
                    rows.weights.data(), partials.data());
  SumRowPartials(rows, partials.data(), n, hidden, out);
  return absl::OkStatus();
}

}  // namespace dsv2
