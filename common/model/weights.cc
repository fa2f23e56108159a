#include "common/model/weights.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/tensor/q8.h"

namespace dsv2 {
namespace {

constexpr char kEmbedName[] = "model.embed_tokens.weight";

std::string LayerPrefix(int64_t layer) { return absl::StrCat("model.layers.", layer, "."); }

// Walks the specs of a config, stopping once the visitor has said stop.
class SpecWalker {
 public:
  explicit SpecWalker(absl::FunctionRef<bool(const TensorSpec&)> visit) : visit_(visit) {}

  bool stopped() const { return stopped_; }
  void Add(TensorSpec spec) {
    if (!stopped_) stopped_ = !visit_(spec);
  }
  void AddMlp(const std::string& prefix, int64_t width, int64_t hidden, int64_t layer,
              int64_t expert) {
    Add({prefix + "gate_proj.weight", {width, hidden}, layer, expert});
    Add({prefix + "up_proj.weight", {width, hidden}, layer, expert});
    Add({prefix + "down_proj.weight", {hidden, width}, layer, expert});
  }

 private:
  absl::FunctionRef<bool(const TensorSpec&)> visit_;
  bool stopped_ = false;
};

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// What the config says that puts `spec` in the list, for messages.
std::string Why(const ModelConfig& config, const TensorSpec& spec) {
  if (spec.expert >= 0) {
    return absl::StrCat("; the config has n_routed_experts = ", config.n_routed_experts);
  }
  if (spec.layer >= 0) {
    return absl::StrCat("; the config has num_hidden_layers = ", config.num_hidden_layers);
  }
  return "";
}

// `spec` in `checkpoint`, present with its shape and a float dtype.
absl::StatusOr<const TensorInfo*> FindExpected(const ModelConfig& config,
                                               const Checkpoint& checkpoint,
                                               const TensorSpec& spec) {
  const TensorInfo* info = checkpoint.Find(spec.name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", checkpoint.dir(), " has no tensor '",
                                            spec.name, "' (expected shape ",
                                            ShapeString(spec.shape), Why(config, spec), ")"));
  }
  if (info->shape != spec.shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", spec.name, "' in ", info->file, " has shape ", ShapeString(info->shape),
        ", but the config implies ", ShapeString(spec.shape)));
  }
  if (!info->dtype.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", spec.name, "' in ", info->file, " has dtype ", info->dtype_name,
                     IsQuantizable(spec) ? "; expected BF16, F16, F32 or I8 (with its scales)"
                                         : "; expected BF16, F16 or F32"));
  }
  if (*info->dtype == DType::kI8) {
    if (!IsQuantizable(spec)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", spec.name, "' in ", info->file,
          " has dtype I8; expected BF16, F16 or F32 (only the linear layers' weights may be int8: "
          "norms, the embedding and the MoE router stay float)"));
    }
    if (!config.int8_weights) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", spec.name, "' in ", info->file,
          " has dtype I8, but config.json has no quantization_config {\"quant_method\": "
          "\"dsv2-int8\", \"group_size\": 32}"));
    }
  }
  return info;
}

// The scales of `weight` (spec's tensor) when it is int8, nullptr when it is
// float: present, F32, [rows, Q8Blocks(cols)] and 4-byte aligned.
absl::StatusOr<const TensorInfo*> FindScales(const Checkpoint& checkpoint, const TensorSpec& spec,
                                             const TensorInfo& weight) {
  if (weight.dtype != DType::kI8) return nullptr;
  const std::string name = ScaleTensorName(spec.name);
  const std::vector<int64_t> shape = {spec.shape[0], Q8Blocks(spec.shape[1])};
  const TensorInfo* info = checkpoint.Find(name);
  if (info == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "int8 tensor '", spec.name, "' in ", weight.file, " has no scale tensor '", name,
        "' in checkpoint ", checkpoint.dir(), " (expected F32 ", ShapeString(shape), ")"));
  }
  if (info->dtype_name != "F32") {
    return absl::InvalidArgumentError(absl::StrCat("scale tensor '", name, "' in ", info->file,
                                                   " has dtype ", info->dtype_name,
                                                   "; expected F32"));
  }
  if (info->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scale tensor '", name, "' in ", info->file, " has shape ", ShapeString(info->shape),
        ", but int8 tensor '", spec.name, "' ", ShapeString(spec.shape), " needs ",
        ShapeString(shape), " (one scale per block of ", kQ8Block, " columns)"));
  }
  if (reinterpret_cast<uintptr_t>(info->data) % alignof(float) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("scale tensor '", name, "' in ", info->file,
                                                   " is not 4-byte aligned in its file"));
  }
  return info;
}

