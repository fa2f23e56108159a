// The tokenizer of a model directory: tokenizer.json and, when present,
// tokenizer_config.json (BOS/EOS, add_bos_token, chat template).
//
//   ASSIGN_OR_RETURN(ModelTokenizer tok, ModelTokenizer::Load(dir));
//   ASSIGN_OR_RETURN(auto ids, tok.EncodeChat({{"user", "Hi"}}));
//
// Plain prompts get BOS (and EOS) as add_bos_token / add_eos_token say, the
// way transformers' Llama tokenizers (DeepSeek's tokenizer_class) apply
// them; without those fields the tokenizer.json post-processor decides.
// Chat prompts are the rendered template encoded without added special
// tokens, since the template writes BOS itself (as apply_chat_template).
//
// Immutable after Load; safe to use from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"

namespace dsv2 {

class ModelTokenizer {
 public:
  // Reads DIR/tokenizer.json (required) and DIR/tokenizer_config.json (optional).
  static absl::StatusOr<ModelTokenizer> Load(const std::string& dir);
  ModelTokenizer(std::shared_ptr<const Tokenizer> tokenizer, TokenizerConfig config);

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const TokenizerConfig& config() const { return config_; }
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }

  absl::StatusOr<std::vector<int32_t>> EncodePrompt(std::string_view text) const;
  absl::StatusOr<std::vector<int32_t>> EncodeChat(std::span<const ChatMessage> messages,
                                                  bool add_generation_prompt = true) const;

 private:
  std::shared_ptr<const Tokenizer> tokenizer_;
  TokenizerConfig config_;
  std::optional<int32_t> bos_id_, eos_id_;
};

}  // namespace dsv2
