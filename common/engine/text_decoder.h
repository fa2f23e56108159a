// What the engine needs of a tokenizer: turning generated token ids into
// text as they arrive. Kept to this interface so the engine does not depend
// on how tokenizers are loaded.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace dsv2 {

class IncrementalTextDecoder {
 public:
  virtual ~IncrementalTextDecoder() = default;
  // Text completed by `token` (possibly empty while a UTF-8 character is
  // still incomplete); never part of a character.
  virtual std::string Append(int32_t token) = 0;
  // What is left when the output ends (an incomplete character as U+FFFD).
  virtual std::string Finish() = 0;
};

class TextDecoderFactory {
 public:
  virtual ~TextDecoderFactory() = default;
  virtual std::unique_ptr<IncrementalTextDecoder> NewDecoder(bool skip_special_tokens) const = 0;
  // Whether the tokenizer has token `id`. A model's vocab_size may exceed
  // its tokenizer (DeepSeek-V2: 102,400 rows for 100,015 tokens); the engine
  // never samples the rows the tokenizer lacks.
  virtual bool Decodes(int32_t id) const = 0;
};

}  // namespace dsv2
