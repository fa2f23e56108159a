// Encoding and decoding with a loaded tokenizer (loading is in
// tokenizer_json.cc).
#include "common/tokenizer/tokenizer.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/tokenizer/tokenizer_parts.h"
#include "common/tokenizer/unicode.h"

namespace dsv2 {

using tokenizer_internal::PieceStorage;
using tokenizer_internal::Segment;

Tokenizer::Tokenizer(std::unique_ptr<tokenizer_internal::TokenizerParts> parts)
    : parts_(std::move(parts)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       const EncodeOptions& options) const {
  std::string replaced;
  size_t bad_offset = 0;
  if (!tokenizer_internal::IsValidUtf8(text, &bad_offset)) {
    if (options.invalid_utf8 == InvalidUtf8::kError) {
      return absl::InvalidArgumentError(absl::StrCat(
          "text is not valid UTF-8 (ill-formed byte sequence at offset ", bad_offset, ")"));
    }
    replaced = tokenizer_internal::ReplaceInvalidUtf8(text);
    text = replaced;
  }
  if (text.size() >= std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("text of ", text.size(), " bytes is too long to tokenize"));
  }
  const tokenizer_internal::TokenizerParts& p = *parts_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Segment> raw_segments, segments;
  PieceStorage storage;
  std::vector<std::string_view> pieces, scratch;
  std::string normalized;

  // 1. Added tokens that match the raw text; 2. the normalized text between
  // them and the added tokens that match it; 3. pre-tokenization and BPE.
  if (p.added) {
    p.added->Split(text, /*normalized_pass=*/false, &raw_segments);
  } else if (!text.empty()) {
    raw_segments.push_back({text, -1});
  }
  for (const Segment& raw : raw_segments) {
    if (raw.token >= 0) {
      ids.push_back(raw.token);
      continue;
    }
    std::string_view body = raw.text;
    if (!p.normalizer.IsIdentity()) {
      RETURN_IF_ERROR(p.normalizer.Normalize(body, &normalized));
      body = normalized;
    }
    segments.clear();
    if (p.added) {
      p.added->Split(body, /*normalized_pass=*/true, &segments);
    } else if (!body.empty()) {
      segments.push_back({body, -1});
    }
    for (const Segment& segment : segments) {
      if (segment.token >= 0) {
        ids.push_back(segment.token);
        continue;
      }
      pieces.assign(1, segment.text);
      RETURN_IF_ERROR(p.pre_tokenizer.Run(&pieces, &storage, &scratch));
      for (std::string_view piece : pieces)
        RETURN_IF_ERROR(p.model->Tokenize(piece, p.byte_level, &ids));
    }
  }
  if (options.add_special_tokens) {
    for (const auto& step : p.post_process) {
      ids.insert(ids.begin(), step.prefix.begin(), step.prefix.end());
      ids.insert(ids.end(), step.suffix.begin(), step.suffix.end());
    }
  }
  return ids;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  size_t count = 0;
  for (int32_t id : ids) {
    const std::string* token = TokenBytes(id);
    if (token == nullptr || (skip_special_tokens && IsSpecial(id))) continue;
    if (parts_->join_with_space && count > 0) bytes += ' ';
    bytes += *token;
    ++count;
  }
  if (parts_->join_with_space) return bytes;
  return tokenizer_internal::ReplaceInvalidUtf8(bytes);
}

const std::string* Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= VocabSize() || !parts_->token_bytes[id]) return nullptr;
  return &*parts_->token_bytes[id];
}

bool Tokenizer::JoinsWithSpace() const { return parts_->join_with_space; }

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < VocabSize() && parts_->special[id];
}

int32_t Tokenizer::VocabSize() const { return static_cast<int32_t>(parts_->token_bytes.size()); }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (parts_->added) {
    for (const auto& t : parts_->added->tokens()) {
      if (t.content == token) return t.id;
    }
  }
  return parts_->model->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (parts_->added) {
    for (const auto& t : parts_->added->tokens()) {
      if (t.id == id) return t.content;
    }
  }
  if (const std::string* token = parts_->model->IdToToken(id)) return *token;
  return std::nullopt;
}

}  // namespace dsv2
