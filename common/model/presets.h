// The config.json files of the published models, built into the binary so
// that `dsv2 make-model` can write checkpoints at their real dimensions. The
// sources are common/model/presets/*.json (values from the model reference,
// shared/reference/deepseek-v2-model.md §1); tests read the same files.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace dsv2 {

// "v2" (DeepSeek-V2, 236B) or "lite" (DeepSeek-V2-Lite, 15.7B).
absl::StatusOr<std::string> PresetConfigJson(std::string_view preset);

}  // namespace dsv2
