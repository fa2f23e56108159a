#include "common/tokenizer/chat_template.h"

#include "absl/strings/str_cat.h"
#include "common/base/json_reading.h"
#include "common/base/regular_file.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using nlohmann::json;

// DeepSeek-V2's tokenizer_config.json is 1.3 KB; some models list every
// added token in it, a few MB.
constexpr int64_t kMaxTokenizerConfigBytes = int64_t{1} << 26;

// bos_token / eos_token are a string or an AddedToken object {"content": ...}.
absl::StatusOr<std::optional<std::string>> TokenField(const json& root, const char* key,
                                                      const std::string& source) {
  if (!root.contains(key) || root[key].is_null()) return std::optional<std::string>();
  const json& value = root[key];
  if (value.is_string()) return std::optional<std::string>(value.get<std::string>());
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return std::optional<std::string>(value["content"].get<std::string>());
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": ", key, " must be a string or {\"content\": ...}, got ", JsonTypeName(value)));
}

absl::StatusOr<std::optional<bool>> BoolField(const json& root, const char* key,
                                              const std::string& source) {
  if (!root.contains(key) || root[key].is_null()) return std::optional<bool>();
  if (!root[key].is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", key, " must be a boolean, got ", JsonTypeName(root[key])));
  }
  return std::optional<bool>(root[key].get<bool>());
}

}  // namespace

absl::StatusOr<TokenizerConfig> TokenizerConfig::FromFile(const std::string& path) {
  auto text = ReadRegularFile(path, kMaxTokenizerConfigBytes);
  if (!text.ok()) return text.status();
  return FromJson(*text, path);
}

absl::StatusOr<TokenizerConfig> TokenizerConfig::FromJson(std::string_view text,
                                                          const std::string& source) {
  return GuardJsonReader(source, [&] { return Parse(text, source); });
}

absl::StatusOr<TokenizerConfig> TokenizerConfig::Parse(std::string_view text,
                                                       const std::string& source) {
  const json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  TokenizerConfig config;
  auto bos = TokenField(root, "bos_token", source);
  if (!bos.ok()) return bos.status();
  config.bos_token = *bos;
  auto eos = TokenField(root, "eos_token", source);
  if (!eos.ok()) return eos.status();
  config.eos_token = *eos;
  auto add_bos = BoolField(root, "add_bos_token", source);
  if (!add_bos.ok()) return add_bos.status();
  config.add_bos_token = *add_bos;
  auto add_eos = BoolField(root, "add_eos_token", source);
  if (!add_eos.ok()) return add_eos.status();
  config.add_eos_token = *add_eos;
  if (root.contains("chat_template") && !root["chat_template"].is_null()) {
    if (!root["chat_template"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": chat_template must be a string, got ", JsonTypeName(root["chat_template"]),
          " (named template lists are not supported)"));
    }
    config.chat_template = root["chat_template"].get<std::string>();
  }
  return config;
}

const std::string& ChatTemplate::DeepSeekV2Template() {
  static const std::string kTemplate =
      "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% "
      "endif %}"
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
      "{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
      "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
      "{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
      "{{ 'Assistant:' }}{% endif %}";
  return kTemplate;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromConfig(const TokenizerConfig& config) {
  if (!config.chat_template)
    return absl::FailedPreconditionError("tokenizer_config.json has no chat_template");
  if (*config.chat_template != DeepSeekV2Template()) {
    return absl::UnimplementedError(
        "tokenizer_config.json's chat_template is not DeepSeek-V2-Chat's, the only one "
        "implemented");
  }
  if (!config.bos_token || !config.eos_token) {
    return absl::FailedPreconditionError(
        "tokenizer_config.json needs bos_token and eos_token for the chat template");
  }
  return ChatTemplate(*config.bos_token, *config.eos_token);
}

absl::StatusOr<std::string> ChatTemplate::Render(std::span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("the conversation has no messages");
  std::string text = bos_;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      absl::StrAppend(&text, "User: ", m.content, "\n\n");
    } else if (m.role == "assistant") {
      absl::StrAppend(&text, "Assistant: ", m.content, eos_);
    } else if (m.role == "system") {
      absl::StrAppend(&text, m.content, "\n\n");
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", i, " has role '", m.role,
                       "'; the chat template knows system, user and assistant"));
    }
  }
  if (add_generation_prompt) text += "Assistant:";
  return text;
}

}  // namespace dsv2
