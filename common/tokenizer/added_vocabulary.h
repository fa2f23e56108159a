// The added and special tokens of tokenizer.json, split out of the text
// before normalization and pre-tokenization, as Hugging Face's
// AddedVocabulary does: leftmost-longest matching; `single_word` tokens only
// between non-word characters; `lstrip` / `rstrip` tokens swallow the
// whitespace beside them; tokens with `normalized` false are matched in the
// raw text, the others in each normalized stretch between those.
//
// Immutable after construction; safe to use from several threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv2::tokenizer_internal {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A stretch of text (token < 0) or an added token and the text it covers.
struct Segment {
  std::string_view text;
  int32_t token = -1;
};

// Leftmost-longest matching of a set of byte strings, non-overlapping.
class TokenMatcher {
 public:
  // `patterns[i]` is reported as index i; empty patterns are ignored.
  explicit TokenMatcher(const std::vector<std::string>& patterns);
  bool empty() const { return nodes_.size() == 1; }
  // The longest pattern starting at text[pos]: its index, or -1; `*length`
  // receives its length.
  int LongestAt(std::string_view text, size_t pos, size_t* length) const;
  bool MayStartWith(unsigned char b) const { return first_byte_[b]; }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;  // Sorted by byte.
    int32_t pattern = -1;
  };
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
};

class AddedVocabulary {
 public:
  // `normalize` turns a token's content into its normalized form (for
  // tokens with `normalized` true).
  template <typename NormalizeFn>
  AddedVocabulary(std::vector<AddedToken> tokens, NormalizeFn normalize);

  // Splits `text` on the tokens of one pass: raw (normalized == false)
  // or normalized. Empty stretches are dropped.
  void Split(std::string_view text, bool normalized_pass, std::vector<Segment>* out) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  void Init(const std::vector<std::string>& normalized_contents);
  std::vector<AddedToken> tokens_;
  // Per pass: the matcher and, per pattern, the index into tokens_.
  TokenMatcher raw_matcher_{{}}, normalized_matcher_{{}};
  std::vector<size_t> raw_index_, normalized_index_;
};

template <typename NormalizeFn>
AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens, NormalizeFn normalize)
    : tokens_(std::move(tokens)) {
  std::vector<std::string> normalized_contents;
  normalized_contents.reserve(tokens_.size());
  for (const AddedToken& t : tokens_)
    normalized_contents.push_back(t.normalized ? normalize(t.content) : "");
  Init(normalized_contents);
}

}  // namespace dsv2::tokenizer_internal
