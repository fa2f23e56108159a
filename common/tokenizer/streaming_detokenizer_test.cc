#include "common/tokenizer/streaming_detokenizer.h"

#include "common/tokenizer/unicode.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

constexpr char kTiny[] = "tests/data/tiny-v2/tokenizer.json";

// The ids of single-byte tokens: the ByteLevel characters of the bytes.
std::vector<int32_t> ByteIds(const Tokenizer& t, std::string_view bytes) {
  std::vector<int32_t> ids;
  for (unsigned char b : bytes)
    ids.push_back(*t.TokenToId(tokenizer_internal::ByteLevelChars()[b]));
  return ids;
}

TEST(StreamingDetokenizerTest, HoldsBackACharacterUntilItIsComplete) {
  auto t = Tokenizer::FromFile(kTiny);
  ASSERT_TRUE(t.ok()) << t.status();
  // "中" is three bytes, fed one token each; then "é" and an emoji.
  const std::vector<int32_t> ids = ByteIds(**t, "a\xE4\xB8\xAD\xC3\xA9\xF0\x9F\x98\x80!");
  StreamingDetokenizer stream(**t, /*skip_special_tokens=*/false);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(stream.Append(id));
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "", "", "\xE4\xB8\xAD", "", "\xC3\xA9", "", "",
                                              "", "\xF0\x9F\x98\x80", "!"}));
  EXPECT_EQ(stream.Finish(), "");
}

TEST(StreamingDetokenizerTest, BytesThatCannotCompleteBecomeReplacementAtOnce) {
  auto t = Tokenizer::FromFile(kTiny);
  ASSERT_TRUE(t.ok());
  StreamingDetokenizer stream(**t, false);
  const auto ids = ByteIds(**t,
                           "\xE4\xB8"
                           "a\x80\xF0\x9F");
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = stream.Append(ids[i]);
    EXPECT_TRUE(tokenizer_internal::IsValidUtf8(piece));
    out += piece;
    if (i == 2) {
      EXPECT_EQ(out, "\xEF\xBF\xBD" "a");  // The broken character, then "a", at "a".
    }
  }
  // The incomplete 4-byte start is flushed as one U+FFFD at the end.
  out += stream.Finish();
  EXPECT_EQ(out,
            "\xEF\xBF\xBD"
            "a\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(out, (*t)->Decode(ids));
}

TEST(StreamingDetokenizerTest, SpecialTokensShownOrSkipped) {
  auto t = Tokenizer::FromFile(kTiny);
  ASSERT_TRUE(t.ok());
  const std::string eos =
      "<\xEF\xBD\x9C"
      "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  auto ids = (*t)->Encode("Hi" + eos + "there", {.add_special_tokens = false});
  ASSERT_TRUE(ids.ok());
  for (bool skip : {false, true}) {
    StreamingDetokenizer stream(**t, skip);
    std::string out;
    for (int32_t id : *ids) out += stream.Append(id);
    out += stream.Finish();
    EXPECT_EQ(out, skip ? "Hithere" : "Hi" + eos + "there");
    EXPECT_EQ(out, (*t)->Decode(*ids, skip));
  }
  // Ids that are no token produce nothing, as in Decode.
  StreamingDetokenizer stream(**t, false);
  EXPECT_EQ(stream.Append(99999), "");
  EXPECT_EQ(stream.Append(-1), "");
}

}  // namespace
}  // namespace dsv2
