#include "common/transport/frame.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dsv2::transport {
namespace {

// Wire codes of the element types; deliberately independent of DType's
// in-memory enum values.
constexpr uint8_t kWireNone = 0;
constexpr uint8_t kWireBF16 = 1;
constexpr uint8_t kWireF16 = 2;
constexpr uint8_t kWireF32 = 3;

uint8_t DTypeToWire(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return kWireBF16;
    case DType::kF16:
      return kWireF16;
    case DType::kF32:
      return kWireF32;
    case DType::kI8:  // A weight type; frames carry activations only.
      return kWireNone;
  }
  return kWireNone;
}

// Header field offsets (see frame.h).
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffType = 6;
constexpr size_t kOffDType = 7;
constexpr size_t kOffRequestId = 8;
constexpr size_t kOffStepId = 16;
constexpr size_t kOffLayer = 24;
constexpr size_t kOffMicroBatch = 28;
constexpr size_t kOffTokenCount = 32;
constexpr size_t kOffHiddenSize = 36;
constexpr size_t kOffTopK = 40;
constexpr size_t kOffSender = 44;
constexpr size_t kOffPayloadLength = 48;
constexpr size_t kOffFlags = 56;
constexpr size_t kOffCrc = 60;

// Little-endian stores and loads (the project only targets little-endian
// hosts, x86-64 and aarch64, so memcpy is the encoding).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "frame encoding assumes little-endian");
template <typename T>
void Store(uint8_t* out, size_t offset, T value) {
  std::memcpy(out + offset, &value, sizeof(T));
}
template <typename T>
T Load(const uint8_t* in, size_t offset) {
  T value;
  std::memcpy(&value, in + offset, sizeof(T));
  return value;
}

constexpr uint64_t AlignUp(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

std::array<uint32_t, 256> MakeCrc32cTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    table[i] = crc;
  }
  return table;
}

