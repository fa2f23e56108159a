#include "common/model/routed_experts.h"

#include <algorithm>
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

absl::Status LocalRoutedExperts::Compute(int64_t layer, const float* x, int64_t n, int64_t k,
                                         const int32_t* ids, const float* weights, float* out) {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t hidden = weights_.embed.cols;
  const int64_t num_experts = static_cast<int64_t>(lw.experts.size());
  // Token slots by expert, in token order within each expert.
  std::vector<std::vector<int64_t>> slots(num_experts);
  for (int64_t slot = 0; slot < n * k; ++slot) slots[ids[slot]].push_back(slot);

  std::fill(out, out + n * hidden, 0.0f);
  std::vector<float> gathered, expert_out;
  for (int64_t e = 0; e < num_experts; ++e) {
    const std::vector<int64_t>& mine = slots[e];
    if (mine.empty()) continue;
    const int64_t m = static_cast<int64_t>(mine.size());
    gathered.resize(m * hidden);
    expert_out.resize(m * hidden);
    for (int64_t r = 0; r < m; ++r) {
      std::copy_n(x + (mine[r] / k) * hidden, hidden, &gathered[r * hidden]);
    }
    RunMlp(lw.experts[e], gathered.data(), m, expert_out.data());
    for (int64_t r = 0; r < m; ++r) {
      cpu::Axpy(weights[mine[r]], &expert_out[r * hidden], out + (mine[r] / k) * hidden, hidden);
    }
  }
  return absl::OkStatus();
}

}  // namespace dsv2
