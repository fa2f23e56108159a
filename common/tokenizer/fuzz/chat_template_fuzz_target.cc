// tokenizer_config.json and the chat template. The input is a
// tokenizer_config.json, then messages, separated by NUL bytes; a message's
// first byte picks its role (system, user, assistant, or an unknown one)
// and the rest is its content. The config is parsed; whatever its chat
// template, the conversation is rendered by DeepSeek-V2's (with the file's
// BOS/EOS where it has them) and must be exactly the template's text, then
// encoded by the tiny model's tokenizer.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/fuzz/fuzz_target.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/model_tokenizer.h"
#include "common/tokenizer/unicode.h"

namespace dsv2::fuzz {
namespace {

const std::shared_ptr<const Tokenizer>& TinyTokenizer() {
  static const auto* tokenizer = [] {
    auto loaded = Tokenizer::FromFile("tests/data/tiny-v2/tokenizer.json");
    Require(loaded.ok(), "tests/data/tiny-v2/tokenizer.json loads (run from the repository root)");
    return new std::shared_ptr<const Tokenizer>(*std::move(loaded));
  }();
  return *tokenizer;
}

// What the template renders, written out independently of ChatTemplate.
std::string Expected(const std::string& bos, const std::string& eos,
                     const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string text = bos;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") text += "User: " + m.content + "\n\n";
    if (m.role == "assistant") text += "Assistant: " + m.content + eos;
    if (m.role == "system") text += m.content + "\n\n";
  }
  if (add_generation_prompt) text += "Assistant:";
  return text;
}

}  // namespace

void FuzzOneInput(const uint8_t* data, size_t size) {
  // The parts between NUL bytes (absl's string_view is not std's here).
  std::vector<std::string_view> parts;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (size_t begin = 0;;) {
    const size_t end = input.find('\0', begin);
    parts.push_back(input.substr(begin, end == std::string_view::npos ? end : end - begin));
    if (end == std::string_view::npos) break;
    begin = end + 1;
  }
  auto parsed = TokenizerConfig::FromJson(std::string(parts[0]), "tokenizer_config.json");
  if (!parsed.ok()) {
    Require(parsed.status().code() == absl::StatusCode::kInvalidArgument,
            "a bad tokenizer_config.json is InvalidArgument");
    RequireCheckedJsonReads();
  }
  TokenizerConfig config = parsed.ok() ? *parsed : TokenizerConfig{};
  // Only DeepSeek-V2's template renders; use it whatever the file says, so
  // every input reaches the renderer.
  config.chat_template = ChatTemplate::DeepSeekV2Template();
  if (!config.bos_token) config.bos_token = "<s>";
  if (!config.eos_token) config.eos_token = "</s>";
  auto chat = ChatTemplate::FromConfig(config);
  Require(chat.ok(), "DeepSeek-V2's template with BOS and EOS is accepted");

  std::vector<ChatMessage> messages;
  bool known_roles = true;
  for (size_t i = 1; i < parts.size(); ++i) {
    static const char* const kRoles[] = {"system", "user", "assistant", "tool"};
    const std::string_view part = parts[i];
    const std::string role = part.empty() ? "user" : kRoles[static_cast<uint8_t>(part[0]) % 4];
    known_roles = known_roles && role != "tool";
    messages.push_back({role, std::string(part.empty() ? part : part.substr(1))});
  }
  const bool add_generation_prompt = size % 2 == 0;
  auto text = chat->Render(messages, add_generation_prompt);
  Require(text.ok() == (known_roles && !messages.empty()),
          "rendering fails exactly for unknown roles and empty conversations");
  if (!text.ok()) return;
  Require(*text == Expected(*config.bos_token, *config.eos_token, messages, add_generation_prompt),
          "the rendered text is the template's");

  // The model directory's path: the same render, then the tokenizer, which
  // round-trips well-formed text (the tiny tokenizer is byte-level).
  const ModelTokenizer model(TinyTokenizer(), config);
  auto ids = model.EncodeChat(messages, add_generation_prompt);
  Require(ids.ok() == tokenizer_internal::IsValidUtf8(*text),
          "the rendered text encodes exactly when it is UTF-8");
  if (ids.ok()) Require(model.tokenizer().Decode(*ids) == *text, "decode(encode(chat)) == chat");
}

}  // namespace dsv2::fuzz