absl::Status CheckCount(const char* name, uint32_t value, uint32_t min, uint32_t max) {
  if (value < min || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame ", name, " ", value, " outside [", min, ", ", max, "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckPayload(const FrameHeader& header, FrameType expected, size_t payload_size,
                          const void* data) {
  if (header.type != expected) {
    return absl::InvalidArgumentError(absl::StrCat("expected a ", FrameTypeName(expected),
                                                   " frame, got ", FrameTypeName(header.type)));
  }
  if (absl::Status status = ValidateHeader(header); !status.ok()) return status;
  if (payload_size != header.payload_length) {
    return absl::InvalidArgumentError(absl::StrCat(FrameTypeName(expected), " payload is ",
                                                   payload_size, " bytes, header says ",
                                                   header.payload_length));
  }
  if (reinterpret_cast<uintptr_t>(data) % kPayloadAlignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat(FrameTypeName(expected), " payload is not ",
                                                   kPayloadAlignment, "-byte aligned"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kDispatch:
      return "dispatch";
    case FrameType::kCombine:
      return "combine";
    case FrameType::kError:
      return "error";
  }
  return absl::StrCat("type ", static_cast<int>(type));
}

uint32_t Crc32c(absl::Span<const uint8_t> bytes) {
  static const std::array<uint32_t, 256> table = MakeCrc32cTable();
  uint32_t crc = 0xFFFFFFFFu;
  for (uint8_t byte : bytes) crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFFu];
  return crc ^ 0xFFFFFFFFu;
}

EncodedHeader EncodeHeader(const FrameHeader& header) {
  EncodedHeader out{};
  uint8_t* p = out.data();
  Store<uint32_t>(p, kOffMagic, kFrameMagic);
  Store<uint16_t>(p, kOffVersion, kFrameVersion);
  Store<uint8_t>(p, kOffType, static_cast<uint8_t>(header.type));
  Store<uint8_t>(p, kOffDType,
                 header.type == FrameType::kError ? kWireNone : DTypeToWire(header.dtype));
  Store<uint64_t>(p, kOffRequestId, header.request_id);
  Store<uint64_t>(p, kOffStepId, header.step_id);
  Store<uint32_t>(p, kOffLayer, header.layer);
  Store<uint32_t>(p, kOffMicroBatch, header.micro_batch);
  Store<uint32_t>(p, kOffTokenCount, header.token_count);
  Store<uint32_t>(p, kOffHiddenSize, header.hidden_size);
  Store<uint32_t>(p, kOffTopK, header.top_k);
  Store<uint32_t>(p, kOffSender, header.sender);
  Store<uint64_t>(p, kOffPayloadLength, header.payload_length);
  Store<uint32_t>(p, kOffFlags, header.flags);
  Store<uint32_t>(p, kOffCrc, Crc32c(absl::MakeConstSpan(p, kOffCrc)));
  return out;
}

absl::StatusOr<FrameHeader> DecodeHeader(absl::Span<const uint8_t> bytes) {
  if (bytes.size() != kFrameHeaderSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame header is ", bytes.size(), " bytes, expected ", kFrameHeaderSize));
  }
  const uint8_t* p = bytes.data();
  if (const uint32_t magic = Load<uint32_t>(p, kOffMagic); magic != kFrameMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame magic 0x", absl::Hex(magic), " is not 0x", absl::Hex(kFrameMagic)));
  }
  if (const uint16_t version = Load<uint16_t>(p, kOffVersion); version != kFrameVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "frame version ", version, " is not supported (this build speaks ", kFrameVersion, ")"));
  }
  const uint32_t stored_crc = Load<uint32_t>(p, kOffCrc);
  if (const uint32_t crc = Crc32c(bytes.subspan(0, kOffCrc)); crc != stored_crc) {
    return absl::InvalidArgumentError(absl::StrCat(
        "frame header checksum 0x", absl::Hex(stored_crc), " does not match 0x", absl::Hex(crc)));
  }
  const uint32_t flags = Load<uint32_t>(p, kOffFlags);
  if ((flags & ~kFrameFlagSealed) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame flags 0x", absl::Hex(flags), " use reserved bits"));
  }
  FrameHeader header;
  header.flags = flags;
  const uint8_t type = Load<uint8_t>(p, kOffType);
  if (type < static_cast<uint8_t>(FrameType::kDispatch) ||
      type > static_cast<uint8_t>(FrameType::kError)) {
    return absl::InvalidArgumentError(absl::StrCat("frame type ", type, " is unknown"));
  }
  header.type = static_cast<FrameType>(type);
  const uint8_t wire_dtype = Load<uint8_t>(p, kOffDType);
  if (header.type == FrameType::kError) {
    if (wire_dtype != kWireNone) {
      return absl::InvalidArgumentError(
          absl::StrCat("error frame has dtype ", wire_dtype, ", expected none (0)"));
    }
  } else {
    switch (wire_dtype) {
      case kWireBF16:
        header.dtype = DType::kBF16;
        break;
      case kWireF16:
        header.dtype = DType::kF16;
        break;
      case kWireF32:
        header.dtype = DType::kF32;
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("frame dtype ", wire_dtype, " is unknown (1 bf16, 2 f16, 3 f32)"));
    }
  }
  header.request_id = Load<uint64_t>(p, kOffRequestId);
  header.step_id = Load<uint64_t>(p, kOffStepId);
  header.layer = Load<uint32_t>(p, kOffLayer);
  header.micro_batch = Load<uint32_t>(p, kOffMicroBatch);
  header.token_count = Load<uint32_t>(p, kOffTokenCount);
  header.hidden_size = Load<uint32_t>(p, kOffHiddenSize);
  header.top_k = Load<uint32_t>(p, kOffTopK);
  header.sender = Load<uint32_t>(p, kOffSender);
  header.payload_length = Load<uint64_t>(p, kOffPayloadLength);
  if (absl::Status status = ValidateHeader(header); !status.ok()) return status;
  return header;
}

absl::StatusOr<uint64_t> ExpectedPayloadLength(const FrameHeader& header) {
  switch (header.type) {
    case FrameType::kDispatch: {
      absl::StatusOr<DispatchLayout> layout =
          ComputeDispatchLayout(header.token_count, header.hidden_size, header.top_k, header.dtype);
      if (!layout.ok()) return layout.status();
      return layout->total_bytes;
    }
    case FrameType::kCombine:
      return CombinePayloadBytes(header.token_count, header.hidden_size, header.dtype);
    case FrameType::kError:
      return uint64_t{0};
  }
  return absl::InvalidArgumentError(
      absl::StrCat("frame type ", static_cast<int>(header.type), " is unknown"));
}

