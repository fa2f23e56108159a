// The tensors a DeepSeek-V2 checkpoint must hold, named and shaped as
// published (nn.Linear layout [out, in]; see the model reference §4), and the
// structured views the forward pass reads them through.
//
// ExpectedTensors() is the single list of tensor names in the project: the
// loader checks a checkpoint against it, `dsv2 inspect` counts parameters
// from it, and `dsv2 make-model` writes checkpoints from it.
// ForEachExpectedTensor walks the same list one tensor at a time, so that a
// config can be checked against a checkpoint (and its parameters counted)
// without first allocating a list as long as the config says.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "common/model/checkpoint.h"
#include "common/model/config.h"
#include "kernels/cpu/weight_matrix.h"

namespace dsv2 {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t layer = -1;   // -1 outside the decoder layers.
  int64_t expert = -1;  // Routed expert index, -1 for everything else.
  int64_t numel() const;
};

// Every tensor the config implies, in checkpoint order (embedding, layers,
// final norm, LM head).
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);
// Calls `visit` with each of them in the same order, until it returns false.
void ForEachExpectedTensor(const ModelConfig& config,
                           absl::FunctionRef<bool(const TensorSpec&)> visit);

// Whether `spec` may be stored as int8 in a dsv2-int8 checkpoint: every
// linear layer's weight (attention q, q_a, q_b, kv_a, kv_b, o; the dense
// MLPs; shared and routed experts; lm_head) but the embedding, whose one row
// per token is read rather than multiplied, and the MoE routers
// (mlp.gate.weight), which decide the routing and are tiny. Norm vectors
// are not matrices and stay float too.
bool IsQuantizable(const TensorSpec& spec);
// The float32 scales of an int8 weight: "<weight name>_scale", shaped
// [rows, Q8Blocks(cols)] (common/tensor/q8.h).
std::string ScaleTensorName(std::string_view weight_name);

// Checks, before anything is allocated from the config, that `checkpoint`
// holds every tensor of ExpectedTensors(config) with that shape and a float
// dtype (BF16, F16, F32) — or, when config.int8_weights and IsQuantizable,
// I8 with its scale tensor (F32, [rows, Q8Blocks(cols)], 4-byte aligned; an
// I8 tensor elsewhere, or a missing or misshapen scale tensor, is
// InvalidArgument naming the tensors and the file). Walks the list one
// tensor at a time and stops at the first that is missing (NotFound) or
// wrong (InvalidArgument), naming it, its file, the shape the config implies
// and, for a layer's tensor, how many layers the config says — so a config
// that claims more than the checkpoint holds fails after reading at most one
// tensor beyond it.
absl::Status CheckCheckpointMatchesConfig(const ModelConfig& config, const Checkpoint& checkpoint);

struct ParameterCounts {
  int64_t total = 0;
  // What one token computes with: everything but the routed experts it does
  // not select (num_experts_per_tok per MoE layer count) and the embedding
  // table, of which it reads one row — the paper's convention (2.4B for
  // V2-Lite, 21B for V2). With tied embeddings the table is the LM head and counts.
  int64_t activated = 0;
};
ParameterCounts CountParameters(const ModelConfig& config);

// A SwiGLU MLP: down(silu(gate x) ⊙ up x).
struct MlpWeights {
  WeightMatrix gate, up, down;
};

struct LayerWeights {
  std::vector<float> input_norm;              // [hidden]
  std::vector<float> post_attention_norm;     // [hidden]
  WeightMatrix q_a;                           // [q_lora_rank, hidden]      (V2)
  std::vector<float> q_a_norm;                // [q_lora_rank]              (V2)
  WeightMatrix q_b;                           // [H·qk_head_dim, q_lora_rank] (V2)
  WeightMatrix q;                             // [H·qk_head_dim, hidden]    (Lite)
  WeightMatrix kv_a;                          // [kv_lora_rank + rope, hidden]
  std::vector<float> kv_a_norm;               // [kv_lora_rank]
  WeightMatrix kv_b;                          // [H·(nope + v), kv_lora_rank]
  WeightMatrix o;                             // [hidden, H·v]
  bool is_moe = false;
  MlpWeights dense;                           // Dense layers.
  WeightMatrix router;                        // [n_routed, hidden]     (MoE)
  std::vector<MlpWeights> experts;            // n_routed, matrices .routed (MoE)
  MlpWeights shared;                          // width n_shared·moe_inter (MoE)
};

struct ModelWeights {
  WeightMatrix embed;                         // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;              // [hidden]
  WeightMatrix lm_head;                       // [vocab, hidden]
};

// CheckCheckpointMatchesConfig, then binds the views. Int8 weights' scales
// are read as they are bound: one that is NaN, infinite or negative is
// InvalidArgument naming the scale tensor, its file and the element (this
// reads every scale, 1/8 of the int8 bytes). The checkpoint must outlive
// the returned weights.
absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& config, const Checkpoint& checkpoint);

}  // namespace dsv2
