// What the public API needs of a model's tokenizer: text and chat input to
// token ids, and generated ids back to text as they stream.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/text_decoder.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/model_tokenizer.h"

namespace dsv2 {

class TextFrontend final : public TextDecoderFactory {
 public:
  // The tokenizer of model directory `dir`; nullptr (not an error) when the
  // directory has no tokenizer.json, whose clients then send token ids.
  static absl::StatusOr<std::unique_ptr<TextFrontend>> LoadIfPresent(const std::string& dir);

  explicit TextFrontend(ModelTokenizer tokenizer) : tokenizer_(std::move(tokenizer)) {}

  // Token ids of `text`, with BOS where the model's tokenizer adds it.
  absl::StatusOr<std::vector<int32_t>> EncodeText(std::string_view text) const {
    return tokenizer_.EncodePrompt(text);
  }
  // Token ids of a conversation through the model's chat template, ending
  // with the generation prompt. Unknown roles and an empty conversation are
  // InvalidArgument.
  absl::StatusOr<std::vector<int32_t>> EncodeChat(const std::vector<ChatMessage>& messages) const {
    return tokenizer_.EncodeChat(messages, /*add_generation_prompt=*/true);
  }
  std::unique_ptr<IncrementalTextDecoder> NewDecoder(bool skip_special_tokens) const override;
  bool Decodes(int32_t id) const override {
    return tokenizer_.tokenizer().TokenBytes(id) != nullptr;
  }

  // What one token stands for, as logprobs name it: its bytes (for
  // byte-level BPE possibly part of a UTF-8 character; empty for an id that
  // is no token) and its text, with bytes that are no UTF-8 as U+FFFD.
  struct TokenPiece {
    std::string text;
    std::string bytes;
  };
  TokenPiece Token(int32_t id) const;

  const ModelTokenizer& tokenizer() const { return tokenizer_; }

 private:
  ModelTokenizer tokenizer_;
};

}  // namespace dsv2
