// The data plane's wire format: a fixed 64-byte versioned header followed by
// a payload whose layout the header's type, counts and dtype determine.
//
// Per MoE layer per micro-batch, an attention worker DISPATCHES to each
// expert worker the tokens routed to that worker's experts, and the expert
// worker answers with a COMBINE frame holding one weighted partial sum per
// token, in the order the tokens were dispatched. A request that cannot be
// served is answered with an ERROR frame carrying an absl status code and a
// message.
//
// Header (little-endian, 64 bytes):
//
//   offset size field
//        0    4 magic           "DSV2" (0x32565344)
//        4    2 version         kFrameVersion
//        6    1 type            1 dispatch, 2 combine, 3 error
//        7    1 dtype           1 bf16, 2 f16, 3 f32 (0 for error frames)
//        8    8 request_id      chosen by the caller's transport; echoed in the reply
//       16    8 step_id         engine step (decode iteration)
//       24    4 layer           transformer layer index
//       28    4 micro_batch     micro-batch index within the step
//       32    4 token_count     T
//       36    4 hidden_size     H
//       40    4 top_k           K: expert slots per token (dispatch only)
//       44    4 sender          worker id of the sender (cluster-map index)
//       48    8 payload_length  bytes after the header
//       56    4 flags           bit 0: sealed (kFrameFlagSealed); others reserved, 0
//       60    4 header_crc32c   CRC-32C of bytes [0, 60)
//
// Payloads:
//
//   dispatch  activations [T, H] dtype at offset 0; expert_ids [T, K] int32 at
//             AlignUp(T*H*size, 16); weights [T, K] float32 at
//             AlignUp(ids offset + T*K*4, 16). A slot whose expert id is -1 is
//             empty (a token routed to fewer of this worker's experts than K);
//             its weight is ignored. Padding bytes are zero when built here
//             and ignored when read.
//   combine   partial sums [T, H] dtype: for each dispatched token, in order,
//             sum over its non-empty slots of weight * expert(activation).
//             The data plane uses bf16 (the default, half the bytes) or f32
//             (exact); see docs/transport.md.
//   error     uint32 absl::StatusCode, uint32 message length N, N bytes of
//             UTF-8 message (N <= kMaxErrorMessageBytes).
//
// The header checksum catches corrupted or misframed headers; the payload is
// protected by its length, which must equal the length the header's counts
// imply (transports deliver payload bytes intact or not at all).
//
// Thread safety: free functions over values; all are thread-compatible.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/tensor/dtype.h"

namespace dsv2::transport {

inline constexpr uint32_t kFrameMagic = 0x32565344;  // "DSV2" read as little-endian.
inline constexpr uint16_t kFrameVersion = 1;
inline constexpr size_t kFrameHeaderSize = 64;
// The payload is encrypted and the frame authenticated by a seal that
// follows the header (common/transport/frame_seal.h).
inline constexpr uint32_t kFrameFlagSealed = 1;

// Limits a decoder enforces before it trusts any count. They bound every
// size computation far below uint64 overflow.
inline constexpr uint32_t kMaxFrameTokens = 1u << 20;
inline constexpr uint32_t kMaxFrameHidden = 1u << 16;
inline constexpr uint32_t kMaxFrameTopK = 256;
inline constexpr uint64_t kMaxFramePayloadBytes = uint64_t{1} << 31;  // 2 GiB
inline constexpr uint32_t kMaxErrorMessageBytes = 4096;
// Section alignment inside a dispatch payload.
inline constexpr uint64_t kPayloadAlignment = 16;

enum class FrameType : uint8_t { kDispatch = 1, kCombine = 2, kError = 3 };

// "dispatch", "combine", "error", or "type <n>".
std::string FrameTypeName(FrameType type);

struct FrameHeader {
  FrameType type = FrameType::kDispatch;
  DType dtype = DType::kBF16;  // Element type of activations / partial sums; unused for errors.
  uint64_t request_id = 0;
  uint64_t step_id = 0;
  uint32_t layer = 0;
  uint32_t micro_batch = 0;
  uint32_t token_count = 0;
  uint32_t hidden_size = 0;
  uint32_t top_k = 0;
  uint32_t sender = 0;
  uint64_t payload_length = 0;
  uint32_t flags = 0;  // kFrameFlagSealed or 0.