absl::Status ValidateHeader(const FrameHeader& header) {
  switch (header.type) {
    case FrameType::kDispatch:
    case FrameType::kCombine: {
      if (header.type == FrameType::kCombine && header.top_k != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("combine frame has top_k ", header.top_k, ", expected 0"));
      }
      absl::StatusOr<uint64_t> expected = ExpectedPayloadLength(header);
      if (!expected.ok()) return expected.status();
      if (header.payload_length != *expected) {
        return absl::InvalidArgumentError(
            absl::StrCat(FrameTypeName(header.type), " frame of ", header.token_count, " tokens x ",
                         header.hidden_size, " hidden x top_k ", header.top_k, " ",
                         std::string(DTypeName(header.dtype)), " needs a payload of ", *expected,
                         " bytes, header says ", header.payload_length));
      }
      return absl::OkStatus();
    }
    case FrameType::kError: {
      if (header.token_count != 0 || header.hidden_size != 0 || header.top_k != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("error frame has token_count ", header.token_count, ", hidden_size ",
                         header.hidden_size, ", top_k ", header.top_k, "; all must be 0"));
      }
      if (header.payload_length < 8 || header.payload_length > 8 + kMaxErrorMessageBytes) {
        return absl::InvalidArgumentError(absl::StrCat("error frame payload_length ",
                                                       header.payload_length, " outside [8, ",
                                                       8 + kMaxErrorMessageBytes, "]"));
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("frame type ", static_cast<int>(header.type), " is unknown"));
}

absl::StatusOr<DispatchLayout> ComputeDispatchLayout(uint32_t token_count, uint32_t hidden_size,
                                                     uint32_t top_k, DType dtype) {
  if (absl::Status s = CheckCount("token_count", token_count, 0, kMaxFrameTokens); !s.ok())
    return s;
  if (absl::Status s = CheckCount("hidden_size", hidden_size, 1, kMaxFrameHidden); !s.ok())
    return s;
  if (absl::Status s = CheckCount("top_k", top_k, 1, kMaxFrameTopK); !s.ok()) return s;
  // Within the limits every product below is < 2^39, far from overflow.
  DispatchLayout layout;
  layout.activations_offset = 0;
  layout.activations_bytes =
      uint64_t{token_count} * hidden_size * static_cast<uint64_t>(DTypeSize(dtype));
  layout.expert_ids_offset = AlignUp(layout.activations_bytes, kPayloadAlignment);
  layout.expert_ids_bytes = uint64_t{token_count} * top_k * sizeof(int32_t);
  layout.weights_offset =
      AlignUp(layout.expert_ids_offset + layout.expert_ids_bytes, kPayloadAlignment);
  layout.weights_bytes = uint64_t{token_count} * top_k * sizeof(float);
  layout.total_bytes = layout.weights_offset + layout.weights_bytes;
  if (layout.total_bytes > kMaxFramePayloadBytes) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch payload of ", layout.total_bytes,
                                                   " bytes exceeds the frame limit ",
                                                   kMaxFramePayloadBytes));
  }
  return layout;
}

absl::StatusOr<uint64_t> CombinePayloadBytes(uint32_t token_count, uint32_t hidden_size,
                                             DType dtype) {
  if (absl::Status s = CheckCount("token_count", token_count, 0, kMaxFrameTokens); !s.ok())
    return s;
  if (absl::Status s = CheckCount("hidden_size", hidden_size, 1, kMaxFrameHidden); !s.ok())
    return s;
  const uint64_t bytes =
      uint64_t{token_count} * hidden_size * static_cast<uint64_t>(DTypeSize(dtype));
  if (bytes > kMaxFramePayloadBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "combine payload of ", bytes, " bytes exceeds the frame limit ", kMaxFramePayloadBytes));
  }
  return bytes;
}

absl::StatusOr<DispatchView> ParseDispatch(const FrameHeader& header,
                                           absl::Span<const uint8_t> payload) {
  if (absl::Status s = CheckPayload(header, FrameType::kDispatch, payload.size(), payload.data());
      !s.ok()) {
    return s;
  }
  absl::StatusOr<DispatchLayout> layout =
      ComputeDispatchLayout(header.token_count, header.hidden_size, header.top_k, header.dtype);
  if (!layout.ok()) return layout.status();
  const size_t slots = size_t{header.token_count} * header.top_k;
  DispatchView view;
  view.activations = payload.subspan(layout->activations_offset, layout->activations_bytes);
  view.expert_ids = absl::MakeConstSpan(
      reinterpret_cast<const int32_t*>(payload.data() + layout->expert_ids_offset), slots);
  view.weights = absl::MakeConstSpan(
      reinterpret_cast<const float*>(payload.data() + layout->weights_offset), slots);
  return view;
}

