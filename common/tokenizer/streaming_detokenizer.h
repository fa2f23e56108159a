// Incremental detokenization for streaming generation: feed ids one at a
// time and get back the text they complete, as soon as it is complete UTF-8.
//
//   StreamingDetokenizer stream(tokenizer, /*skip_special_tokens=*/true);
//   for (int32_t id : generated) std::cout << stream.Append(id) << std::flush;
//   std::cout << stream.Finish();
//
// A character split across tokens is held back until its last byte arrives,
// so no output ever ends inside a character. Bytes that can no longer become
// a character are emitted as U+FFFD at once. The concatenation of every
// Append and the final Finish equals Tokenizer::Decode of all the ids — the
// same text as Hugging Face's decode. (Hugging Face's own DecodeStream
// instead withholds any step whose text ends in U+FFFD; docs/tokenizer.md.)
//
// Not thread-safe; one per sequence. The tokenizer must outlive it.
#pragma once

#include <cstdint>
#include <string>

#include "common/tokenizer/tokenizer.h"

namespace dsv2 {

class StreamingDetokenizer {
 public:
  StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // The text completed by `id` (possibly empty). Ids that are no token are
  // ignored, as in Decode; special tokens too when skip_special_tokens.
  std::string Append(int32_t id);
  // The rest: an incomplete trailing character becomes U+FFFD.
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // Bytes of an incomplete character (at most 3).
  bool emitted_any_ = false;
};

}  // namespace dsv2