// Every scale finite and not negative: a NaN or infinite scale would poison
// every token through its row, a negative one flip its sign.
absl::Status CheckScaleValues(const TensorInfo& scales) {
  const auto* values = static_cast<const float*>(scales.data);
  const int64_t n = scales.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (!(values[i] >= 0.0f) || std::isinf(values[i])) {
      const int64_t blocks = scales.shape[1];
      return absl::InvalidArgumentError(absl::StrCat(
          "scale tensor '", scales.name, "' in ", scales.file, " holds ", values[i], " at [",
          i / blocks, ", ", i % blocks, "]; scales must be finite and not negative"));
    }
  }
  return absl::OkStatus();
}

class Binder {
 public:
  Binder(const ModelConfig& config, const Checkpoint& checkpoint)
      : config_(config), checkpoint_(checkpoint) {}

  absl::StatusOr<const TensorInfo*> Get(const TensorSpec& spec) {
    return FindExpected(config_, checkpoint_, spec);
  }

  absl::StatusOr<WeightMatrix> Matrix(const TensorSpec& spec) {
    ASSIGN_OR_RETURN(const TensorInfo* info, Get(spec));
    ASSIGN_OR_RETURN(const TensorInfo* scales, FindScales(checkpoint_, spec, *info));
    if (scales != nullptr) RETURN_IF_ERROR(CheckScaleValues(*scales));
    return WeightMatrix{*info->dtype, spec.shape[0], spec.shape[1], info->data,
                        scales == nullptr ? nullptr : static_cast<const float*>(scales->data)};
  }

  absl::StatusOr<std::vector<float>> Vector(const TensorSpec& spec) {
    ASSIGN_OR_RETURN(const TensorInfo* info, Get(spec));
    std::vector<float> values(spec.shape[0]);
    ConvertToFloat(info->data, *info->dtype, spec.shape[0], values.data());
    return values;
  }

 private:
  const ModelConfig& config_;
  const Checkpoint& checkpoint_;
};

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void ForEachExpectedTensor(const ModelConfig& c, absl::FunctionRef<bool(const TensorSpec&)> visit) {
  const int64_t h = c.hidden_size;
  const int64_t heads = c.num_attention_heads;
  SpecWalker walk(visit);
  walk.Add({kEmbedName, {c.vocab_size, h}});
  for (int64_t layer = 0; layer < c.num_hidden_layers && !walk.stopped(); ++layer) {
    const std::string p = LayerPrefix(layer);
    walk.Add({p + "input_layernorm.weight", {h}, layer});
    if (c.has_q_lora()) {
      walk.Add({p + "self_attn.q_a_proj.weight", {c.q_lora_rank, h}, layer});
      walk.Add({p + "self_attn.q_a_layernorm.weight", {c.q_lora_rank}, layer});
      walk.Add({p + "self_attn.q_b_proj.weight", {heads * c.qk_head_dim(), c.q_lora_rank}, layer});
    } else {
      walk.Add({p + "self_attn.q_proj.weight", {heads * c.qk_head_dim(), h}, layer});
    }
    walk.Add({p + "self_attn.kv_a_proj_with_mqa.weight", {c.latent_dim(), h}, layer});
    walk.Add({p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank}, layer});
    walk.Add({p + "self_attn.kv_b_proj.weight",
              {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
              layer});
    walk.Add({p + "self_attn.o_proj.weight", {h, heads * c.v_head_dim}, layer});
    walk.Add({p + "post_attention_layernorm.weight", {h}, layer});
    if (c.IsMoeLayer(layer)) {
      walk.Add({p + "mlp.gate.weight", {c.n_routed_experts, h}, layer});
      for (int64_t e = 0; e < c.n_routed_experts && !walk.stopped(); ++e) {
        walk.AddMlp(absl::StrCat(p, "mlp.experts.", e, "."), c.moe_intermediate_size, h, layer, e);
      }
      if (c.n_shared_experts > 0) {
        walk.AddMlp(p + "mlp.shared_experts.", c.n_shared_experts * c.moe_intermediate_size, h,
                    layer, -1);
      }
    } else {
      walk.AddMlp(p + "mlp.", c.intermediate_size, h, layer, -1);
    }
  }
  walk.Add({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) walk.Add({"lm_head.weight", {c.vocab_size, h}});
}

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config) {
  std::vector<TensorSpec> specs;
  ForEachExpectedTensor(config, [&](const TensorSpec& spec) {
    specs.push_back(spec);
    return true;
  });
  return specs;
}

