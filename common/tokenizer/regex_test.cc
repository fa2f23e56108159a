// The translated PCRE2 patterns against Oniguruma as Hugging Face runs it:
// every code point of every supported class (tests/data/tokenizer/
// onig_classes.json, measured by tools/golden/make_tokenizer_unicode_tables.py),
// Ruby's line anchors, and Oniguruma's treatment of empty matches.
#include "common/tokenizer/regex.h"

#include <fstream>

#include "common/tokenizer/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2::tokenizer_internal {
namespace {

using ::testing::HasSubstr;

std::vector<std::pair<uint32_t, uint32_t>> Find(const std::string& pattern,
                                                const std::string& text) {
  auto regex = Regex::Compile(pattern);
  EXPECT_TRUE(regex.ok()) << regex.status();
  std::vector<Regex::Match> matches;
  EXPECT_TRUE((*regex)->FindAll(text, &matches).ok());
  std::vector<std::pair<uint32_t, uint32_t>> out;
  for (const auto& m : matches) out.emplace_back(m.start, m.end);
  return out;
}

TEST(RegexTest, EveryCodePointOfEveryClassMatchesOniguruma) {
  std::ifstream in("tests/data/tokenizer/onig_classes.json");
  const nlohmann::json data = nlohmann::json::parse(in);
  // All scalar values, one after another, and where each starts.
  std::string all;
  std::vector<char32_t> at_offset(0x110000 * 4 + 1, 0);
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    at_offset[all.size()] = c;
    AppendUtf8(c, &all);
  }
  int classes = 0;
  for (const auto& [name, ranges] : data["classes"].items()) {
    std::vector<bool> want(0x110000, false);
    for (const auto& r : ranges) {
      for (uint32_t c = r[0].get<uint32_t>(); c <= r[1].get<uint32_t>(); ++c) want[c] = true;
    }
    std::vector<bool> got(0x110000, false);
    if (name == "Digits") {
      for (char32_t c = 0; c < 0x110000; ++c) got[c] = IsNumeric(c);
    } else {
      for (const auto& [start, end] : Find(name, all)) {
        ASSERT_EQ(end - start, Utf8Length(static_cast<unsigned char>(all[start]))) << name;
        got[at_offset[start]] = true;
      }
    }
    int differences = 0;
    for (char32_t c = 0; c < 0x110000; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      if (got[c] != want[c] && ++differences <= 5) {
        ADD_FAILURE() << name << ": U+" << std::hex << static_cast<uint32_t>(c)
                      << (got[c] ? " matched" : " missed");
      }
    }
    EXPECT_EQ(differences, 0) << name;
    ++classes;
  }
  EXPECT_GE(classes, 30);
  // \w is also what single_word uses.
  EXPECT_TRUE(IsWordCharacter(U'a') && IsWordCharacter(U'\u0301') && !IsWordCharacter(U'-'));
  EXPECT_TRUE(IsWhiteSpace(U'\u3000') && !IsWhiteSpace(U'\u180E') && !IsWhiteSpace(U'\u200B'));
}

TEST(RegexTest, AnchorsAreRubyLineAnchors) {
  // `$` is before "\n" (not "\r") and at the end; `^` after "\n".
  EXPECT_EQ(Find(R"(\s+$)", "a  \nb  \n\nc \r\nd  "),
            (std::vector<std::pair<uint32_t, uint32_t>>{{1, 3}, {5, 8}, {10, 12}, {14, 16}}));
  EXPECT_EQ(Find("^a", "ab\nab\rab"), (std::vector<std::pair<uint32_t, uint32_t>>{{0, 1}, {3, 4}}));
}

TEST(RegexTest, EmptyMatchesFollowOniguruma) {
  // An empty match where the last match ended is skipped.
  EXPECT_EQ(Find("x*", "axxb\xC3\xA9"),
            (std::vector<std::pair<uint32_t, uint32_t>>{{0, 0}, {1, 3}, {4, 4}, {6, 6}}));
}

TEST(RegexTest, LookaheadAndCategories) {
  // GPT-2's trailing-space rule: whitespace not followed by non-space.
  EXPECT_EQ(Find(R"(\s+(?!\S)|\s+)", "a   b"),
            (std::vector<std::pair<uint32_t, uint32_t>>{{1, 3}, {3, 4}}));
  EXPECT_EQ(Find(R"(\p{N}+)", "x\xD9\xA1\xD9\xA2y12"),
            (std::vector<std::pair<uint32_t, uint32_t>>{{1, 5}, {6, 8}}));
  // Oniguruma's \h is a hex digit, \v the vertical tab, (?m) dot-all.
  EXPECT_EQ(Find(R"(\h+)", "zz0aFg"), (std::vector<std::pair<uint32_t, uint32_t>>{{2, 5}}));
  EXPECT_EQ(Find(R"(\v)", "a\x0B\n"), (std::vector<std::pair<uint32_t, uint32_t>>{{1, 2}}));
  EXPECT_EQ(Find("(?m)a.b", "a\nb"), (std::vector<std::pair<uint32_t, uint32_t>>{{0, 3}}));
}

TEST(RegexTest, ConstructsThatDifferAreRejected) {
  for (const auto& [pattern, message] : std::vector<std::pair<std::string, std::string>>{
           {R"(\bword)", "unsupported escape \\b"},
           {R"([[:alpha:]])", "nested character class or POSIX bracket"},
           {R"([a-z&&[^x]])", "class intersection"},
           {R"(\p{Greek})", "unsupported Unicode property \\p{Greek}"},
           {R"([^\P{L}])", "negated \\P{L} inside a character class"},
           {R"(\Q)", "unsupported escape \\Q"},
           {"(a", "missing closing parenthesis"},
           {"(*CR)a$", "(* verb or option"},
           {R"(\C)", "unsupported escape \\C"},
       }) {
    auto regex = Regex::Compile(pattern);
    ASSERT_FALSE(regex.ok()) << pattern;
    EXPECT_THAT(regex.status().message(), HasSubstr(message)) << pattern;
  }
}

TEST(Utf8Test, ConvertiblePrefixHoldsBackOnlyAnIncompleteCharacter) {
  EXPECT_EQ(ConvertiblePrefixLength("ab\xE4\xB8"), 2u);
  EXPECT_EQ(ConvertiblePrefixLength("ab\xE4\xB8\xAD"), 5u);
  EXPECT_EQ(ConvertiblePrefixLength("ab\xF0\x9F\x98"), 2u);
  EXPECT_EQ(ConvertiblePrefixLength("ab\xE4"
                                    "x"),
            4u);  // Can no longer complete.
  EXPECT_EQ(ConvertiblePrefixLength("\x80"), 1u);
  EXPECT_EQ(ConvertiblePrefixLength("\xED\xA0"), 2u);  // A surrogate is never valid.
  EXPECT_EQ(ReplaceInvalidUtf8("\xF0\x9F\x98"
                               "a\xC0\xAF"),
            "\xEF\xBF\xBD"
            "a\xEF\xBF\xBD\xEF\xBF\xBD");
}

}  // namespace
}  // namespace dsv2::tokenizer_internal