  bool operator==(const FrameHeader&) const = default;
};

using EncodedHeader = std::array<uint8_t, kFrameHeaderSize>;

// Serializes `header` (with its checksum). Does not validate: encoding a
// header that ValidateHeader rejects yields bytes that DecodeHeader rejects.
EncodedHeader EncodeHeader(const FrameHeader& header);

// Parses and validates 64 header bytes: size, magic, version, checksum, type,
// flags (only kFrameFlagSealed may be set), dtype, counts within limits and consistent with the type,
// and payload_length equal to the length the counts imply. Every failure is
// InvalidArgument naming the field and value.
absl::StatusOr<FrameHeader> DecodeHeader(absl::Span<const uint8_t> bytes);

// The semantic checks of DecodeHeader (everything except the byte-level
// magic, version and checksum), for headers built in memory.
absl::Status ValidateHeader(const FrameHeader& header);

// The payload length a header's type, counts and dtype imply; the error
// frame's length is variable, so for it this returns 0 (see ValidateHeader).
absl::StatusOr<uint64_t> ExpectedPayloadLength(const FrameHeader& header);

// Byte offsets of the three sections of a dispatch payload.
struct DispatchLayout {
  uint64_t activations_offset = 0;
  uint64_t activations_bytes = 0;
  uint64_t expert_ids_offset = 0;
  uint64_t expert_ids_bytes = 0;
  uint64_t weights_offset = 0;
  uint64_t weights_bytes = 0;
  uint64_t total_bytes = 0;
};

// Fails (InvalidArgument) when a count is outside the frame limits.
absl::StatusOr<DispatchLayout> ComputeDispatchLayout(uint32_t token_count, uint32_t hidden_size,
                                                     uint32_t top_k, DType dtype);
absl::StatusOr<uint64_t> CombinePayloadBytes(uint32_t token_count, uint32_t hidden_size,
                                             DType dtype);

// Read-only views into a received dispatch payload (no copies). Valid while
// the payload buffer lives.
struct DispatchView {
  absl::Span<const uint8_t> activations;  // [T, H] of the header's dtype.
  absl::Span<const int32_t> expert_ids;   // [T, K]; -1 marks an empty slot.
  absl::Span<const float> weights;        // [T, K]
};

// Writable views into a payload buffer being filled for sending, so callers
// write activations, ids and weights in place (no staging copy).
struct DispatchSpans {
  absl::Span<uint8_t> activations;
  absl::Span<int32_t> expert_ids;
  absl::Span<float> weights;
};

// Checks `header` is a valid dispatch header and `payload` has exactly its
// length and 16-byte alignment, and returns views of the sections.
absl::StatusOr<DispatchView> ParseDispatch(const FrameHeader& header,
                                           absl::Span<const uint8_t> payload);
absl::StatusOr<DispatchSpans> DispatchSpansOf(const FrameHeader& header,
                                              absl::Span<uint8_t> payload);

// Checks every expert id is -1 or in [0, num_experts) and every weight of a
// non-empty slot is finite. An expert worker calls this before indexing.
absl::Status ValidateRouting(const DispatchView& view, int num_experts);

// The partial sums of a combine frame, [T, H] of the header's dtype.
absl::StatusOr<absl::Span<const uint8_t>> ParseCombine(const FrameHeader& header,
                                                       absl::Span<const uint8_t> payload);

// The payload of an error frame carrying `status` (message truncated to
// kMaxErrorMessageBytes). `status` must not be OK (an OK status is sent as
// Internal).
std::string EncodeErrorPayload(const absl::Status& status);
// Decodes an error frame into `*carried`, the status it carries. Returns
// InvalidArgument describing the problem (and leaves `*carried` alone) when
// the payload is malformed: wrong length, an unknown or OK code.
absl::Status DecodeErrorPayload(const FrameHeader& header, absl::Span<const uint8_t> payload,
                                absl::Status* carried);

// Checks that a combine reply answers `request`: same token count and hidden
// size. (request_id correlation is the transport's job.)
absl::Status ValidateCombineFor(const FrameHeader& request, const FrameHeader& response);

// CRC-32C (Castagnoli), as used for the header checksum.
uint32_t Crc32c(absl::Span<const uint8_t> bytes);

}  // namespace dsv2::transport