bool IsQuantizable(const TensorSpec& spec) {
  return spec.shape.size() == 2 && spec.name != kEmbedName &&
         !spec.name.ends_with(".mlp.gate.weight");
}

std::string ScaleTensorName(std::string_view weight_name) {
  return std::string(weight_name) + "_scale";
}

absl::Status CheckCheckpointMatchesConfig(const ModelConfig& config, const Checkpoint& checkpoint) {
  absl::Status status;
  ForEachExpectedTensor(config, [&](const TensorSpec& spec) {
    absl::StatusOr<const TensorInfo*> info = FindExpected(config, checkpoint, spec);
    status = info.ok() ? FindScales(checkpoint, spec, **info).status() : info.status();
    return status.ok();
  });
  return status;
}

ParameterCounts CountParameters(const ModelConfig& config) {
  ParameterCounts counts;
  int64_t expert0 = 0;  // Parameters of routed expert 0, summed over the MoE layers.
  ForEachExpectedTensor(config, [&](const TensorSpec& spec) {
    counts.total += spec.numel();
    const bool lookup_only = spec.name == kEmbedName && !config.tie_word_embeddings;
    if (spec.expert < 0 && !lookup_only) counts.activated += spec.numel();
    if (spec.expert == 0) expert0 += spec.numel();
    return true;
  });
  counts.activated += config.num_experts_per_tok * expert0;
  return counts;
}

absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& c, const Checkpoint& checkpoint) {
  // Nothing below is sized from the config until the checkpoint agrees with it.
  RETURN_IF_ERROR(CheckCheckpointMatchesConfig(c, checkpoint));
  Binder binder(c, checkpoint);
  const std::vector<TensorSpec> specs = ExpectedTensors(c);
  auto it = specs.begin();  // Walks the specs in the order ExpectedTensors emits them.
  auto next = [&]() -> const TensorSpec& { return *it++; };
  auto mlp = [&]() -> absl::StatusOr<MlpWeights> {
    MlpWeights m;
    ASSIGN_OR_RETURN(m.gate, binder.Matrix(next()));
    ASSIGN_OR_RETURN(m.up, binder.Matrix(next()));
    ASSIGN_OR_RETURN(m.down, binder.Matrix(next()));
    return m;
  };

  ModelWeights w;
  ASSIGN_OR_RETURN(w.embed, binder.Matrix(next()));
  w.layers.resize(c.num_hidden_layers);
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    LayerWeights& l = w.layers[layer];
    ASSIGN_OR_RETURN(l.input_norm, binder.Vector(next()));
    if (c.has_q_lora()) {
      ASSIGN_OR_RETURN(l.q_a, binder.Matrix(next()));
      ASSIGN_OR_RETURN(l.q_a_norm, binder.Vector(next()));
      ASSIGN_OR_RETURN(l.q_b, binder.Matrix(next()));
    } else {
      ASSIGN_OR_RETURN(l.q, binder.Matrix(next()));
    }
    ASSIGN_OR_RETURN(l.kv_a, binder.Matrix(next()));
    ASSIGN_OR_RETURN(l.kv_a_norm, binder.Vector(next()));
    ASSIGN_OR_RETURN(l.kv_b, binder.Matrix(next()));
    ASSIGN_OR_RETURN(l.o, binder.Matrix(next()));
    ASSIGN_OR_RETURN(l.post_attention_norm, binder.Vector(next()));
    l.is_moe = c.IsMoeLayer(layer);
    if (l.is_moe) {
      ASSIGN_OR_RETURN(l.router, binder.Matrix(next()));
      l.experts.resize(c.n_routed_experts);
      for (MlpWeights& expert : l.experts) {
        ASSIGN_OR_RETURN(expert, mlp());
        for (WeightMatrix* m : {&expert.gate, &expert.up, &expert.down}) m->routed = true;
      }
      if (c.n_shared_experts > 0) {
        ASSIGN_OR_RETURN(l.shared, mlp());
      }
    } else {
      ASSIGN_OR_RETURN(l.dense, mlp());
    }
  }
  ASSIGN_OR_RETURN(w.final_norm, binder.Vector(next()));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
  } else {
    ASSIGN_OR_RETURN(w.lm_head, binder.Matrix(next()));
  }
  return w;
}

}  // namespace dsv2
