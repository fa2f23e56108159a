#include "common/model/deepseek_v2.h"

#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "common/base/status_macros.h"
#include "common/base/thread_pool.h"
#include "common/model/moe_routing.h"
#include "kernels/cpu/ops.h"

namespace dsv2 {

DeepseekV2Model::DeepseekV2Model(ModelConfig config, Checkpoint checkpoint, ModelWeights weights)
    : config_(std::move(config)),
      checkpoint_(std::move(checkpoint)),
      weights_(std::move(weights)),
      rope_(config_),
      softmax_scale_(static_cast<float>(config_.SoftmaxScale())) {}

absl::StatusOr<std::unique_ptr<DeepseekV2Model>> DeepseekV2Model::Load(const std::string& dir) {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(ModelConfig config,
                   LoadModelConfig((std::filesystem::path(dir) / "config.json").string()));
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(ModelWeights weights, BindWeights(config, checkpoint));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  DSV2_LOG(INFO) << absl::StrFormat("loaded %s: %d layers, %.3f GB in %d file(s), in %.2f s", dir,
                                    config.num_hidden_layers, checkpoint.total_bytes() / 1e9,
                                    checkpoint.num_files(), seconds);
  return std::unique_ptr<DeepseekV2Model>(
      new DeepseekV2Model(std::move(config), std::move(checkpoint), std::move(weights)));
}

bool DeepseekV2Model::PrefersAbsorbed(int64_t n, int64_t context) const {
  // Multiply-adds per head (the common n·context·rope term cancels):
  //   decompressed: context·r·(nope+v) to rebuild K and V, n·context·(nope+v) to attend;
  //   absorbed:     n·r·(nope+v) to fold W_UK / W_UV,        n·context·2r to attend.
  const double r = static_cast<double>(config_.kv_lora_rank);
  const double nope_v = static_cast<double>(config_.qk_nope_head_dim + config_.v_head_dim);
  const double decompressed = context * r * nope_v + double(n) * context * nope_v;
  const double absorbed = n * r * nope_v + double(n) * context * 2 * r;
  return absorbed <= decompressed;
}

absl::Status DeepseekV2Model::Forward(std::span<const int32_t> tokens, LatentKvCache& cache,
                                      const ForwardOptions& options,
                                      std::vector<float>* logits) const {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t hidden = config_.hidden_size;
  const int64_t start = cache.size();
  if (n == 0) return absl::InvalidArgumentError("no tokens to run");
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                     " is outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  if (start + n > cache.capacity()) {
    return absl::OutOfRangeError(absl::StrCat("sequence of ", start + n,
                                              " tokens exceeds the cache capacity of ",
                                              cache.capacity()));
  }

  // cos/sin of the new positions, shared by every layer: [n, rope/2] each.
  const int64_t half = config_.qk_rope_head_dim / 2;
  std::vector<float> cos(n * half), sin(n * half);
  for (int64_t i = 0; i < n; ++i) rope_.CosSin(start + i, &cos[i * half], &sin[i * half]);

  bool absorbed = options.attention == AttentionForm::kAbsorbed;
  if (options.attention == AttentionForm::kAuto) absorbed = PrefersAbsorbed(n, start + n);

  std::vector<float> h(n * hidden), x(n * hidden), delta(n * hidden);  // [n, hidden] each
  for (int64_t i = 0; i < n; ++i) cpu::EmbeddingRow(weights_.embed, tokens[i], &h[i * hidden]);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerWeights& lw = weights_.layers[layer];
    cpu::RmsNorm(h.data(), lw.input_norm.data(), n, hidden, eps, x.data());
    Attention(layer, x.data(), n, cache, absorbed, cos, sin, delta.data());
    for (int64_t i = 0; i < n * hidden; ++i) h[i] += delta[i];
    cpu::RmsNorm(h.data(), lw.post_attention_norm.data(), n, hidden, eps, x.data());
    Ffn(layer, x.data(), n, delta.data());
    for (int64_t i = 0; i < n * hidden; ++i) h[i] += delta[i];
  }
  cache.set_size(start + n);

  const int64_t first = options.all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  cpu::RmsNorm(h.data() + first * hidden, weights_.final_norm.data(), rows, hidden, eps, x.data());
  logits->resize(rows * config_.vocab_size);
  cpu::Linear(x.data(), rows, weights_.lm_head, logits->data());
  return absl::OkStatus();
}

