#include "common/tokenizer/unicode.h"

#include <algorithm>
#include <iterator>

namespace dsv2::tokenizer_internal {
namespace {

#include "common/tokenizer/unicode_tables.inc"

template <size_t N>
bool InRanges(const CodepointRange (&ranges)[N], char32_t c) {
  const auto it = std::upper_bound(std::begin(ranges), std::end(ranges), c,
                                   [](char32_t v, const CodepointRange& r) { return v < r.first; });
  return it != std::begin(ranges) && c <= std::prev(it)->last;
}

// The length of the well-formed prefix of the sequence at bytes[pos] (Unicode
// table 3-7), and whether it is a complete character. A lead byte that
// starts no sequence gives length 0.
struct SequenceCheck {
  size_t valid_length;
  bool complete;
};

SequenceCheck CheckSequence(std::string_view bytes, size_t pos) {
  const auto b0 = static_cast<unsigned char>(bytes[pos]);
  if (b0 < 0x80) return {1, true};
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // Allowed range of the second byte.
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {0, false};
  }
  size_t len = 1;
  for (; len < need; ++len) {
    if (pos + len >= bytes.size()) return {len, false};
    const auto b = static_cast<unsigned char>(bytes[pos + len]);
    const unsigned char min = len == 1 ? lo : 0x80, max = len == 1 ? hi : 0xBF;
    if (b < min || b > max) return {len, false};
  }
  return {len, true};
}

}  // namespace

bool IsValidUtf8(std::string_view text, size_t* error_offset) {
  size_t pos = 0;
  while (pos < text.size()) {
    // Runs of ASCII are the common case.
    while (pos + 8 <= text.size()) {
      uint64_t word;
      __builtin_memcpy(&word, text.data() + pos, 8);
      if (word & 0x8080808080808080ull) break;
      pos += 8;
    }
    if (pos >= text.size()) break;
    const SequenceCheck check = CheckSequence(text, pos);
    if (!check.complete) {
      if (error_offset != nullptr) *error_offset = pos;
      return false;
    }
    pos += check.valid_length;
  }
  return true;
}

std::string ReplaceInvalidUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const SequenceCheck check = CheckSequence(bytes, pos);
    if (check.complete) {
      out.append(bytes.substr(pos, check.valid_length));
      pos += check.valid_length;
    } else {
      out.append(kReplacementCharacter);
      pos += std::max<size_t>(check.valid_length, 1);
    }
  }
  return out;
}

size_t ConvertiblePrefixLength(std::string_view bytes) {
  // Only the last three bytes can belong to an incomplete character.
  const size_t first = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t start = first; start < bytes.size(); ++start) {
    const auto b = static_cast<unsigned char>(bytes[start]);
    if (b < 0xC2 || b > 0xF4) continue;  // Not a lead byte of a multi-byte character.
    const SequenceCheck check = CheckSequence(bytes, start);
    if (!check.complete && start + check.valid_length == bytes.size()) return start;
  }
  return bytes.size();
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

bool IsWhiteSpace(char32_t c) { return InRanges(kWhiteSpace, c); }
bool IsNumeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return InRanges(kNumeric, c);
}
bool IsWordCharacter(char32_t c) { return InRanges(kWord, c); }

const CategoryTable* FindCategory(std::string_view name) {
  for (const CategoryTable& table : kCategoryTables) {
    if (name == table.name) return &table;
  }
  return nullptr;
}

std::pair<const CodepointRange*, size_t> WordCharacterRanges() { return {kWord, std::size(kWord)}; }
std::pair<const CodepointRange*, size_t> WhiteSpaceRanges() {
  return {kWhiteSpace, std::size(kWhiteSpace)};
}

namespace {

struct ByteLevelTables {
  std::array<std::string, 256> chars;
  std::array<int16_t, 324> bytes;  // Indexed by code point; the largest is U+0143.
};

const ByteLevelTables& GetByteLevelTables() {
  static const ByteLevelTables tables = [] {
    ByteLevelTables t;
    t.bytes.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? static_cast<char32_t>(b) : next++;
      AppendUtf8(c, &t.chars[b]);
      t.bytes[c] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return tables;
}

}  // namespace

const std::array<std::string, 256>& ByteLevelChars() { return GetByteLevelTables().chars; }

int ByteLevelByte(char32_t c) {
  const auto& bytes = GetByteLevelTables().bytes;
  return c < bytes.size() ? bytes[c] : -1;
}

}  // namespace dsv2::tokenizer_internal
