#include "common/rpc/raw_messages.h"

#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"

namespace dsv2 {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::internal::WireFormatLite;

constexpr int kMaxDepth = 32;

// The path of the first string field in `bytes` (a serialized `type`) that
// is not UTF-8, with a description; nullopt if none (or the bytes are not
// well-formed enough to tell).
std::optional<std::string> FindBadString(absl::string_view bytes, const Descriptor* type,
                                         const std::string& prefix, int depth) {
  if (depth > kMaxDepth) return std::nullopt;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  std::map<int, int> occurrences;  // Per field number, for repeated fields' indices.
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return std::nullopt;
    const int number = WireFormatLite::GetTagFieldNumber(tag);
    const FieldDescriptor* field = type->FindFieldByNumber(number);
    if (field == nullptr ||
        WireFormatLite::GetTagWireType(tag) != WireFormatLite::WIRETYPE_LENGTH_DELIMITED ||
        (field->type() != FieldDescriptor::TYPE_STRING &&
         field->type() != FieldDescriptor::TYPE_MESSAGE)) {
      if (!WireFormatLite::SkipField(&in, tag)) return std::nullopt;
      continue;
    }
    const int index = occurrences[number]++;
    uint32_t length = 0;
    std::string value;
    if (!in.ReadVarint32(&length) || !in.ReadString(&value, static_cast<int>(length))) {
      return std::nullopt;
    }
    std::string path = absl::StrCat(prefix, field->name());
    if (field->is_repeated()) absl::StrAppend(&path, "[", index, "]");
    if (field->type() == FieldDescriptor::TYPE_STRING) {
      size_t offset = 0;
      if (!IsValidUtf8(value, &offset)) {
        return absl::StrCat(path, " is not valid UTF-8 (byte ", offset, ")");
      }
    } else if (std::optional<std::string> inner =
                   FindBadString(value, field->message_type(), path + ".", depth + 1)) {
      return inner;
    }
  }
}

}  // namespace

bool IsValidUtf8(absl::string_view bytes, size_t* bad_offset) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    size_t length;
    uint32_t min;
    uint32_t code;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      length = 2, min = 0x80, code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3, min = 0x800, code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4, min = 0x10000, code = c & 0x07;
    } else {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    bool ok = i + length <= n;
    for (size_t k = 1; ok && k < length; ++k) {
      ok = (s[i + k] & 0xC0) == 0x80;
      code = (code << 6) | (s[i + k] & 0x3F);
    }
    if (!ok || code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += length;
  }
  return true;
}

absl::Status ParseMessageBytes(absl::string_view bytes, google::protobuf::Message* message) {
  message->Clear();
  // Strings first: protobuf would refuse them too, but log each one.
  if (std::optional<std::string> bad =
          FindBadString(bytes, message->GetDescriptor(), "", 0)) {
    return absl::InvalidArgumentError(*bad);
  }
  if (message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::OkStatus();
  }
  message->Clear();
  return absl::InvalidArgumentError(absl::StrCat("the request is not a valid ",
                                                 message->GetDescriptor()->full_name(),
                                                 " message"));
}

absl::Status ParseMessage(const grpc::ByteBuffer& buffer, google::protobuf::Message* message) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return absl::InvalidArgumentError("unreadable request");
  if (slices.size() == 1) {
    return ParseMessageBytes(
        absl::string_view(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size()),
        message);
  }
  std::string bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return ParseMessageBytes(bytes, message);
}

grpc::ByteBuffer SerializeMessage(const google::protobuf::Message& message) {
  std::string bytes = message.SerializeAsString();
  grpc::Slice slice(std::move(bytes));
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace dsv2
