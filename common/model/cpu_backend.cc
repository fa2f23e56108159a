// The CPU backend: the kernels of kernels/cpu over host memory. Its numbers
// are the project's reference (backend.h).
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "common/base/thread_pool.h"
#include "common/model/backend.h"
#include "common/model/moe_routing.h"
#include "common/model/rope.h"
#include "kernels/cpu/ops.h"

namespace dsv2 {
namespace {

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }
  std::string Description() const override {
    return std::string("cpu, ") + cpu::KernelIsa() + " kernels";
  }
  bool host_memory() const override { return true; }

  void Upload(const float* host, float* dst, int64_t count) override {
    std::copy_n(host, count, dst);
  }
  void Download(const float* src, float* host, int64_t count) override {
    std::copy_n(src, count, host);
  }

  void Embedding(const WeightMatrix& table, const int32_t* host_ids, int64_t n,
                 float* out) override {
    for (int64_t i = 0; i < n; ++i) cpu::EmbeddingRow(table, host_ids[i], out + i * table.cols);
  }
  void RmsNorm(const float* x, std::span<const float> weight, int64_t n, int64_t dim, float eps,
               float* y) override {
    cpu::RmsNorm(x, weight.data(), n, dim, eps, y);
  }
  void Linear(const float* x, int64_t n, const WeightMatrix& w, float* y) override {
    cpu::Linear(x, n, w, y);
  }
  void Add(const float* x, float* y, int64_t count) override {
    for (int64_t i = 0; i < count; ++i) y[i] += x[i];
  }
  void SiluMul(const float* gate, const float* up, float* out, int64_t count) override {
    cpu::SiluMul(gate, up, out, count);
  }
  void MlaAttention(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                    std::span<const float> kv_a_norm, std::span<const MlaChunk> chunks, float* q,
                    const float* kv_a, const float* cos, const float* sin, float* o) override;
  absl::Status Route(const ModelConfig& config, int64_t layer, float* logits, int64_t n,
                     int32_t* host_ids, float* host_weights) override {
    return RouteTokens(config, layer, logits, n, host_ids, host_weights);
  }
  void ExpertRows(std::span<const MlpWeights> experts, int64_t hidden, const float* x,
                  std::span<const int32_t> source, int64_t k, const int32_t* host_ids,
                  const float* host_weights, float* partials) override;

 protected:
  float* AllocateFloats(int64_t count) override { return new float[count]; }
  void Free(float* data) override { delete[] data; }
};

// One decode-form (absorbed) query row: its cache and how many positions it sees.
struct AbsorbedRow {
  KvCacheView* cache;
  int64_t row;
  int64_t visible;
};

// The absorbed form for rows of any sequences: MQA over the latents, query
// [q_nope·W_UK | q_pe] against key [c | k_pe], output W_UV·(attention over
// c). One task per head, over all the rows: the head's W_UK and W_UV are
// read once per call (a product over all rows), not once per row. Each
// row's numbers are those of a call with that row alone (the products'
// additions per row do not depend on how many rows share them).
void AbsorbedAttention(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                       std::span<const AbsorbedRow> rows, const float* q, float* o) {
  const int64_t heads = shape.heads, nope = shape.nope, rope = shape.rope, vdim = shape.v;
  const int64_t rank = shape.rank, qk = shape.qk(), latent = shape.latent();
  const int64_t kvb_width = nope + vdim;  // Rows of kv_b per head: W_UK [nope] then W_UV [v].
  const int64_t count = static_cast<int64_t>(rows.size());
  if (count == 0) return;
  int64_t max_visible = 0;
  for (const AbsorbedRow& r : rows) max_visible = std::max(max_visible, r.visible);
  ThreadPool::Default().ParallelFor(heads, 1, [&](int64_t begin, int64_t end) {
    // Per row: q_nope, then the query [latent], the attention output over c
    // [rank], and the head's output [v].
    std::vector<float> q_nope(count * nope), query(count * latent), o_latent(count * rank),
        out(count * vdim), scores(max_visible);
    for (int64_t head = begin; head < end; ++head) {
      for (int64_t i = 0; i < count; ++i) {
        const float* q_head = &q[(rows[i].row * heads + head) * qk];
        std::copy_n(q_head, nope, &q_nope[i * nope]);
        std::fill_n(&query[i * latent], rank, 0.0f);
        std::copy_n(q_head + nope, rope, &query[i * latent + rank]);
      }
      cpu::LinearTransposedAccumulate(q_nope.data(), count, nope,
                                      kv_b.RowSlice(head * kvb_width, nope), query.data(), latent);
      for (int64_t i = 0; i < count; ++i) {
        const AbsorbedRow& r = rows[i];
        for (int64_t j = 0; j < r.visible; ++j) {
          scores[j] =
              shape.softmax_scale * cpu::Dot(&query[i * latent], r.cache->At(layer, j), latent);
        }
        cpu::Softmax(scores.data(), r.visible);
        float* o_row = &o_latent[i * rank];
        std::fill_n(o_row, rank, 0.0f);
        for (int64_t j = 0; j < r.visible; ++j) {
          cpu::Axpy(scores[j], r.cache->At(layer, j), o_row, rank);
        }
      }
      cpu::Linear(o_latent.data(), count, kv_b.RowSlice(head * kvb_width + nope, vdim), out.data(),
                  0, /*parallel=*/false);
      for (int64_t i = 0; i < count; ++i) {
        std::copy_n(&out[i * vdim], vdim, &o[(rows[i].row * heads + head) * vdim]);
      }
    }
  });
}

