#include "common/tokenizer/streaming_detokenizer.h"

#include "common/tokenizer/unicode.h"

namespace dsv2 {

std::string StreamingDetokenizer::Append(int32_t id) {
  const std::string* bytes = tokenizer_.TokenBytes(id);
  if (bytes == nullptr || (skip_special_tokens_ && tokenizer_.IsSpecial(id))) return "";
  if (tokenizer_.JoinsWithSpace()) {
    // Without a decoder, tokens are joined with spaces; each is whole UTF-8.
    std::string out = emitted_any_ ? " " + *bytes : *bytes;
    emitted_any_ = true;
    return out;
  }
  pending_ += *bytes;
  const size_t ready = tokenizer_internal::ConvertiblePrefixLength(pending_);
  std::string out =
      tokenizer_internal::ReplaceInvalidUtf8(std::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return out;
}

std::string StreamingDetokenizer::Finish() {
  std::string out = tokenizer_internal::ReplaceInvalidUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace dsv2
