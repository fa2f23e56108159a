// What every reader of a JSON file (config.json, tokenizer.json,
// tokenizer_config.json, safetensors headers, the checkpoint index) shares:
// short descriptions of values for error messages, and a last line of
// defence that keeps exceptions inside the reader.
//
// Readers check each value's type before using it (contains / is_string /
// ...) and say what they expected, e.g. "tokenizer.json:
// post_processor.single[0].Sequence.id: expected a string, got number".
// GuardJsonReader wraps a whole file's reading so that an accessor that was
// not checked (nlohmann throws type_error) or an allocation that fails
// becomes an error naming the file instead of an abort. Reaching it is a bug
// in the reader: it is counted (UncheckedJsonErrors), and the fuzz targets
// fail when the count moves (see docs/fuzzing.md).
#pragma once

#include <cstdint>
#include <exception>
#include <new>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace dsv2 {

// "number", "string", "boolean", "null", "array" or "object".
const char* JsonTypeName(const nlohmann::json& value);

// A value for an error message, never long and never recursive: numbers,
// booleans and null as written; strings quoted and cut after 64 bytes;
// arrays and objects as "an array of N elements" / "an object of N fields"
// (dumping them would recurse as deep as a hostile file nests).
std::string JsonValueForMessage(const nlohmann::json& value);

// The words GuardJsonReader's messages start with after the source.
inline constexpr char kUncheckedJsonMessage[] = "unexpected JSON structure";

// How many exceptions GuardJsonReader has caught in this process: 0 unless a
// reader has a bug.
int64_t UncheckedJsonErrors();

namespace json_reading_internal {
void CountUncheckedJsonError();
}  // namespace json_reading_internal

// Runs `read` (returning absl::Status or absl::StatusOr<T>) and returns its
// result; an exception it throws becomes InvalidArgument "SOURCE: unexpected
// JSON structure (...)" for nlohmann's errors, ResourceExhausted for
// std::bad_alloc, and Internal for any other std::exception.
template <typename Read>
auto GuardJsonReader(std::string_view source, Read&& read) -> decltype(read()) {
  try {
    return read();
  } catch (const nlohmann::json::exception& e) {
    json_reading_internal::CountUncheckedJsonError();
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": ", kUncheckedJsonMessage, " (", e.what(), ")"));
  } catch (const std::bad_alloc&) {
    json_reading_internal::CountUncheckedJsonError();
    return absl::ResourceExhaustedError(
        absl::StrCat(std::string(source), ": out of memory while reading it"));
  } catch (const std::exception& e) {
    json_reading_internal::CountUncheckedJsonError();
    return absl::InternalError(absl::StrCat(std::string(source), ": ", e.what()));
  }
}

}  // namespace dsv2