// The prefill form for one sequence's n new rows (their latents in the
// cache): K_nope and V of every position rebuilt from its latent through
// kv_b, then attention per head.
void DecompressedAttention(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                           KvCacheView& cache, int64_t n, const float* q, float* o) {
  const int64_t heads = shape.heads, nope = shape.nope, rope = shape.rope, vdim = shape.v;
  const int64_t rank = shape.rank, qk = shape.qk(), latent = shape.latent();
  const int64_t start = cache.size(), context = start + n;
  const int64_t kvb_width = nope + vdim;
  // [context, H, nope + v], one Linear per run of consecutively stored positions.
  std::vector<float> kv(context * heads * kvb_width);
  for (int64_t pos = 0; pos < context;) {
    const int64_t run = std::min(cache.ContiguousFrom(pos), context - pos);
    cpu::Linear(cache.At(layer, pos), run, kv_b, &kv[pos * heads * kvb_width],
                /*x_stride=*/latent);
    pos += run;
  }
  ThreadPool::Default().ParallelFor(n * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(context);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / heads, head = task % heads;
      const float* q_head = &q[task * qk];
      const int64_t visible = start + i + 1;
      for (int64_t j = 0; j < visible; ++j) {
        const float* k_nope = &kv[(j * heads + head) * kvb_width];
        scores[j] =
            shape.softmax_scale * (cpu::Dot(q_head, k_nope, nope) +
                                   cpu::Dot(q_head + nope, cache.At(layer, j) + rank, rope));
      }
      cpu::Softmax(scores.data(), visible);
      float* o_head = &o[task * vdim];
      std::fill(o_head, o_head + vdim, 0.0f);
      for (int64_t j = 0; j < visible; ++j) {
        cpu::Axpy(scores[j], &kv[(j * heads + head) * kvb_width + nope], o_head, vdim);
      }
    }
  });
}

void CpuBackend::MlaAttention(const MlaShape& shape, int64_t layer, const WeightMatrix& kv_b,
                              std::span<const float> kv_a_norm, std::span<const MlaChunk> chunks,
                              float* q, const float* kv_a, const float* cos, const float* sin,
                              float* o) {
  const int64_t heads = shape.heads, nope = shape.nope, rope = shape.rope, vdim = shape.v;
  const int64_t rank = shape.rank, half = rope / 2, qk = shape.qk(), latent = shape.latent();
  std::vector<AbsorbedRow> absorbed;
  for (const MlaChunk& chunk : chunks) {
    KvCacheView& cache = *chunk.cache;
    const int64_t start = cache.size();
    // Latents of the new positions: [c_raw | k_pe] → cache [RMSNorm(c) | RoPE(k_pe)];
    // RoPE on the queries' rope slice.
    for (int64_t i = 0; i < chunk.n; ++i) {
      const int64_t row = chunk.row + i;
      float* slot = cache.At(layer, start + i);
      cpu::RmsNorm(&kv_a[row * latent], kv_a_norm.data(), 1, rank, shape.latent_norm_eps, slot);
      std::copy_n(&kv_a[row * latent + rank], rope, slot + rank);
      RotaryEmbedding::Apply(&cos[row * half], &sin[row * half], half, slot + rank);
      for (int64_t head = 0; head < heads; ++head) {
        RotaryEmbedding::Apply(&cos[row * half], &sin[row * half], half,
                               &q[(row * heads + head) * qk + nope]);
      }
      // Causal: positions 0 … start + i.
      if (chunk.absorbed) absorbed.push_back({&cache, row, start + i + 1});
    }
    if (!chunk.absorbed) {
      DecompressedAttention(shape, layer, kv_b, cache, chunk.n, q + chunk.row * heads * qk,
                            o + chunk.row * heads * vdim);
    }
  }
  AbsorbedAttention(shape, layer, kv_b, absorbed, q, o);
}

void CpuBackend::ExpertRows(std::span<const MlpWeights> experts, int64_t hidden, const float* x,
                            std::span<const int32_t> source, int64_t k, const int32_t* host_ids,
                            const float* host_weights, float* partials) {
  const int64_t num_rows = static_cast<int64_t>(source.size());
  const int64_t num_experts = static_cast<int64_t>(experts.size());
  // Slots by expert, rows ascending within each expert.
  std::vector<std::vector<int64_t>> slots(num_experts);
  for (int64_t slot = 0; slot < num_rows * k; ++slot) {
    if (host_ids[slot] >= 0) slots[host_ids[slot]].push_back(slot);
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
    Mlp(experts[e], gathered.data(), m, expert_out.data());
    for (int64_t i = 0; i < m; ++i) {
      cpu::Axpy(host_weights[mine[i]], &expert_out[i * hidden], partials + (mine[i] / k) * hidden,
                hidden);
    }
  }
}

}  // namespace

Backend& CpuBackendInstance() {
  static CpuBackend* const backend = new CpuBackend;
  return *backend;
}

std::unique_ptr<Backend> NewCpuBackend() { return std::make_unique<CpuBackend>(); }

}  // namespace dsv2