void DeepseekV2Model::Attention(int64_t layer, const float* x, int64_t n, LatentKvCache& cache,
                                bool absorbed, const std::vector<float>& cos,
                                const std::vector<float>& sin, float* out) const {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t heads = config_.num_attention_heads;
  const int64_t nope = config_.qk_nope_head_dim;
  const int64_t rope = config_.qk_rope_head_dim;
  const int64_t qk = config_.qk_head_dim();
  const int64_t vdim = config_.v_head_dim;
  const int64_t rank = config_.kv_lora_rank;
  const int64_t latent = config_.latent_dim();
  const int64_t start = cache.size();
  const int64_t context = start + n;
  const float eps = static_cast<float>(config_.rms_norm_eps);

  // Queries [n, H, nope + rope].
  std::vector<float> q(n * heads * qk);
  if (config_.has_q_lora()) {
    std::vector<float> q_a(n * config_.q_lora_rank);  // [n, q_lora_rank]
    cpu::Linear(x, n, lw.q_a, q_a.data());
    cpu::RmsNorm(q_a.data(), lw.q_a_norm.data(), n, config_.q_lora_rank, eps, q_a.data());
    cpu::Linear(q_a.data(), n, lw.q_b, q.data());
  } else {
    cpu::Linear(x, n, lw.q, q.data());
  }
  // Latents of the new positions: [c_raw | k_pe] → cache [RMSNorm(c) | RoPE(k_pe)].
  std::vector<float> kv_a(n * latent);  // [n, rank + rope]
  cpu::Linear(x, n, lw.kv_a, kv_a.data());
  for (int64_t i = 0; i < n; ++i) {
    float* slot = cache.At(layer, start + i);
    cpu::RmsNorm(&kv_a[i * latent], lw.kv_a_norm.data(), 1, rank, eps, slot);
    std::copy_n(&kv_a[i * latent + rank], rope, slot + rank);
    RotaryEmbedding::Apply(&cos[i * (rope / 2)], &sin[i * (rope / 2)], rope / 2, slot + rank);
    for (int64_t head = 0; head < heads; ++head) {
      RotaryEmbedding::Apply(&cos[i * (rope / 2)], &sin[i * (rope / 2)], rope / 2,
                             &q[(i * heads + head) * qk + nope]);
    }
  }

  std::vector<float> o(n * heads * vdim);  // [n, H, v]
  const int64_t kvb_width = nope + vdim;   // Rows of kv_b per head: W_UK [nope] then W_UV [v].
  if (absorbed) {
    // MQA over the latents: query [q_nope·W_UK | q_pe] against key [c | k_pe].
    ThreadPool::Default().ParallelFor(n * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> query(latent), scores(context), o_latent(rank);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i = task / heads, head = task % heads;
        const float* q_head = &q[task * qk];
        std::fill(query.begin(), query.end(), 0.0f);
        cpu::LinearTransposedAccumulate(q_head, lw.kv_b.RowSlice(head * kvb_width, nope),
                                        query.data());
        std::copy_n(q_head + nope, rope, query.data() + rank);
        const int64_t visible = start + i + 1;  // Causal: positions 0 … start + i.
        for (int64_t j = 0; j < visible; ++j) {
          scores[j] = softmax_scale_ * cpu::Dot(query.data(), cache.At(layer, j), latent);
        }
        cpu::Softmax(scores.data(), visible);
        std::fill(o_latent.begin(), o_latent.end(), 0.0f);
        for (int64_t j = 0; j < visible; ++j) {
          cpu::Axpy(scores[j], cache.At(layer, j), o_latent.data(), rank);
        }
        cpu::Linear(o_latent.data(), 1, lw.kv_b.RowSlice(head * kvb_width + nope, vdim),
                    &o[task * vdim], 0, /*parallel=*/false);
      }
    });
  } else {
    // K_nope and V of every position from its latent: [context, H, nope + v].
    std::vector<float> kv(context * heads * kvb_width);
    cpu::Linear(cache.At(layer, 0), context, lw.kv_b, kv.data(), /*x_stride=*/latent);
    ThreadPool::Default().ParallelFor(n * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(context);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i = task / heads, head = task % heads;
        const float* q_head = &q[task * qk];
        const int64_t visible = start + i + 1;
        for (int64_t j = 0; j < visible; ++j) {
          const float* k_nope = &kv[(j * heads + head) * kvb_width];
          scores[j] = softmax_scale_ * (cpu::Dot(q_head, k_nope, nope) +
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
  cpu::Linear(o.data(), n, lw.o, out);
}

void DeepseekV2Model::Mlp(const MlpWeights& mlp, const float* x, int64_t n, float* out) const {
  const int64_t width = mlp.gate.rows;
  std::vector<float> gate(n * width), up(n * width);  // [n, width]
  cpu::Linear(x, n, mlp.gate, gate.data());
  cpu::Linear(x, n, mlp.up, up.data());
  cpu::SiluMul(gate.data(), up.data(), gate.data(), n * width);
  cpu::Linear(gate.data(), n, mlp.down, out);
}

void DeepseekV2Model::Ffn(int64_t layer, const float* x, int64_t n, float* out) const {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t hidden = config_.hidden_size;
  if (!lw.is_moe) return Mlp(lw.dense, x, n, out);

  // Gate: softmax over the routed experts in float32, then selection.
  const int64_t num_experts = config_.n_routed_experts;
  const int64_t k = config_.num_experts_per_tok;
  std::vector<float> scores(n * num_experts);  // [n, E]
  cpu::Linear(x, n, lw.router, scores.data());
  std::vector<int32_t> ids(n * k);  // [n, k]
  std::vector<float> weights(n * k);
  for (int64_t i = 0; i < n; ++i) {
    cpu::Softmax(&scores[i * num_experts], num_experts);
    SelectExperts(config_, &scores[i * num_experts], &ids[i * k], &weights[i * k]);
  }

  // Routed experts, tokens grouped by expert; each token's sum runs over its
  // experts in ascending id order whatever else is in the batch.
  std::fill(out, out + n * hidden, 0.0f);
  std::vector<float> gathered, expert_out;
  std::vector<int64_t> rows;
  std::vector<float> row_weights;
  for (int64_t e = 0; e < num_experts; ++e) {
    rows.clear();
    row_weights.clear();
    for (int64_t slot = 0; slot < n * k; ++slot) {
      if (ids[slot] == e) {
        rows.push_back(slot / k);
        row_weights.push_back(weights[slot]);
      }
    }
    if (rows.empty()) continue;
    const int64_t m = static_cast<int64_t>(rows.size());
    gathered.resize(m * hidden);
    expert_out.resize(m * hidden);
    for (int64_t r = 0; r < m; ++r) std::copy_n(x + rows[r] * hidden, hidden, &gathered[r * hidden]);
    Mlp(lw.experts[e], gathered.data(), m, expert_out.data());
    for (int64_t r = 0; r < m; ++r) {
      cpu::Axpy(row_weights[r], &expert_out[r * hidden], out + rows[r] * hidden, hidden);
    }
  }
  // Shared experts, added unscaled.
  if (config_.n_shared_experts > 0) {
    std::vector<float> shared(n * hidden);
    Mlp(lw.shared, x, n, shared.data());
    for (int64_t i = 0; i < n * hidden; ++i) out[i] += shared[i];
  }
}

}  // namespace dsv2
