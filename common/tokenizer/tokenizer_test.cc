// Loading (what is rejected and how it is named), ill-formed UTF-8, added
// tokens with lstrip / rstrip / single_word / normalized, and the BPE merge
// paths. Agreement with Hugging Face on the corpus is
// tokenizer_corpus_test.cc.
#include "common/tokenizer/tokenizer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/base/json_reading.h"
#include "common/tokenizer/bpe.h"
#include "common/tokenizer/model_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;

constexpr char kTiny[] = "tests/data/tiny-v2/tokenizer.json";
constexpr char kAdded[] = "tests/data/tokenizer/variants/added-tokens.json";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

nlohmann::json TinyJson() { return nlohmann::json::parse(ReadFile(kTiny)); }

std::unique_ptr<Tokenizer> Load(const std::string& path) {
  auto t = Tokenizer::FromFile(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

std::vector<int32_t> Encode(const Tokenizer& t, std::string_view text) {
  auto ids = t.Encode(text, {.add_special_tokens = false});
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Loads the tiny tokenizer with one change and returns the load error.
std::string LoadError(const std::function<void(nlohmann::json&)>& change) {
  nlohmann::json j = TinyJson();
  change(j);
  auto t = Tokenizer::FromJson(j.dump(), "edited.json");
  return t.ok() ? "" : std::string(t.status().message());
}

TEST(TokenizerLoadTest, LoadsTheTinyModelTokenizer) {
  auto t = Load(kTiny);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->VocabSize(), 3200);
  EXPECT_EQ(t->TokenToId("<\xEF\xBD\x9C"
                         "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"),
            0);
  EXPECT_EQ(t->TokenToId("<\xEF\xBD\x9C"
                         "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"),
            1);
  EXPECT_TRUE(t->IsSpecial(0));
  EXPECT_FALSE(t->IsSpecial(300));
  EXPECT_EQ(t->IdToToken(0),
            "<\xEF\xBD\x9C"
            "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>");
  EXPECT_EQ(t->Decode(Encode(*t, "Hello, world! 123")), "Hello, world! 123");
}

TEST(TokenizerLoadTest, UnsupportedComponentsAreRejectedByName) {
  EXPECT_THAT(LoadError([](auto& j) {
                j["normalizer"] = {{"type", "NFC"}};
              }),
              HasSubstr("edited.json: normalizer.type 'NFC' is not supported"));
  EXPECT_THAT(
      LoadError([](auto& j) {
        j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Lowercase"}}}}};
      }),
      HasSubstr("normalizer.normalizers[0].type 'Lowercase' is not supported"));
  EXPECT_THAT(LoadError([](auto& j) {
                j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Metaspace"}};
              }),
              HasSubstr("pre_tokenizer.pretokenizers[0].type 'Metaspace' is not supported"));
  EXPECT_THAT(LoadError([](auto& j) { j["model"]["type"] = "WordPiece"; }),
              HasSubstr("model.type 'WordPiece' is not supported"));
  EXPECT_THAT(LoadError([](auto& j) {
                j["decoder"] = {{"type", "Metaspace"}};
              }),
              HasSubstr("decoder.type 'Metaspace' is not supported"));
  EXPECT_THAT(LoadError([](auto& j) {
                j["post_processor"] = {{"type", "RobertaProcessing"}};
              }),
              HasSubstr("post_processor.type 'RobertaProcessing' is not supported"));
  EXPECT_THAT(LoadError([](auto& j) {
                j["truncation"] = {{"max_length", 8}};
              }),
              HasSubstr("truncation is set"));
  EXPECT_THAT(LoadError([](auto& j) { j["model"]["dropout"] = 0.1; }),
              HasSubstr("model.dropout is set"));
  EXPECT_THAT(LoadError([](auto& j) { j["model"]["continuing_subword_prefix"] = "##"; }),
              HasSubstr("model.continuing_subword_prefix is set"));
  EXPECT_THAT(LoadError([](auto& j) { j["model"]["frobnicate"] = true; }),
              HasSubstr("model.frobnicate is not a supported field"));
  EXPECT_THAT(LoadError([](auto& j) { j["added_tokens"][0]["colour"] = "red"; }),
              HasSubstr("added_tokens[0].colour is not a supported field"));
  EXPECT_THAT(LoadError([](auto& j) {
                auto& seq = j["pre_tokenizer"]["pretokenizers"];
                seq.push_back({{"type", "Digits"}, {"individual_digits", true}});
              }),
              HasSubstr("follows a ByteLevel pre-tokenizer"));
  EXPECT_THAT(LoadError([](auto& j) {
                j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\bx";
              }),
              HasSubstr("unsupported escape \\b"));
  EXPECT_THAT(LoadError([](auto& j) {
                j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{Han}+";
              }),
              HasSubstr("unsupported Unicode property \\p{Han}"));
  EXPECT_THAT(
      LoadError([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(x"; }),
      HasSubstr("pre_tokenizer.pretokenizers[0].pattern.Regex invalid regex '(x'"));
  EXPECT_THAT(
      LoadError([](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways"; }),
      HasSubstr("behavior 'Sideways' is unknown"));
  EXPECT_THAT(LoadError([](auto& j) { j["model"]["merges"][0] = "a b c"; }),
              HasSubstr("model.merges[0] must be two tokens separated by one space"));
  EXPECT_THAT(LoadError([](auto& j) { j["model"]["merges"].push_back("zzqq xxyy"); }),
              HasSubstr("'zzqq' is not in the vocabulary"));
  EXPECT_THAT(LoadError([](auto& j) { j["model"]["vocab"]["hi"] = -3; }),
              HasSubstr("non-negative integer id"));
  auto bad_json = Tokenizer::FromJson("{\"model\": ", "broken.json");
  ASSERT_FALSE(bad_json.ok());
  EXPECT_THAT(bad_json.status().message(), HasSubstr("broken.json: not valid JSON"));
  EXPECT_EQ(Tokenizer::FromFile("no/such/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
}

// Values of the wrong JSON type anywhere in the file are named with the type
// found. The first case aborted the process (an nlohmann type_error escaped
// the loader; `dsv2 tokenize` exited 134).
TEST(TokenizerLoadTest, WrongJsonTypesAreNamedNotThrown) {
  auto template_processing = [](nlohmann::json sequence_id) {
    return nlohmann::json{
        {"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", sequence_id}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {0}}, {"tokens", {"<s>"}}}}}}};
  };
  struct Case {
    std::function<void(nlohmann::json&)> change;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[&](auto& j) { j["post_processor"] = template_processing(5); },
       "edited.json: post_processor.single[1].Sequence.id must be a string, got number"},
      {[&](auto& j) {
         j["post_processor"] = {{"type", "Sequence"},
                                {"processors", {template_processing(nullptr)}}};
       },
       "edited.json: post_processor.processors[0].single[1].Sequence.id must be a string, got "
       "null"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["type"] = 5; },
       "edited.json: pre_tokenizer.pretokenizers[0].type must be a string, got number"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][0] = 5; },
       "edited.json: pre_tokenizer.pretokenizers[0] must be an object or null, got number"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = {"Isolated"}; },
       "edited.json: pre_tokenizer.pretokenizers[0].behavior must be a string, got array"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["invert"] = "no"; },
       "edited.json: pre_tokenizer.pretokenizers[0].invert must be true or false, got string"},
      {[](auto& j) {
         j["model"]["vocab"] = {1, 2};
       },
       "edited.json: model.vocab must be an object, got array"},
      {[](auto& j) { j["model"]["merges"] = "a b"; },
       "edited.json: model.merges must be an array, got string"},
      {[](auto& j) { j["added_tokens"][0]["content"] = 5; },
       "edited.json: added_tokens[0].content must be a string, got number"},
      {[](auto& j) {
         j["added_tokens"] = {{"content", "x"}};
       },
       "edited.json: added_tokens must be an array, got object"},
      {[](auto& j) { j["decoder"] = "ByteLevel"; },
       "edited.json: decoder must be an object or null, got string"},
      {[](auto& j) {
         j["normalizer"]["normalizers"] = {{{"type", "Prepend"}, {"prepend", 1}}};
       },
       "edited.json: normalizer.normalizers[0].prepend must be a string, got number"},
      {[&](auto& j) {
         j["post_processor"] = template_processing("A");
         j["post_processor"]["special_tokens"]["<s>"]["ids"] = {"zero"};
       },
       "edited.json: post_processor.special_tokens '<s>' has an invalid id \"zero\""},
  };
  const int64_t unchecked = UncheckedJsonErrors();
  for (const Case& c : cases) {
    const std::string error = LoadError(c.change);
    EXPECT_THAT(error, HasSubstr(c.expected));
    EXPECT_THAT(error, ::testing::Not(HasSubstr(kUncheckedJsonMessage)));
  }
  // Every case was caught by a type check, none by the exception backstop.
  EXPECT_EQ(UncheckedJsonErrors(), unchecked);
}

