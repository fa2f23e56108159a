// Conversions between gRPC's and Abseil's statuses, whose codes have the
// same numbers.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace dsv2 {

// The same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace dsv2
