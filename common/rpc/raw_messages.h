// Protobuf messages to and from gRPC byte buffers, for the methods the
// project serves raw (callback API with grpc::ByteBuffer): a request that
// does not parse is answered with a precise INVALID_ARGUMENT instead of
// gRPC's INTERNAL with an empty message, and a string field that is not
// UTF-8 — what protobuf refuses for proto3 strings — is named by its path:
//
//   chat.messages[1].content is not valid UTF-8 (byte 7)
//
// Thread safety: free functions.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"

namespace dsv2 {

// Parses `buffer` into `message` (cleared first). InvalidArgument names the
// first string field that is not UTF-8, or says the bytes are not a
// `message` of this type.
absl::Status ParseMessage(const grpc::ByteBuffer& buffer, google::protobuf::Message* message);
absl::Status ParseMessageBytes(absl::string_view bytes, google::protobuf::Message* message);

grpc::ByteBuffer SerializeMessage(const google::protobuf::Message& message);

// Whether `bytes` is UTF-8 as protobuf requires of strings (no overlong
// forms, surrogates or code points above U+10FFFF); if not, `*bad_offset` is
// where the first invalid sequence starts.
bool IsValidUtf8(absl::string_view bytes, size_t* bad_offset = nullptr);

}  // namespace dsv2
