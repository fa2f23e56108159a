// The bounds of every repeated and string field of the public API
// (dsv2.v1), checked before anything is copied, tokenized or forwarded: by
// the router and by every engine-running server. A request outside them is
// INVALID_ARGUMENT naming the field and its limit, e.g.
//
//   stopping.stop_token_ids has 15000000 ids; at most 1024
//
// (The gRPC message itself is bounded by ServerSettings::max_receive_bytes;
// string fields are UTF-8, checked where the message is parsed.)
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "dsv2/v1/generation.pb.h"

namespace dsv2 {

inline constexpr size_t kMaxRequestIdBytes = 256;
inline constexpr size_t kMaxInputBytes = 1 << 20;  // text, or all chat contents
inline constexpr int kMaxChatMessages = 4096;
inline constexpr size_t kMaxRoleBytes = 64;
inline constexpr int kMaxPromptIds = 1 << 20;
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr int kMaxStopTokenIds = 1024;
inline constexpr int kMaxLogitBias = 1024;
inline constexpr int kMaxLogprobs = 20;

absl::Status CheckBounds(const v1::GenerateRequest& request);
absl::Status CheckBounds(const v1::TokenizeRequest& request);
absl::Status CheckBounds(const v1::AbortRequest& request);

}  // namespace dsv2
