// Scans a checkpoint's weights for NaN and infinity at load, so a corrupt or
// overflowed checkpoint fails with the tensor's name instead of producing
// garbage (or, on a cluster, misleading data-plane errors) at the first
// request.
//
// Three levels, chosen with --weight_check (server/serving) or the dsv2
// tool's --weight-check:
//   off    nothing is scanned;
//   cheap  (the default) the tensors a non-finite value poisons every token
//          through, which are small: every norm vector (*layernorm.weight,
//          model.norm.weight) and every MoE router (mlp.gate.weight, and
//          mlp.gate.e_score_correction_bias where a checkpoint has one) —
//          for DeepSeek-V2 about 0.02% of the bytes;
//   full   every floating-point tensor of the checkpoint (or those the
//          caller's filter accepts: a process scans what it will read),
//          which reads every byte from disk once.
// Forward passes check the router scores too (moe_routing.h), which
// catches what the scans leave out: weights that overflow only in
// arithmetic, and non-finite values in tensors a cheap scan skips.
//
// Thread safety: the functions are thread-safe; scans use the default
// ThreadPool.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/checkpoint.h"
#include "common/model/safetensors.h"

namespace dsv2 {

enum class WeightCheck { kOff, kCheap, kFull };

// "off", "cheap" or "full"; anything else is InvalidArgument "must be off,
// cheap or full, not 'x'" (callers put the flag's name in front).
absl::StatusOr<WeightCheck> ParseWeightCheck(std::string_view name);
const char* WeightCheckName(WeightCheck check);

// Whether the cheap check scans the tensor `name`: a norm vector or a MoE
// router's weight or bias.
bool IsCheapCheckTensor(std::string_view name);

// The index of the first NaN or infinite element of elements [begin, end) of
// `tensor`, or nullopt. BF16, F16, F32 and F64 data are scanned; other
// dtypes (integers, 8-bit floats) hold no such values as far as the engine
// is concerned and yield nullopt.
std::optional<int64_t> FindNonFinite(const TensorInfo& tensor, int64_t begin, int64_t end);

// Scans the tensors `check` selects — for kFull, those `want` accepts (all
// when null) — and returns InvalidArgument naming the first tensor (in name
// order) that holds a non-finite value, its file, and the first such
// element's coordinates and value, e.g.
//   tensor 'model.layers.1.mlp.gate.weight' in DIR/model.safetensors holds a
//   non-finite value (nan) at [3, 17]; the weights are corrupt
absl::Status CheckWeightsFinite(const Checkpoint& checkpoint, WeightCheck check,
                                const std::function<bool(std::string_view)>& want = nullptr);

}  // namespace dsv2
