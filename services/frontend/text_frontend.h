// What the public API needs of a model's tokenizer: text and chat input to
// token ids, and generated ids back to text. A model directory without
// tokenizer.json has no TextFrontend; its clients send token ids.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/text_decoder.h"

namespace dsv2 {

struct ChatTurn {
  std::string role;  // "system", "user" or "assistant".
  std::string content;
};

class TextFrontend : public TextDecoderFactory {
 public:
  // Token ids of `text`, with BOS where the model's tokenizer adds it.
  virtual absl::StatusOr<std::vector<int32_t>> EncodeText(std::string_view text) const = 0;
  // Token ids of a conversation through the model's chat template, ending
  // with the generation prompt. Unknown roles and an empty conversation are
  // InvalidArgument.
  virtual absl::StatusOr<std::vector<int32_t>> EncodeChat(
      const std::vector<ChatTurn>& messages) const = 0;
};

}  // namespace dsv2
