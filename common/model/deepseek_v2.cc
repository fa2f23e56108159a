#include "common/model/deepseek_v2.h"

#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "common/base/status_macros.h"
#include "common/model/moe_routing.h"

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

DeepseekV2Model::DeepseekV2Model(ModelConfig config, Checkpoint checkpoint, ModelWeights weights,
                                 Backend& backend)
    : config_(std::move(config)),
      checkpoint_(std::move(checkpoint)),
      weights_(std::move(weights)),
      backend_(backend),
      rope_(config_),
      mla_{.heads = config_.num_attention_heads,
           .nope = config_.qk_nope_head_dim,
           .rope = config_.qk_rope_head_dim,
           .v = config_.v_head_dim,
           .rank = config_.kv_lora_rank,
           .softmax_scale = static_cast<float>(config_.SoftmaxScale()),
           .latent_norm_eps = kAttentionNormEps},
      experts_(std::make_shared<LocalRoutedExperts>(config_, weights_, backend_)) {}

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
  Backend& backend = options.backend != nullptr ? *options.backend : CpuBackendInstance();
  // Backends key their resident copies by the host data pointers, which
  // moving `weights` into the model keeps.
  if (options.residency != WeightResidency::kOnFirstUse) {
    if (absl::Status status = backend.Prepare(weights, options.residency == WeightResidency::kAll);
        !status.ok()) {
      backend.Release(weights);
      return status;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  DSV2_LOG(INFO) << absl::StrFormat(
      "loaded %s: %d layers, %.3f GB in %d file(s), weight check %s, on %s, in %.2f s", dir,
      config.num_hidden_layers, checkpoint.total_bytes() / 1e9, checkpoint.num_files(),
      WeightCheckName(options.weight_check), backend.Description(), seconds);
  return std::unique_ptr<DeepseekV2Model>(new DeepseekV2Model(
      std::move(config), std::move(checkpoint), std::move(weights), backend));
}

DeepseekV2Model::~DeepseekV2Model() { backend_.Release(weights_); }

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
    if (chunk.cache->backend() != &backend_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the KV cache of chunk ", c, " is not in the memory of the model's backend (",
          std::string(backend_.name()), "): allocate it from the model's backend()"));
    }
    for (size_t other = 0; other < c; ++other) {
      if (chunks[other].cache == chunk.cache) {
        return absl::InvalidArgumentError(absl::StrCat(
            "chunks ", other, " and ", c,
            " share a KV cache: a step takes each sequence at most once"));
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

  // Row offsets, token ids and cos/sin of every new position [total, rope/2].
  Backend& be = backend_;
  std::vector<int64_t> first_row(chunks.size() + 1, 0);
  for (size_t c = 0; c < chunks.size(); ++c) {
    first_row[c + 1] = first_row[c] + static_cast<int64_t>(chunks[c].tokens.size());
  }
  std::vector<int32_t> ids(total);
  std::vector<float> host_cos(total * half), host_sin(total * half);
  for (size_t c = 0; c < chunks.size(); ++c) {
    for (int64_t i = 0; i < static_cast<int64_t>(chunks[c].tokens.size()); ++i) {
      const int64_t row = first_row[c] + i;
      ids[row] = chunks[c].tokens[i];
      rope_.CosSin(chunks[c].cache->size() + i, &host_cos[row * half], &host_sin[row * half]);
    }
  }
  Buffer cos = be.Allocate(total * half), sin = be.Allocate(total * half);
  be.Upload(host_cos.data(), cos.data(), total * half);
  be.Upload(host_sin.data(), sin.data(), total * half);
  // [total, hidden]: the residual stream, its normed input, a sublayer's output.
  Buffer h = be.Allocate(total * hidden), x = be.Allocate(total * hidden),
         delta = be.Allocate(total * hidden);
  be.Embedding(weights_.embed, ids.data(), total, h.data());

  const float eps = static_cast<float>(config_.rms_norm_eps);
  const int64_t vdim = config_.v_head_dim;
  Buffer q = be.Allocate(total * heads * qk);      // [total, H, qk]
  Buffer kv_a = be.Allocate(total * latent);       // [total, latent]
  Buffer o = be.Allocate(total * heads * vdim);    // [total, H, v]
  Buffer q_a = be.Allocate(config_.has_q_lora() ? total * config_.q_lora_rank : 0);
  std::vector<MlaChunk> mla_chunks(chunks.size());
  for (size_t c = 0; c < chunks.size(); ++c) {
    const SequenceChunk& chunk = chunks[c];
    const int64_t n = first_row[c + 1] - first_row[c];
    const bool absorbed = chunk.attention == AttentionForm::kAuto
                              ? PrefersAbsorbed(n, chunk.cache->size() + n)
                              : chunk.attention == AttentionForm::kAbsorbed;
    mla_chunks[c] = {chunk.cache, first_row[c], n, absorbed};
  }
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerWeights& lw = weights_.layers[layer];
    be.RmsNorm(h.data(), lw.input_norm, total, hidden, eps, x.data());
    if (config_.has_q_lora()) {
      be.Linear(x.data(), total, lw.q_a, q_a.data());
      be.RmsNorm(q_a.data(), lw.q_a_norm, total, config_.q_lora_rank, kAttentionNormEps,
                 q_a.data());
      be.Linear(q_a.data(), total, lw.q_b, q.data());
    } else {
      be.Linear(x.data(), total, lw.q, q.data());
    }
    be.Linear(x.data(), total, lw.kv_a, kv_a.data());
    be.MlaAttention(mla_, layer, lw.kv_b, lw.kv_a_norm, mla_chunks, q.data(), kv_a.data(),
                    cos.data(), sin.data(), o.data());
    be.Linear(o.data(), total, lw.o, delta.data());
    be.Add(delta.data(), h.data(), total * hidden);
    be.RmsNorm(h.data(), lw.post_attention_norm, total, hidden, eps, x.data());
    RETURN_IF_ERROR(Ffn(layer, x.data(), total, delta.data()));
    be.Add(delta.data(), h.data(), total * hidden);
  }

  // Final norm and LM head over the rows that want logits.
  int64_t rows = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int64_t n = first_row[c + 1] - first_row[c];
    chunks[c].cache->set_size(chunks[c].cache->size() + n);
    if (chunks[c].logits == ChunkLogits::kNone) continue;
    const bool all = chunks[c].logits == ChunkLogits::kAll;
    const int64_t count = all ? n : 1;
    be.RmsNorm(h.data() + (first_row[c + 1] - count) * hidden, weights_.final_norm, count, hidden,
               eps, x.data() + rows * hidden);
    rows += count;
  }
  logits->resize(rows * config_.vocab_size);
  if (rows > 0) {
    Buffer out = be.Allocate(rows * config_.vocab_size);
    be.Linear(x.data(), rows, weights_.lm_head, out.data());
    be.Download(out.data(), logits->data(), rows * config_.vocab_size);
  }
  return absl::OkStatus();
}

