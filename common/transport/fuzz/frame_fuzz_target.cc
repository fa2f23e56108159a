// The data plane's frame decoding, as a receiver runs it on bytes from the
// network: DecodeHeader on the first 64 bytes, then ParseDispatch /
// ParseCombine / DecodeErrorPayload on the rest, and ValidateRouting on a
// dispatch. Layout of the input:
//   byte 0   flags: bit 0 fixes the header's CRC-32C before decoding (so
//            mutations reach the checks behind the checksum); bit 1 hands
//            the payload over at an address that is not 16-byte aligned
//   byte 1   the expert count ValidateRouting checks ids against
//   64 bytes the header, then the payload.
// Decoding must end in a value or InvalidArgument; what decodes must
// re-encode to the same bytes and hand out views that lie inside the
// payload and agree with the header's counts.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/fuzz/fuzz_target.h"
#include "common/transport/frame.h"

namespace dsv2::fuzz {
namespace {

using transport::FrameHeader;
using transport::FrameType;

bool Inside(const void* begin, size_t bytes, const std::vector<uint8_t>& buffer, size_t offset,
            size_t size) {
  const auto* p = static_cast<const uint8_t*>(begin);
  const uint8_t* lo = buffer.data() + offset;
  return bytes == 0 || (p >= lo && p + bytes <= lo + size);
}

}  // namespace

void FuzzOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return;
  const uint8_t flags = data[0];
  const int num_experts = data[1];
  data += 2;
  size -= 2;
  std::vector<uint8_t> header(data, data + std::min(size, transport::kFrameHeaderSize));
  if ((flags & 1) && header.size() == transport::kFrameHeaderSize) {
    const uint32_t crc = transport::Crc32c(absl::MakeConstSpan(header.data(), 60));
    std::memcpy(header.data() + 60, &crc, 4);  // Little-endian, as the format says.
  }
  auto decoded = transport::DecodeHeader(header);
  if (!decoded.ok()) {
    Require(decoded.status().code() == absl::StatusCode::kInvalidArgument,
            "a bad header is InvalidArgument");
    return;
  }
  const FrameHeader& h = *decoded;
  const transport::EncodedHeader again = transport::EncodeHeader(h);
  Require(std::equal(again.begin(), again.end(), header.begin()), "headers re-encode exactly");
  Require(transport::ValidateHeader(h).ok(), "decoded headers validate");
  Require(h.type != FrameType::kCombine || transport::ValidateCombineFor(h, h).ok(),
          "a combine answers a request of its own counts");

  // The payload, in a 16-byte aligned buffer (vector's storage is), or one
  // byte past it.
  const size_t payload_size = size - header.size();
  const size_t offset = (flags & 2) ? 1 : 0;
  std::vector<uint8_t> buffer(payload_size + offset + 16);
  std::memcpy(buffer.data() + offset, data + header.size(), payload_size);
  const absl::Span<const uint8_t> payload(buffer.data() + offset, payload_size);

  auto dispatch = transport::ParseDispatch(h, payload);
  Require(!dispatch.ok() || h.type == FrameType::kDispatch, "only dispatches parse as one");
  if (dispatch.ok()) {
    Require(payload_size == h.payload_length, "a dispatch payload has the header's length");
    const size_t t = h.token_count, k = h.top_k;
    Require(dispatch->activations.size() == t * h.hidden_size * DTypeSize(h.dtype),
            "activations are [T, H]");
    Require(dispatch->expert_ids.size() == t * k && dispatch->weights.size() == t * k,
            "ids and weights are [T, K]");
    Require(Inside(dispatch->activations.data(), dispatch->activations.size(), buffer, offset,
                   payload_size) &&
                Inside(dispatch->expert_ids.data(), dispatch->expert_ids.size() * 4, buffer, offset,
                       payload_size) &&
                Inside(dispatch->weights.data(), dispatch->weights.size() * 4, buffer, offset,
                       payload_size),
            "views lie inside the payload");
    if (transport::ValidateRouting(*dispatch, num_experts).ok()) {
      for (size_t i = 0; i < t * k; ++i) {
        const int32_t id = dispatch->expert_ids[i];
        Require(id == -1 || (id >= 0 && id < num_experts), "valid routing has known experts");
        Require(id == -1 || std::isfinite(dispatch->weights[i]),
                "valid routing has finite weights");
      }
    }
  }
  auto combine = transport::ParseCombine(h, payload);
  Require(!combine.ok() || h.type == FrameType::kCombine, "only combines parse as one");
  if (combine.ok()) {
    Require(combine->size() == size_t{h.token_count} * h.hidden_size * DTypeSize(h.dtype),
            "partial sums are [T, H]");
    Require(Inside(combine->data(), combine->size(), buffer, offset, payload_size),
            "the view lies inside the payload");
  }
  absl::Status carried;
  const absl::Status error = transport::DecodeErrorPayload(h, payload, &carried);
  Require(!error.ok() || h.type == FrameType::kError, "only error frames decode as one");
  if (error.ok()) {
    Require(!carried.ok(), "an error frame carries an error");
    Require(carried.message().size() <= transport::kMaxErrorMessageBytes, "messages are bounded");
    const std::string encoded = transport::EncodeErrorPayload(carried);
    absl::Status round_trip;
    FrameHeader re = h;
    re.payload_length = encoded.size();
    Require(
        transport::DecodeErrorPayload(
            re,
            absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(encoded.data()), encoded.size()),
            &round_trip)
                .ok() &&
            round_trip == carried,
        "error payloads round-trip");
  }
}

}  // namespace dsv2::fuzz
