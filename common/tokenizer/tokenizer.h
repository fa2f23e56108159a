// The Hugging Face `tokenizer.json` tokenizer of DeepSeek-V2 and GPT-style
// byte-level BPE models, byte-exact with the `tokenizers` library.
//
//   ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(dir + "/tokenizer.json"));
//   ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(text));
//   ASSIGN_OR_RETURN(std::string back, tokenizer->Decode(ids));
//
// Encoding runs the same pipeline as `tokenizers`: added and special tokens
// are split out first (honouring lstrip, rstrip, single_word and
// normalized), the rest is normalized, pre-tokenized (Split, ByteLevel,
// Digits, Sequence) and turned into ids by the BPE model, and the
// post-processor adds special tokens (TemplateProcessing). Every component
// or field the implementation does not handle is rejected by FromJson with
// a message naming it, so a file never loads into a tokenizer that would
// silently produce other ids. docs/tokenizer.md lists what is supported.
//
// A Tokenizer is immutable after loading; Encode and Decode are safe to call
// from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv2 {

namespace tokenizer_internal {
struct TokenizerParts;
}  // namespace tokenizer_internal

// What Encode does with input that is not well-formed UTF-8.
enum class InvalidUtf8 {
  kError,    // InvalidArgument naming the byte offset (the default).
  kReplace,  // Each maximal ill-formed subsequence becomes U+FFFD first, as
             // Python's bytes.decode("utf-8", "replace") does.
};

struct EncodeOptions {
  // Run the post-processor (e.g. a TemplateProcessing BOS), as Hugging Face's
  // add_special_tokens. The DeepSeek file's ByteLevel post-processor adds
  // nothing; its BOS comes from tokenizer_config.json (see ModelTokenizer).
  bool add_special_tokens = true;
  InvalidUtf8 invalid_utf8 = InvalidUtf8::kError;
};

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // `source` names the file in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      std::string_view json, const std::string& source = "tokenizer.json");
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options = {}) const;

  // The text of `ids`, as Hugging Face's decode: ids that are no token are
  // skipped, special tokens too when `skip_special_tokens`, and bytes that
  // do not form UTF-8 become U+FFFD.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;
  // One more than the largest id (model vocabulary and added tokens).
  int32_t VocabSize() const;

  // For the streaming decoder: the bytes token `id` decodes to, or nullptr
  // if `id` is no token; and whether tokens are joined with a space (a file
  // without a decoder) rather than concatenated as bytes (ByteLevel).
  const std::string* TokenBytes(int32_t id) const;
  bool JoinsWithSpace() const;

 private:
  explicit Tokenizer(std::unique_ptr<tokenizer_internal::TokenizerParts> parts);
  std::unique_ptr<tokenizer_internal::TokenizerParts> parts_;
};

}  // namespace dsv2
