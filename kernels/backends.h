// The compute backends by name, for the --backend flags of the servers and
// the dsv2 tool: "cpu" (always) and "cuda" (CUDA builds with a device).
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "common/model/backend.h"

namespace dsv2 {

// The process-wide backend named `name`, created on first use and kept for
// the process. InvalidArgument for an unknown name; FailedPrecondition for
// "cuda" in a build without CUDA or on a machine without a usable device,
// saying which.
absl::StatusOr<Backend*> BackendByName(std::string_view name);

}  // namespace dsv2
