#include "common/tokenizer/model_tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace dsv2 {

absl::StatusOr<ModelTokenizer> ModelTokenizer::Load(const std::string& dir) {
  // The non-throwing exists(): a path it cannot examine is left to the
  // reader, whose error names it. The readers refuse what is not a regular
  // file (a FIFO would block them).
  std::error_code error;
  const std::string json_path = dir + "/tokenizer.json";
  if (!std::filesystem::exists(json_path, error) && !error) {
    return absl::NotFoundError(absl::StrCat(dir, " has no tokenizer.json"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(json_path));
  TokenizerConfig config;
  const std::string config_path = dir + "/tokenizer_config.json";
  if (std::filesystem::exists(config_path, error) || error) {
    ASSIGN_OR_RETURN(config, TokenizerConfig::FromFile(config_path));
  }
  return ModelTokenizer(std::move(tokenizer), std::move(config));
}

ModelTokenizer::ModelTokenizer(std::shared_ptr<const Tokenizer> tokenizer, TokenizerConfig config)
    : tokenizer_(std::move(tokenizer)), config_(std::move(config)) {
  if (config_.bos_token) bos_id_ = tokenizer_->TokenToId(*config_.bos_token);
  if (config_.eos_token) eos_id_ = tokenizer_->TokenToId(*config_.eos_token);
}

absl::StatusOr<std::vector<int32_t>> ModelTokenizer::EncodePrompt(std::string_view text) const {
  if (!config_.add_bos_token && !config_.add_eos_token) return tokenizer_->Encode(text);
  const bool add_bos = config_.add_bos_token.value_or(false);
  const bool add_eos = config_.add_eos_token.value_or(false);
  if (add_bos && !bos_id_) {
    return absl::FailedPreconditionError(
        "add_bos_token is set but bos_token is missing or not in the vocabulary");
  }
  if (add_eos && !eos_id_) {
    return absl::FailedPreconditionError(
        "add_eos_token is set but eos_token is missing or not in the vocabulary");
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> body,
                   tokenizer_->Encode(text, {.add_special_tokens = false}));
  std::vector<int32_t> ids;
  ids.reserve(body.size() + 2);
  if (add_bos) ids.push_back(*bos_id_);
  ids.insert(ids.end(), body.begin(), body.end());
  if (add_eos) ids.push_back(*eos_id_);
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ModelTokenizer::EncodeChat(
    std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  ASSIGN_OR_RETURN(ChatTemplate chat, ChatTemplate::FromConfig(config_));
  ASSIGN_OR_RETURN(std::string text, chat.Render(messages, add_generation_prompt));
  return tokenizer_->Encode(text, {.add_special_tokens = false});
}

}  // namespace dsv2
