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
namespace {

// The epsilon of the attention's low-rank norms, q_a_layernorm and
// kv_a_layernorm. The reference implementations build them without passing
// the config's rms_norm_eps, so they take the norm class's default, 1e-6,
// whatever config.json says: DeepSeek's remote code (modeling_deepseek.py:
// `DeepseekV2RMSNorm(config.q_lora_rank)` and `(config.kv_lora_rank)`, with
// `eps=1e-6` the default of `DeepseekV2RMSNorm.__init__`) and transformers'
// native port (modeling_deepseek_v2.py, the same two constructors; checked
// in 5.25.0). Only input_layernorm, post_attention_layernorm and the final
// norm use rms_norm_eps. The published checkpoints set rms_norm_eps to 1e-6,
// so they cannot tell the two apart; tests/data/tiny-eps can
// (docs/golden.md).
constexpr float kAttentionNormEps = 1e-6f;

}  // namespace

DeepseekV2Model::DeepseekV2Model(ModelConfig config, Checkpoint checkpoint, ModelWeights weights)
    : config_(std::move(config)),
      checkpoint_(std::move(checkpoint)),
      weights_(std::move(weights)),
      rope_(config_),
      softmax_scale_(static_cast<float>(config_.SoftmaxScale())),
      experts_(std::make_shared<LocalRoutedExperts>(config_, weights_)) {}

absl::StatusOr<std::unique_ptr<DeepseekV2Model>> DeepseekV2Model::Load(
    const std::string& dir, const ModelLoadOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(ModelConfig config,
                   LoadModelConfig((std::filesystem::path(dir) / "config.json").string()));
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(dir));
  // BindWeights checks the checkpoint against the config before it sizes
  // anything from the config.
  ASSIGN_OR_RETURN(ModelWeights weights, BindWeights(config, checkpoint));
  RETURN_IF_ERROR(CheckWeightsFinite(checkpoint, options.weight_check, options.full_check_filter));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  DSV2_LOG(INFO) << absl::StrFormat(
      "loaded %s: %d layers, %.3f GB in %d file(s), weight check %s, in %.2f s", dir,
      config.num_hidden_layers, checkpoint.total_bytes() / 1e9, checkpoint.num_files(),
      WeightCheckName(options.weight_check), seconds);
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

absl::Status DeepseekV2Model::Forward(std::span<const int32_t> tokens, KvCacheView& cache,
                                      const ForwardOptions& options,
                                      std::vector<float>* logits) const {
  const SequenceChunk chunk{tokens, &cache, options.attention,
                            options.all_logits ? ChunkLogits::kAll : ChunkLogits::kLast};
  return ForwardBatch({&chunk, 1}, logits);
}

absl::Status DeepseekV2Model::ForwardBatch(std::span<const SequenceChunk> chunks,
                                           std::vector<float>* logits) const {
  const int64_t hidden = config_.hidden_size;
  const int64_t heads = config_.num_attention_heads;
  const int64_t qk = config_.qk_head_dim();
  const int64_t latent = config_.latent_dim();
  const int64_t half = config_.qk_rope_head_dim / 2;
  // Validate everything before any cache is touched.
  int64_t total = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const SequenceChunk& chunk = chunks[c];
    const int64_t n = static_cast<int64_t>(chunk.tokens.size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("chunk ", c, " has no tokens"));
    for (int64_t i = 0; i < n; ++i) {
      if (chunk.tokens[i] < 0 || chunk.tokens[i] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", chunk.tokens[i], " at index ",
                                                       i, " is outside the vocabulary [0, ",
                                                       config_.vocab_size, ")"));
      }
    }
    if (chunk.cache->size() + n > chunk.cache->capacity()) {
      return absl::OutOfRangeError(absl::StrCat("sequence of ", chunk.cache->size() + n,
                                                " tokens exceeds the cache capacity of ",
                                                chunk.cache->capacity()));
    }
    total += n;
  }
  if (total == 0) return absl::InvalidArgumentError("no tokens to run");

  // Row offsets, cos/sin of every new position [total, rope/2], embeddings.
  std::vector<int64_t> first_row(chunks.size() + 1, 0);
  for (size_t c = 0; c < chunks.size(); ++c) {
    first_row[c + 1] = first_row[c] + static_cast<int64_t>(chunks[c].tokens.size());
  }
  std::vector<float> cos(total * half), sin(total * half);
  std::vector<float> h(total * hidden), x(total * hidden), delta(total * hidden);  // [total, hidden]
  for (size_t c = 0; c < chunks.size(); ++c) {
    for (int64_t i = 0; i < static_cast<int64_t>(chunks[c].tokens.size()); ++i) {
      const int64_t row = first_row[c] + i;
      rope_.CosSin(chunks[c].cache->size() + i, &cos[row * half], &sin[row * half]);
      cpu::EmbeddingRow(weights_.embed, chunks[c].tokens[i], &h[row * hidden]);
    }
  }

  const float eps = static_cast<float>(config_.rms_norm_eps);
  std::vector<float> q(total * heads * qk);                      // [total, H, qk]
  std::vector<float> kv_a(total * latent);                       // [total, latent]
  std::vector<float> o(total * heads * config_.v_head_dim);      // [total, H, v]
  std::vector<float> q_a(config_.has_q_lora() ? total * config_.q_lora_rank : 0);
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerWeights& lw = weights_.layers[layer];
    cpu::RmsNorm(h.data(), lw.input_norm.data(), total, hidden, eps, x.data());
    if (config_.has_q_lora()) {
      cpu::Linear(x.data(), total, lw.q_a, q_a.data());
      cpu::RmsNorm(q_a.data(), lw.q_a_norm.data(), total, config_.q_lora_rank, kAttentionNormEps,
                   q_a.data());
      cpu::Linear(q_a.data(), total, lw.q_b, q.data());
    } else {
      cpu::Linear(x.data(), total, lw.q, q.data());
    }
    cpu::Linear(x.data(), total, lw.kv_a, kv_a.data());
    for (size_t c = 0; c < chunks.size(); ++c) {
      const int64_t row = first_row[c];
      ChunkAttention(layer, chunks[c], &q[row * heads * qk], &kv_a[row * latent],
                     &cos[row * half], &sin[row * half], &o[row * heads * config_.v_head_dim]);
    }
    cpu::Linear(o.data(), total, lw.o, delta.data());
    for (int64_t i = 0; i < total * hidden; ++i) h[i] += delta[i];
    cpu::RmsNorm(h.data(), lw.post_attention_norm.data(), total, hidden, eps, x.data());
    RETURN_IF_ERROR(Ffn(layer, x.data(), total, delta.data()));
    for (int64_t i = 0; i < total * hidden; ++i) h[i] += delta[i];
  }

  // Final norm and LM head over the rows that want logits.
  int64_t rows = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int64_t n = first_row[c + 1] - first_row[c];
    chunks[c].cache->set_size(chunks[c].cache->size() + n);
    if (chunks[c].logits == ChunkLogits::kNone) continue;
    const bool all = chunks[c].logits == ChunkLogits::kAll;
    const int64_t count = all ? n : 1;
    cpu::RmsNorm(&h[(first_row[c + 1] - count) * hidden], weights_.final_norm.data(), count,
                 hidden, eps, &x[rows * hidden]);
    rows += count;
  }
  logits->resize(rows * config_.vocab_size);
  if (rows > 0) cpu::Linear(x.data(), rows, weights_.lm_head, logits->data());
  return absl::OkStatus();
}

