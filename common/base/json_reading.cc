#include "common/base/json_reading.h"

#include <atomic>

namespace dsv2 {
namespace {

std::atomic<int64_t> unchecked_json_errors{0};

// A scalar as JSON text; ill-formed UTF-8 (only possible in values built in
// memory: the parser rejects it) is replaced rather than thrown about.
std::string Dump(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

int64_t UncheckedJsonErrors() { return unchecked_json_errors.load(); }

namespace json_reading_internal {
void CountUncheckedJsonError() { ++unchecked_json_errors; }
}  // namespace json_reading_internal

const char* JsonTypeName(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::boolean:
      return "boolean";
    case nlohmann::json::value_t::string:
      return "string";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float:
      return "number";
    case nlohmann::json::value_t::array:
      return "array";
    case nlohmann::json::value_t::object:
      return "object";
    default:
      return "value";
  }
}

std::string JsonValueForMessage(const nlohmann::json& value) {
  constexpr size_t kMaxStringBytes = 64;
  if (value.is_array()) return absl::StrCat("an array of ", value.size(), " elements");
  if (value.is_object()) return absl::StrCat("an object of ", value.size(), " fields");
  if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    if (text.size() <= kMaxStringBytes) return Dump(value);
    // Cut at a character boundary so the message stays UTF-8 (dump would throw).
    size_t cut = kMaxStringBytes;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    return absl::StrCat(Dump(nlohmann::json(text.substr(0, cut))), "...");
  }
  if (value.is_discarded()) return "(discarded)";
  return Dump(value);  // A number, boolean or null.
}

}  // namespace dsv2
