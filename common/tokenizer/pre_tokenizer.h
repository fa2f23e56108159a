// The pre-tokenizers of tokenizer.json: `Split` (regex or string pattern,
// every behaviour, `invert`), `Digits`, `ByteLevel` and `Sequence` (kept as
// the flat list of its stages). Each stage splits every piece the previous
// stage produced, as Hugging Face's PreTokenizedString does; empty pieces
// are dropped.
//
// Immutable after construction; safe to use from several threads.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "common/tokenizer/regex.h"

namespace dsv2::tokenizer_internal {

// Where pieces that are not views of the input live during one encode call
// (a ByteLevel prefix space makes new text).
using PieceStorage = std::deque<std::string>;

class PreTokenizerStage {
 public:
  virtual ~PreTokenizerStage() = default;
  // Appends the pieces of `piece` to `out`.
  virtual absl::Status Split(std::string_view piece, PieceStorage* storage,
                             std::vector<std::string_view>* out) const = 0;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Split with a regex (`regex` set) or a literal string pattern.
class SplitStage : public PreTokenizerStage {
 public:
  SplitStage(std::unique_ptr<Regex> regex, std::string literal, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)),
        literal_(std::move(literal)),
        behavior_(behavior),
        invert_(invert) {}
  absl::Status Split(std::string_view piece, PieceStorage* storage,
                     std::vector<std::string_view>* out) const override;

 private:
  std::unique_ptr<Regex> regex_;
  std::string literal_;
  SplitBehavior behavior_;
  bool invert_;
};

// Digits: each numeric character alone (`individual_digits`) or runs of them.
class DigitsStage : public PreTokenizerStage {
 public:
  explicit DigitsStage(bool individual_digits) : individual_(individual_digits) {}
  absl::Status Split(std::string_view piece, PieceStorage* storage,
                     std::vector<std::string_view>* out) const override;

 private:
  bool individual_;
};

// ByteLevel: an optional space before each piece that lacks one and an
// optional split with GPT-2's regex. (The byte-to-character mapping itself
// is done by the BPE model, which reads raw bytes.)
class ByteLevelStage : public PreTokenizerStage {
 public:
  static absl::StatusOr<std::unique_ptr<ByteLevelStage>> Create(bool add_prefix_space,
                                                                bool use_regex);
  absl::Status Split(std::string_view piece, PieceStorage* storage,
                     std::vector<std::string_view>* out) const override;

 private:
  ByteLevelStage() = default;
  bool add_prefix_space_ = false;
  std::unique_ptr<Regex> regex_;  // Set when use_regex.
};

// Applies each piece-splitting rule of a (flattened) Sequence in turn.
class PreTokenizer {
 public:
  PreTokenizer() = default;
  explicit PreTokenizer(std::vector<std::unique_ptr<PreTokenizerStage>> stages)
      : stages_(std::move(stages)) {}
  // Replaces `pieces` by their pre-tokenized pieces. `scratch` is reused.
  absl::Status Run(std::vector<std::string_view>* pieces, PieceStorage* storage,
                   std::vector<std::string_view>* scratch) const;

 private:
  std::vector<std::unique_ptr<PreTokenizerStage>> stages_;
};

}  // namespace dsv2::tokenizer_internal
