// UTF-8 and Unicode helpers for the tokenizer: validation and the lossy
// conversion Hugging Face applies when decoding (each maximal invalid
// subsequence becomes one U+FFFD, as Rust's String::from_utf8_lossy and
// Python's errors="replace" do), the GPT-2 byte-to-character table of the
// ByteLevel pre-tokenizer and decoder, and the Unicode sets that Hugging Face
// `tokenizers` uses (Unicode 16, measured by
// tools/golden/make_tokenizer_unicode_tables.py).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv2::tokenizer_internal {

inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// Whether `text` is well-formed UTF-8; if not, `*error_offset` (when given)
// receives the byte offset of the first ill-formed sequence.
bool IsValidUtf8(std::string_view text, size_t* error_offset = nullptr);

// `bytes` with every maximal ill-formed subsequence replaced by U+FFFD.
std::string ReplaceInvalidUtf8(std::string_view bytes);

// The length of the longest prefix of `bytes` that can be converted now: all
// of it except a trailing sequence that is a valid start of a character but
// incomplete (at most 3 bytes), which later bytes may complete.
size_t ConvertiblePrefixLength(std::string_view bytes);

// Appends the UTF-8 encoding of `code_point` to `out`.
void AppendUtf8(char32_t code_point, std::string* out);

// Decodes the character starting at text[pos] of valid UTF-8 text; returns
// its length in bytes.
inline size_t DecodeUtf8(std::string_view text, size_t pos, char32_t* code_point) {
  const auto b = static_cast<unsigned char>(text[pos]);
  if (b < 0x80) {
    *code_point = b;
    return 1;
  }
  const size_t len = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  char32_t c = b & (0x7F >> len);
  for (size_t i = 1; i < len; ++i)
    c = (c << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  *code_point = c;
  return len;
}

// The length of the character starting with lead byte `b` of valid UTF-8.
inline size_t Utf8Length(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

// Unicode White_Space: what Oniguruma's and Rust's `\s` match.
bool IsWhiteSpace(char32_t c);
// Rust's char::is_numeric (general categories Nd, Nl, No): the digits of
// the Digits pre-tokenizer.
bool IsNumeric(char32_t c);
// Oniguruma's and Rust's Unicode `\w` (Alphabetic, marks, Nd, Pc, joiners):
// the word characters of an added token's `single_word`.
bool IsWordCharacter(char32_t c);

// A general-category table: either the code points beyond PCRE2's Unicode 14
// class (`full` false) or the whole category (`full` true).
struct CodepointRange {
  char32_t first;
  char32_t last;
};
struct CategoryTable {
  const char* name;
  bool full;
  const CodepointRange* ranges;
  size_t count;
};
// The table of general category `name` ("L", "Nd", ...), or nullptr.
const CategoryTable* FindCategory(std::string_view name);
// The `\w` set as ranges (for regex translation).
std::pair<const CodepointRange*, size_t> WordCharacterRanges();
std::pair<const CodepointRange*, size_t> WhiteSpaceRanges();

// GPT-2's reversible byte-to-character map: printable Latin-1 bytes map to
// themselves, the others to U+0100 upwards. ByteLevelChar(b) is the UTF-8
// text of the character for byte b.
const std::array<std::string, 256>& ByteLevelChars();
// The byte of a ByteLevel character, or -1 if `c` is not one.
int ByteLevelByte(char32_t c);

}  // namespace dsv2::tokenizer_internal