absl::Status DeepseekV2Model::Ffn(int64_t layer, const float* x, int64_t n, float* out) const {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t hidden = config_.hidden_size;
  Backend& be = backend_;
  if (!lw.is_moe) {
    be.Mlp(lw.dense, x, n, out);
    return absl::OkStatus();
  }
  // Gate: softmax over the routed experts in float32, then selection.
  const int64_t k = config_.num_experts_per_tok;
  Buffer scores = be.Allocate(n * config_.n_routed_experts);  // [n, E]
  be.Linear(x, n, lw.router, scores.data());
  std::vector<int32_t> ids(n * k);  // [n, k]
  std::vector<float> weights(n * k);
  RETURN_IF_ERROR(be.Route(config_, layer, scores.data(), n, ids.data(), weights.data()));
  // The routed experts take host memory (routed_experts.h).
  std::vector<float> host_x, host_out;
  const float* routed_x = x;
  float* routed_out = out;
  if (!be.host_memory()) {
    host_x.resize(n * hidden);
    host_out.resize(n * hidden);
    be.Download(x, host_x.data(), n * hidden);
    routed_x = host_x.data();
    routed_out = host_out.data();
  }
  // Shared experts, computed while the routed ones are away, added unscaled
  // after them.
  Buffer shared;
  RETURN_IF_ERROR(experts_->Compute(layer, routed_x, n, k, ids.data(), weights.data(), routed_out,
                                    [&] {
                                      if (config_.n_shared_experts == 0) return;
                                      shared = be.Allocate(n * hidden);
                                      be.Mlp(lw.shared, x, n, shared.data());
                                    }));
  if (!be.host_memory()) be.Upload(host_out.data(), out, n * hidden);
  if (shared.data() != nullptr) be.Add(shared.data(), out, n * hidden);
  return absl::OkStatus();
}

}  // namespace dsv2
