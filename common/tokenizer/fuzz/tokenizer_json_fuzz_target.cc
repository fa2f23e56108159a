// tokenizer.json loading: the whole input is the file. Loading must end in
// a tokenizer or an error whose message comes from a checked accessor (never
// from an exception caught at the file boundary). A tokenizer that loads
// must then encode and decode without breaking its contracts: ids it
// produces are tokens, decoded text is UTF-8, streaming equals decoding.
#include <string>
#include <string_view>
#include <vector>

#include "common/fuzz/fuzz_target.h"
#include "common/tokenizer/streaming_detokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/unicode.h"

namespace dsv2::fuzz {
namespace {

void CheckDecoding(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  for (bool skip : {false, true}) {
    const std::string text = tokenizer.Decode(ids, skip);
    Require(tokenizer_internal::IsValidUtf8(text), "decoded text is UTF-8");
    StreamingDetokenizer stream(tokenizer, skip);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Append(id);
    streamed += stream.Finish();
    Require(streamed == text, "streaming equals decoding");
  }
}

}  // namespace

void FuzzOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto tokenizer = Tokenizer::FromJson(text, "fuzz.json");
  if (!tokenizer.ok()) {
    Require(tokenizer.status().code() == absl::StatusCode::kInvalidArgument,
            "a bad tokenizer.json is InvalidArgument");
    Require(tokenizer.status().message().substr(0, 11) == "fuzz.json: ", "errors name the file");
    RequireCheckedJsonReads();
    return;
  }
  const Tokenizer& t = **tokenizer;
  Require(t.VocabSize() >= 0 && t.VocabSize() <= (1 << 21), "ids are bounded");
  for (std::string_view sample :
       {std::string_view(""), std::string_view("Hello, world! 123 hi\n\n  x"),
        std::string_view("\xE4\xB8\xAD\xE6\x96\x87 caf\xC3\xA9 \xF0\x9F\x98\x80"),
        std::string_view("<s>a</s> <unk> <|endoftext|>")}) {
    for (bool special : {false, true}) {
      auto ids = t.Encode(sample, {.add_special_tokens = special});
      if (!ids.ok()) continue;  // E.g. a byte with no token and no byte fallback.
      // (A post-processor may add any id the file lists, token or not.)
      for (int32_t id : *ids) {
        Require(special || t.TokenBytes(id) != nullptr, "encoded ids are tokens");
      }
      CheckDecoding(t, *ids);
    }
  }
  std::vector<int32_t> ids;
  for (int32_t id = -3; id < 300; ++id) ids.push_back(id);
  ids.push_back(t.VocabSize());
  ids.push_back(t.VocabSize() - 1);
  CheckDecoding(t, ids);
}

}  // namespace dsv2::fuzz
