// The normalizers of tokenizer.json that DeepSeek and GPT-style byte-level
// files use: none, `Sequence` (DeepSeek's is empty), `Replace` (string or
// regex pattern) and `Prepend`. Unicode normalization forms (NFC, NFKC, ...)
// and the others are rejected when the file is loaded.
//
// Immutable after construction; safe to use from several threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "common/tokenizer/regex.h"

namespace dsv2::tokenizer_internal {

class Normalizer {
 public:
  struct Step {
    enum class Kind { kReplace, kPrepend } kind;
    std::string literal;           // kReplace with a string pattern; empty for a regex.
    std::unique_ptr<Regex> regex;  // kReplace with a regex pattern.
    std::string content;           // The replacement, or the text to prepend.
  };

  Normalizer() = default;
  explicit Normalizer(std::vector<Step> steps) : steps_(std::move(steps)) {}

  // Whether normalization leaves every text unchanged (no steps).
  bool IsIdentity() const { return steps_.empty(); }
  // `text` normalized (valid UTF-8 in, valid UTF-8 out).
  absl::Status Normalize(std::string_view text, std::string* out) const;

 private:
  std::vector<Step> steps_;
};

}  // namespace dsv2::tokenizer_internal
