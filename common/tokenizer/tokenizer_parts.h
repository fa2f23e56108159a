// The loaded components of a Tokenizer (internal): what tokenizer_json.cc
// builds from a file and tokenizer.cc runs.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/tokenizer/added_vocabulary.h"
#include "common/tokenizer/bpe.h"
#include "common/tokenizer/normalizer.h"
#include "common/tokenizer/pre_tokenizer.h"

namespace dsv2::tokenizer_internal {

// One step of the post-processor: ids put before and after the sequence
// (TemplateProcessing's single template); ByteLevel adds none.
struct PostProcessStep {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
};

struct TokenizerParts {
  std::unique_ptr<BpeModel> model;
  std::optional<AddedVocabulary> added;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  // The model reads raw bytes as ByteLevel characters (a ByteLevel
  // pre-tokenizer is present).
  bool byte_level = false;
  std::vector<PostProcessStep> post_process;
  // Decoding: the bytes of each id (empty optional: no token), whether it is
  // special, and whether tokens are joined with spaces (no decoder).
  std::vector<std::optional<std::string>> token_bytes;
  std::vector<bool> special;
  bool join_with_space = false;
  bool byte_level_decoder = false;
};

}  // namespace dsv2::tokenizer_internal
