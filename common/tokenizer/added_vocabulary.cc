#include "common/tokenizer/added_vocabulary.h"

#include <algorithm>

#include "common/tokenizer/unicode.h"

namespace dsv2::tokenizer_internal {
namespace {

// The character that ends `text` (valid UTF-8, not empty).
char32_t LastCharacter(std::string_view text) {
  size_t pos = text.size() - 1;
  while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) --pos;
  char32_t c;
  DecodeUtf8(text, pos, &c);
  return c;
}

// Where the run of whitespace that ends `text` starts (Rust's `\s*$`).
size_t TrailingWhiteSpaceStart(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t pos = end - 1;
    while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) --pos;
    char32_t c;
    DecodeUtf8(text, pos, &c);
    if (!IsWhiteSpace(c)) break;
    end = pos;
  }
  return end;
}

// The length of the run of whitespace that starts `text` (Rust's `^\s*`).
size_t LeadingWhiteSpaceLength(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t c;
    const size_t len = DecodeUtf8(text, pos, &c);
    if (!IsWhiteSpace(c)) break;
    pos += len;
  }
  return pos;
}

}  // namespace

TokenMatcher::TokenMatcher(const std::vector<std::string>& patterns) {
  nodes_.emplace_back();
  for (size_t i = 0; i < patterns.size(); ++i) {
    const std::string& p = patterns[i];
    if (p.empty()) continue;
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    int32_t node = 0;
    for (unsigned char b : p) {
      auto& children = nodes_[node].children;
      auto it =
          std::lower_bound(children.begin(), children.end(), b,
                           [](const auto& child, unsigned char v) { return child.first < v; });
      if (it != children.end() && it->first == b) {
        node = it->second;
      } else {
        const int32_t child = static_cast<int32_t>(nodes_.size());
        children.insert(it, {b, child});
        nodes_.emplace_back();
        node = child;
      }
    }
    // With identical patterns the first one wins, as in Hugging Face.
    if (nodes_[node].pattern < 0) nodes_[node].pattern = static_cast<int32_t>(i);
  }
}

int TokenMatcher::LongestAt(std::string_view text, size_t pos, size_t* length) const {
  int found = -1;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& children = nodes_[node].children;
    const auto b = static_cast<unsigned char>(text[i]);
    auto it = std::lower_bound(children.begin(), children.end(), b,
                               [](const auto& child, unsigned char v) { return child.first < v; });
    if (it == children.end() || it->first != b) break;
    node = it->second;
    if (nodes_[node].pattern >= 0) {
      found = nodes_[node].pattern;
      *length = i + 1 - pos;
    }
  }
  return found;
}

void AddedVocabulary::Init(const std::vector<std::string>& normalized_contents) {
  // Hugging Face orders the patterns special tokens first, then the others.
  std::vector<size_t> order;
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].special) order.push_back(i);
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (!tokens_[i].special) order.push_back(i);
  }
  std::vector<std::string> raw, normalized;
  for (size_t i : order) {
    if (tokens_[i].normalized) {
      normalized.push_back(normalized_contents[i]);
      normalized_index_.push_back(i);
    } else {
      raw.push_back(tokens_[i].content);
      raw_index_.push_back(i);
    }
  }
  raw_matcher_ = TokenMatcher(raw);
  normalized_matcher_ = TokenMatcher(normalized);
}

void AddedVocabulary::Split(std::string_view text, bool normalized_pass,
                            std::vector<Segment>* out) const {
  if (text.empty()) return;
  const TokenMatcher& matcher = normalized_pass ? normalized_matcher_ : raw_matcher_;
  const std::vector<size_t>& index = normalized_pass ? normalized_index_ : raw_index_;
  if (matcher.empty()) {
    out->push_back({text, -1});
    return;
  }
  // Hugging Face's find_matches: the matches of a non-overlapping
  // leftmost-longest scan, each widened by lstrip / rstrip, with the text
  // between them.
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!matcher.MayStartWith(static_cast<unsigned char>(text[pos]))) {
      ++pos;
      continue;
    }
    size_t length = 0;
    const int pattern = matcher.LongestAt(text, pos, &length);
    if (pattern < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + length;
    pos = stop;  // The scan resumes after the match, whatever is done with it.
    const AddedToken& token = tokens_[index[pattern]];
    if (token.single_word) {
      const bool space_before =
          start == 0 || !IsWordCharacter(LastCharacter(text.substr(0, start)));
      char32_t next = 0;
      if (stop < text.size()) DecodeUtf8(text, stop, &next);
      const bool space_after = stop == text.size() || !IsWordCharacter(next);
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip)
      start = std::max(TrailingWhiteSpaceStart(text.substr(0, start)), start_offset);
    if (token.rstrip) stop += LeadingWhiteSpaceLength(text.substr(stop));
    if (start_offset < start) out->push_back({text.substr(start_offset, start - start_offset), -1});
    out->push_back({text.substr(start, stop - start), token.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out->push_back({text.substr(start_offset), -1});
}

}  // namespace dsv2::tokenizer_internal