// Ids index the decoding tables, so an id of a billion used to allocate
// tens of GB; ids past the bound are refused instead, wherever they appear.
TEST(TokenizerLoadTest, HugeTokenIdsAreRefusedBeforeAllocatingForThem) {
  EXPECT_THAT(LoadError([](auto& j) { j["model"]["vocab"]["hi"] = 1000000000; }),
              HasSubstr("edited.json: model.vocab['hi'] must be a non-negative integer id up to "
                        "2097151, got 1000000000"));
  EXPECT_THAT(LoadError([](auto& j) { j["added_tokens"][0]["id"] = uint64_t{1} << 40; }),
              HasSubstr("added_tokens[0].id must be a non-negative integer up to 2097151, got "
                        "1099511627776"));
  EXPECT_THAT(LoadError([](auto& j) {
                j["post_processor"] = {
                    {"type", "TemplateProcessing"},
                    {"single",
                     {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                      {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                    {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {int64_t{1} << 32}}}}}}};
              }),
              HasSubstr("'<s>' has an invalid id 4294967296 (ids are integers in [0, 2097151])"));
  // The largest id allowed still loads.
  EXPECT_EQ(LoadError([](auto& j) { j["model"]["vocab"]["hi"] = (1 << 21) - 1; }), "");
}

TEST(TokenizerLoadTest, FilesThatAreNotRegularFilesAreRefusedAtOnce) {
  const std::string dir = testing::TempDir() + "/tokenizer_fifo_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/model");
  const std::string fifo = dir + "/model/tokenizer.json";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // Nobody writes to it: reading it the old way blocked forever (tokenizer
  // tests have a ctest TIMEOUT for such a regression).
  auto tokenizer = Tokenizer::FromFile(fifo);
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tokenizer.status().message(), fifo + " is a FIFO (named pipe), not a regular file");
  EXPECT_EQ(ModelTokenizer::Load(dir + "/model").status().message(),
            fifo + " is a FIFO (named pipe), not a regular file");
  std::filesystem::remove(fifo);
  std::filesystem::copy_file(kTiny, fifo);
  const std::string config_fifo = dir + "/model/tokenizer_config.json";
  ASSERT_EQ(mkfifo(config_fifo.c_str(), 0600), 0);
  EXPECT_EQ(ModelTokenizer::Load(dir + "/model").status().message(),
            config_fifo + " is a FIFO (named pipe), not a regular file");
  std::filesystem::remove(config_fifo);
  std::filesystem::create_directories(config_fifo);
  EXPECT_EQ(ModelTokenizer::Load(dir + "/model").status().message(),
            config_fifo + " is a directory, not a regular file");
}