absl::StatusOr<DispatchSpans> DispatchSpansOf(const FrameHeader& header,
                                              absl::Span<uint8_t> payload) {
  absl::StatusOr<DispatchView> view = ParseDispatch(header, payload);
  if (!view.ok()) return view.status();
  DispatchSpans spans;
  spans.activations =
      absl::MakeSpan(const_cast<uint8_t*>(view->activations.data()), view->activations.size());
  spans.expert_ids =
      absl::MakeSpan(const_cast<int32_t*>(view->expert_ids.data()), view->expert_ids.size());
  spans.weights = absl::MakeSpan(const_cast<float*>(view->weights.data()), view->weights.size());
  return spans;
}

absl::Status ValidateRouting(const DispatchView& view, int num_experts) {
  for (size_t i = 0; i < view.expert_ids.size(); ++i) {
    const int32_t id = view.expert_ids[i];
    if (id == -1) continue;
    if (id < 0 || id >= num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("dispatch slot ", i, " names expert ", id,
                                                     ", outside [0, ", num_experts, ")"));
    }
    if (!std::isfinite(view.weights[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("dispatch slot ", i, " has a non-finite routing weight"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::Span<const uint8_t>> ParseCombine(const FrameHeader& header,
                                                       absl::Span<const uint8_t> payload) {
  if (absl::Status s = CheckPayload(header, FrameType::kCombine, payload.size(), payload.data());
      !s.ok()) {
    return s;
  }
  return payload;
}

std::string EncodeErrorPayload(const absl::Status& status) {
  absl::StatusCode code = status.code();
  std::string message(status.message());
  if (code == absl::StatusCode::kOk) {
    code = absl::StatusCode::kInternal;
    message = "error frame built from an OK status";
  }
  if (message.size() > kMaxErrorMessageBytes) message.resize(kMaxErrorMessageBytes);
  std::string out(8 + message.size(), '\0');
  const uint32_t wire_code = static_cast<uint32_t>(code);
  const uint32_t length = static_cast<uint32_t>(message.size());
  std::memcpy(out.data(), &wire_code, 4);
  std::memcpy(out.data() + 4, &length, 4);
  std::memcpy(out.data() + 8, message.data(), message.size());
  return out;
}

absl::Status DecodeErrorPayload(const FrameHeader& header, absl::Span<const uint8_t> payload,
                                absl::Status* carried) {
  if (header.type != FrameType::kError) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected an error frame, got ", FrameTypeName(header.type)));
  }
  if (absl::Status s = ValidateHeader(header); !s.ok()) return s;
  if (payload.size() != header.payload_length) {
    return absl::InvalidArgumentError(absl::StrCat("error payload is ", payload.size(),
                                                   " bytes, header says ", header.payload_length));
  }
  uint32_t code;
  uint32_t length;
  std::memcpy(&code, payload.data(), 4);
  std::memcpy(&length, payload.data() + 4, 4);
  if (code == 0 || code > static_cast<uint32_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::InvalidArgumentError(
        absl::StrCat("error frame carries status code ", code, ", not a non-OK absl::StatusCode"));
  }
  if (uint64_t{length} + 8 != payload.size()) {
    return absl::InvalidArgumentError(absl::StrCat("error frame message length ", length,
                                                   " does not fill its ", payload.size(),
                                                   "-byte payload"));
  }
  *carried = absl::Status(static_cast<absl::StatusCode>(code),
                          std::string(reinterpret_cast<const char*>(payload.data()) + 8, length));
  return absl::OkStatus();
}

absl::Status ValidateCombineFor(const FrameHeader& request, const FrameHeader& response) {
  if (response.type != FrameType::kCombine) {
    return absl::InvalidArgumentError(
        absl::StrCat("reply is a ", FrameTypeName(response.type), " frame, not combine"));
  }
  if (response.token_count != request.token_count || response.hidden_size != request.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "combine reply is ", response.token_count, " tokens x ", response.hidden_size,
        " hidden, the dispatch was ", request.token_count, " x ", request.hidden_size));
  }
  return absl::OkStatus();
}

}  // namespace dsv2::transport
