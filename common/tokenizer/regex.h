// The regular expressions of tokenizer.json, run with PCRE2 (UTF, UCP, JIT)
// so that they match exactly what Hugging Face `tokenizers` matches with
// Oniguruma (Ruby syntax):
//
//   - `^` and `$` are line anchors (before/after "\n"), as in Ruby;
//   - `\s` is Unicode White_Space (PCRE2 would add U+180E), `\h` a hex digit,
//     `\v` the vertical tab, `\uHHHH` a code point, `(?m)` Ruby's dot-all;
//   - `\p{X}` for a general category X, `\d` and `\w` use Hugging Face's
//     Unicode 16 tables (unicode_tables.inc), not PCRE2 10.42's Unicode 14;
//   - an empty match right where the previous match ended is skipped, as
//     Oniguruma's find_iter does.
//
// Constructs whose meaning differs and that no tokenizer needs (`\b`, POSIX
// brackets, nested classes, scripts such as `\p{Han}`) are rejected when the
// pattern is compiled, with a message naming them.
//
// A Regex is immutable after Compile and safe to use from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv2::tokenizer_internal {

// `pattern` (Oniguruma syntax) rewritten for PCRE2.
absl::StatusOr<std::string> TranslateOnigurumaPattern(std::string_view pattern);

class Regex {
 public:
  struct Match {
    uint32_t start;
    uint32_t end;
  };

  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the matches in `text` (valid UTF-8, under 4 GiB) to `matches`,
  // in order and non-overlapping. Fails only if PCRE2 gives up (its match or
  // stack limits), which is reported rather than truncating the result.
  absl::Status FindAll(std::string_view text, std::vector<Match>* matches) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace dsv2::tokenizer_internal
