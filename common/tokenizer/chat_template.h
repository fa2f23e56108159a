// tokenizer_config.json (the fields a DeepSeek-V2 checkpoint's tokenizer
// needs) and the DeepSeek-V2-Chat / V2-Lite-Chat chat template:
//
//   <bos>{system}\n\nUser: {user}\n\nAssistant: {assistant}<eos>User: ...\n\nAssistant:
//
// The template is recognised in the file, not interpreted: a config whose
// `chat_template` is not DeepSeek-V2's is rejected when a chat template is
// asked for, rather than rendered wrongly. Roles other than system, user and
// assistant, and empty conversations, are errors (the Jinja template would
// silently drop unknown roles).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace dsv2 {

struct TokenizerConfig {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  // Absent when the file does not say (then the tokenizer.json post-processor decides).
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<std::string> chat_template;

  // A path that is not a regular file (a FIFO, a directory) is
  // InvalidArgument; a missing one NotFound.
  static absl::StatusOr<TokenizerConfig> FromFile(const std::string& path);
  // `source` names the file in error messages. Every field of the wrong
  // JSON type is InvalidArgument naming it and the type found.
  static absl::StatusOr<TokenizerConfig> FromJson(std::string_view json, const std::string& source);

 private:
  static absl::StatusOr<TokenizerConfig> Parse(std::string_view json, const std::string& source);
};

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant".
  std::string content;
};

class ChatTemplate {
 public:
  // DeepSeek-V2-Chat's chat_template, as its tokenizer_config.json has it.
  static const std::string& DeepSeekV2Template();

  // Fails if the config has no chat_template, one that is not DeepSeek-V2's,
  // or no bos_token / eos_token.
  static absl::StatusOr<ChatTemplate> FromConfig(const TokenizerConfig& config);

  // The prompt text; with `add_generation_prompt`, ending in "Assistant:"
  // (no trailing space) for the model to continue.
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     bool add_generation_prompt) const;

 private:
  ChatTemplate(std::string bos, std::string eos) : bos_(std::move(bos)), eos_(std::move(eos)) {}
  std::string bos_;
  std::string eos_;
};

}  // namespace dsv2