void DeepseekV2Model::ChunkAttention(int64_t layer, const SequenceChunk& chunk, float* q,
                                     const float* kv_a, const float* cos, const float* sin,
                                     float* o) const {
  const LayerWeights& lw = weights_.layers[layer];
  KvCacheView& cache = *chunk.cache;
  const int64_t n = static_cast<int64_t>(chunk.tokens.size());
  const int64_t heads = config_.num_attention_heads;
  const int64_t nope = config_.qk_nope_head_dim;
  const int64_t rope = config_.qk_rope_head_dim;
  const int64_t half = rope / 2;
  const int64_t qk = config_.qk_head_dim();
  const int64_t vdim = config_.v_head_dim;
  const int64_t rank = config_.kv_lora_rank;
  const int64_t latent = config_.latent_dim();
  const int64_t start = cache.size();
  const int64_t context = start + n;

  // Latents of the new positions: [c_raw | k_pe] → cache [RMSNorm(c) | RoPE(k_pe)];
  // RoPE on the queries' rope slice.
  for (int64_t i = 0; i < n; ++i) {
    float* slot = cache.At(layer, start + i);
    cpu::RmsNorm(&kv_a[i * latent], lw.kv_a_norm.data(), 1, rank, kAttentionNormEps, slot);
    std::copy_n(&kv_a[i * latent + rank], rope, slot + rank);
    RotaryEmbedding::Apply(&cos[i * half], &sin[i * half], half, slot + rank);
    for (int64_t head = 0; head < heads; ++head) {
      RotaryEmbedding::Apply(&cos[i * half], &sin[i * half], half, &q[(i * heads + head) * qk + nope]);
    }
  }

  bool absorbed = chunk.attention == AttentionForm::kAbsorbed;
  if (chunk.attention == AttentionForm::kAuto) absorbed = PrefersAbsorbed(n, context);
  const int64_t kvb_width = nope + vdim;  // Rows of kv_b per head: W_UK [nope] then W_UV [v].
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
    return;
  }
  // K_nope and V of every position from its latent: [context, H, nope + v],
  // one Linear per run of consecutively stored positions.
  std::vector<float> kv(context * heads * kvb_width);
  for (int64_t pos = 0; pos < context;) {
    const int64_t run = std::min(cache.ContiguousFrom(pos), context - pos);
    cpu::Linear(cache.At(layer, pos), run, lw.kv_b, &kv[pos * heads * kvb_width],
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

absl::Status DeepseekV2Model::Ffn(int64_t layer, const float* x, int64_t n, float* out) const {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t hidden = config_.hidden_size;
  if (!lw.is_moe) {
    RunMlp(lw.dense, x, n, out);
    return absl::OkStatus();
  }
  // Gate: softmax over the routed experts in float32, then selection.
  const int64_t num_experts = config_.n_routed_experts;
  const int64_t k = config_.num_experts_per_tok;
  std::vector<float> scores(n * num_experts);  // [n, E]
  cpu::Linear(x, n, lw.router, scores.data());
  std::vector<int32_t> ids(n * k);  // [n, k]
  std::vector<float> weights(n * k);
  RETURN_IF_ERROR(RouteTokens(config_, layer, scores.data(), n, ids.data(), weights.data()));
  // Shared experts, computed while the routed ones are away, added unscaled
  // after them.
  std::vector<float> shared;
  RETURN_IF_ERROR(experts_->Compute(layer, x, n, k, ids.data(), weights.data(), out, [&] {
    if (config_.n_shared_experts == 0) return;
    shared.resize(n * hidden);
    RunMlp(lw.shared, x, n, shared.data());
  }));
  if (!shared.empty()) {
    for (int64_t i = 0; i < n * hidden; ++i) out[i] += shared[i];
  }
  return absl::OkStatus();
}

}  // namespace dsv2