TEST(TokenizerLoadTest, DeeplyNestedSequencesAreRejectedNotOverflowed) {
  nlohmann::json pre = {{"type", "Digits"}, {"individual_digits", true}};
  for (int i = 0; i < 200; ++i) pre = {{"type", "Sequence"}, {"pretokenizers", {pre}}};
  EXPECT_THAT(LoadError([&](auto& j) { j["pre_tokenizer"] = pre; }),
              HasSubstr("nests Sequences too deeply"));
}

TEST(TokenizerEncodeTest, IllFormedUtf8IsAnErrorOrReplacedOnRequest) {
  auto t = Load(kTiny);
  ASSERT_NE(t, nullptr);
  const std::string bad = "caf\xE9 ok";
  auto strict = t->Encode(bad);
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(strict.status().message(), HasSubstr("not valid UTF-8"));
  EXPECT_THAT(strict.status().message(), HasSubstr("offset 3"));
  // Replacement: each maximal ill-formed subsequence becomes one U+FFFD,
  // as Python's bytes.decode("utf-8", "replace").
  auto replaced =
      t->Encode(bad, {.add_special_tokens = false, .invalid_utf8 = InvalidUtf8::kReplace});
  ASSERT_TRUE(replaced.ok());
  EXPECT_EQ(*replaced, Encode(*t, "caf\xEF\xBF\xBD ok"));
  auto two = t->Encode("\xE4\xB8|\xED\xA0\x80",
                       {.add_special_tokens = false, .invalid_utf8 = InvalidUtf8::kReplace});
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(t->Decode(*two), "\xEF\xBF\xBD|\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(TokenizerEncodeTest, SpecialTokenTextIsMatchedBeforePreTokenization) {
  auto t = Load(kTiny);
  ASSERT_NE(t, nullptr);
  const std::string bos =
      "<\xEF\xBD\x9C"
      "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  EXPECT_EQ(Encode(*t, bos + "Hi" + bos), Concat({{0}, Encode(*t, "Hi"), {0}}));
  // Part of a special token is ordinary text.
  EXPECT_EQ(Encode(*t, bos.substr(0, 8)).size() > 1, true);
  EXPECT_EQ(t->Decode(Encode(*t, bos + "x"), /*skip_special_tokens=*/true), "x");
}

TEST(TokenizerEncodeTest, AddedTokenStripAndWordOptions) {
  auto t = Load(kAdded);
  ASSERT_NE(t, nullptr);
  const int32_t lstrip = *t->TokenToId("<|lstrip|>"), rstrip = *t->TokenToId("<|rstrip|>");
  const int32_t both = *t->TokenToId("<|both|>"), hello = *t->TokenToId("hello"),
                qq = *t->TokenToId("QQ");
  // lstrip / rstrip swallow the whitespace beside the token.
  EXPECT_EQ(Encode(*t, "a  <|lstrip|>b"), Concat({Encode(*t, "a"), {lstrip}, Encode(*t, "b")}));
  EXPECT_EQ(Encode(*t, "a<|rstrip|>   b"), Concat({Encode(*t, "a"), {rstrip}, Encode(*t, "b")}));
  EXPECT_EQ(Encode(*t, "a \t<|both|>\u3000 b"), Concat({Encode(*t, "a"), {both}, Encode(*t, "b")}));
  // single_word: only between non-word characters.
  EXPECT_THAT(Encode(*t, "say hello!"), ::testing::Contains(hello));
  EXPECT_THAT(Encode(*t, "say hello2"), ::testing::Not(::testing::Contains(hello)));
  EXPECT_THAT(Encode(*t, "sayhello"), ::testing::Not(::testing::Contains(hello)));
  // normalized: matched after the normalizer (Replace "qq" -> "QQ") has run.
  EXPECT_EQ(Encode(*t, "qq"), std::vector<int32_t>{qq});
  // The TemplateProcessing post-processor adds BOS and EOS.
  auto with_special = t->Encode("hi");
  ASSERT_TRUE(with_special.ok());
  EXPECT_EQ(*with_special, Concat({{0}, Encode(*t, "hi"), {1}}));
}

TEST(BpeModelTest, ScanAndQueueMergesAgree) {
  auto t = Load(kTiny);
  ASSERT_NE(t, nullptr);
  std::vector<std::pair<std::string, int32_t>> vocab;
  const nlohmann::json j = TinyJson();
  for (const auto& [token, id] : j["model"]["vocab"].items())
    vocab.emplace_back(token, id.get<int32_t>());
  std::vector<std::pair<std::string, std::string>> merges;
  for (const auto& m : j["model"]["merges"]) {
    const std::string s = m.is_string() ? m.get<std::string>()
                                        : m[0].get<std::string>() + " " + m[1].get<std::string>();
    merges.emplace_back(s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1));
  }
  auto model = tokenizer_internal::BpeModel::Create(vocab, merges, {});
  ASSERT_TRUE(model.ok()) << model.status();
  std::mt19937 rng(7);
  const std::string alphabet = "etaoin shrdlu";
  for (int trial = 0; trial < 2000; ++trial) {
    std::string word;
    const int len = 2 + static_cast<int>(rng() % 40);
    for (int i = 0; i < len; ++i) word += alphabet[rng() % alphabet.size()];
    std::vector<int32_t> scan, heap;
    for (unsigned char b : word) {
      const int32_t id =
          *(*model)->TokenToId(std::string(1, static_cast<char>(b == ' ' ? 'G' : b)));
      scan.push_back(b == ' ' ? *(*model)->TokenToId("\xC4\xA0") : id);
    }
    heap = scan;
    (*model)->MergeAll(&scan);
    (*model)->MergeAll(&heap, /*force_heap=*/true);
    ASSERT_EQ(scan, heap) << word;
  }
}

}  // namespace
}  // namespace dsv2
