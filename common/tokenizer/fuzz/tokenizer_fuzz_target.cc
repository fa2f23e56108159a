// The tokenizer: tokenizer.json parsing, encoding arbitrary bytes, decoding
// arbitrary ids, regex translation. The first byte picks what the rest is:
//   0  a tokenizer.json: loaded; if it loads, strings are encoded and ids decoded;
//   1  text (any bytes) encoded by the test tokenizers: ill-formed UTF-8 is an
//      error or replaced; well-formed text must round-trip through the tiny
//      tokenizer, and streaming must equal decoding;
//   2  token ids (little-endian 16-bit) decoded and streamed;
//   3  a regex pattern: compiled and, if it compiles, run over fixed text.
// (tokenizer_json_fuzz_target.cc fuzzes whole tokenizer.json files alone.)
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/fuzz/fuzz_target.h"
#include "common/tokenizer/regex.h"
#include "common/tokenizer/streaming_detokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/unicode.h"

namespace dsv2::fuzz {
namespace {

struct TestTokenizers {
  std::unique_ptr<Tokenizer> tiny;  // DeepSeek-V2's structure: decode(encode(x)) == x.
  std::vector<std::unique_ptr<Tokenizer>> others;
};

const TestTokenizers& Tokenizers() {
  static const TestTokenizers* tokenizers = [] {
    auto* t = new TestTokenizers;
    auto tiny = Tokenizer::FromFile("tests/data/tiny-v2/tokenizer.json");
    Require(tiny.ok(), "tests/data/tiny-v2/tokenizer.json loads (run from the repository root)");
    t->tiny = *std::move(tiny);
    for (const char* name :
         {"gpt2", "llama3", "deepseek-v3-style", "added-tokens", "byte-fallback-unk",
          "split-anchors", "split-merged-with-next-invert"}) {
      auto other =
          Tokenizer::FromFile(std::string("tests/data/tokenizer/variants/") + name + ".json");
      Require(other.ok(), "a variant tokenizer loads");
      t->others.push_back(*std::move(other));
    }
    return t;
  }();
  return *tokenizers;
}

std::string Stream(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip) {
  StreamingDetokenizer stream(tokenizer, skip);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = stream.Append(id);
    Require(tokenizer_internal::IsValidUtf8(piece), "streamed pieces are whole UTF-8");
    out += piece;
  }
  return out + stream.Finish();
}

void CheckDecoding(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  for (bool skip : {false, true}) {
    const std::string text = tokenizer.Decode(ids, skip);
    Require(tokenizer_internal::IsValidUtf8(text), "decoded text is UTF-8");
    Require(Stream(tokenizer, ids, skip) == text, "streaming equals decoding");
  }
}

void EncodeText(const Tokenizer& tokenizer, std::string_view text, bool round_trips) {
  const bool valid = tokenizer_internal::IsValidUtf8(text);
  auto strict = tokenizer.Encode(text, {.add_special_tokens = true});
  Require(strict.ok() == valid, "ill-formed UTF-8 is rejected, well-formed accepted");
  auto ids =
      tokenizer.Encode(text, {.add_special_tokens = false, .invalid_utf8 = InvalidUtf8::kReplace});
  Require(ids.ok(), "replacement encoding succeeds");
  for (int32_t id : *ids) Require(tokenizer.TokenBytes(id) != nullptr, "encoded ids are tokens");
  if (round_trips) {
    const std::string expected =
        valid ? std::string(text) : tokenizer_internal::ReplaceInvalidUtf8(text);
    Require(tokenizer.Decode(*ids) == expected,
            "decode(encode(text)) == text for the tiny tokenizer");
  }
  CheckDecoding(tokenizer, *ids);
}

}  // namespace

void FuzzOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 4) {
    case 0: {
      auto tokenizer = Tokenizer::FromJson(rest, "fuzz.json");
      if (!tokenizer.ok()) {
        RequireCheckedJsonReads();
        return;
      }
      for (std::string_view text :
           {"", "Hello, world! 123", "  \n\t\xE4\xB8\xAD\xE6\x96\x87 x\xF0\x9F\x98\x80",
            "<s>a</s> <|endoftext|>", "caf\xE9"}) {
        auto ids = (*tokenizer)->Encode(text, {.invalid_utf8 = InvalidUtf8::kReplace});
        if (ids.ok()) CheckDecoding(**tokenizer, *ids);
      }
      std::vector<int32_t> ids;
      for (int32_t id = -2; id < 300; ++id) ids.push_back(id);
      CheckDecoding(**tokenizer, ids);
      return;
    }
    case 1: {
      const TestTokenizers& t = Tokenizers();
      EncodeText(*t.tiny, rest, /*round_trips=*/true);
      EncodeText(*t.others[rest.size() % t.others.size()], rest, /*round_trips=*/false);
      return;
    }
    case 2: {
      const TestTokenizers& t = Tokenizers();
      std::vector<int32_t> ids;
      for (size_t i = 0; i + 1 < rest.size(); i += 2) {
        ids.push_back(static_cast<uint8_t>(rest[i]) | (static_cast<uint8_t>(rest[i + 1]) << 8));
      }
      CheckDecoding(*t.tiny, ids);
      CheckDecoding(*t.others[rest.size() % t.others.size()], ids);
      return;
    }
    case 3: {
      auto regex = tokenizer_internal::Regex::Compile(rest);
      if (!regex.ok()) return;
      std::vector<tokenizer_internal::Regex::Match> matches;
      const std::string text =
          "Hello world 123 \xE4\xB8\xAD\xE6\x96\x87\n\n  x\xF0\x9F\x98\x80y \r\n";
      if (!(*regex)->FindAll(text, &matches).ok()) return;
      uint32_t previous_end = 0;
      for (const auto& m : matches) {
        Require(m.start <= m.end && m.end <= text.size() && m.start >= previous_end,
                "matches are ordered");
        previous_end = m.end;
      }
      return;
    }
  }
}

}  // namespace dsv2::fuzz
