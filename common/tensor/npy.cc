#include "common/tensor/npy.h"

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dsv2 {
namespace {

// The on-disk data is little-endian and is copied as is.
static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kArrayAlign = 64;           // numpy's ARRAY_ALIGN.
constexpr size_t kGrowthAxisMaxDigits = 21;  // numpy's GROWTH_AXIS_MAX_DIGITS.

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;

absl::Status Invalid(const std::string& path, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", problem));
}

// The header as numpy's _write_array_header builds it: the repr of the dict
// with sorted keys, then room for the first axis to grow to 21 digits.
std::string HeaderDict(const std::vector<int64_t>& shape) {
  std::string shape_repr = "(" + absl::StrJoin(shape, ", ");
  if (shape.size() == 1) shape_repr += ",";  // Python's one-element tuple.
  shape_repr += ")";
  std::string dict =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': ", shape_repr, ", }");
  if (!shape.empty()) {
    const size_t digits = std::to_string(shape[0]).size();
    if (digits < kGrowthAxisMaxDigits) dict.append(kGrowthAxisMaxDigits - digits, ' ');
  }
  return dict;
}

// Parses the Python dict literal of a .npy header. Accepts exactly the keys
// numpy requires; values are the literal forms numpy writes.
class HeaderParser {
 public:
  explicit HeaderParser(std::string_view text) : text_(text) {}

  // On success fills `shape`; returns the problem otherwise.
  std::optional<std::string> Parse(std::vector<int64_t>& shape) {
    std::optional<std::string> descr;
    std::optional<bool> fortran_order;
    bool have_shape = false;
    SkipSpace();
    if (!Consume('{')) return "header is not a dict literal";
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      std::string key;
      if (!ParseString(key)) return Error("expected a quoted key");
      SkipSpace();
      if (!Consume(':')) return Error("expected ':'");
      SkipSpace();
      if (key == "descr") {
        if (descr) return "duplicate key 'descr'";
        std::string value;
        if (!ParseString(value)) return Error("descr is not a string");
        descr = value;
      } else if (key == "fortran_order") {
        if (fortran_order) return "duplicate key 'fortran_order'";
        if (ConsumeWord("True")) {
          fortran_order = true;
        } else if (ConsumeWord("False")) {
          fortran_order = false;
        } else {
          return Error("fortran_order is not True or False");
        }
      } else if (key == "shape") {
        if (have_shape) return "duplicate key 'shape'";
        if (auto problem = ParseShape(shape)) return problem;
        have_shape = true;
      } else {
        return absl::StrCat("unexpected header key '", key, "'");
      }
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume('}')) break;
      return Error("expected ',' or '}'");
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after the header dict");
    if (!descr || !fortran_order || !have_shape) {
      return "header lacks one of 'descr', 'fortran_order', 'shape'";
    }
    if (*descr != "<f4") {
      return absl::StrCat("dtype '", *descr, "' is not supported (only '<f4', float32)");
    }
    if (*fortran_order) return "fortran_order True is not supported (only C order)";
    return std::nullopt;
  }

 private:
  std::string Error(const char* what) const {
    return absl::StrCat("malformed header at offset ", pos_, ": ", what);
  }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r' || text_[pos_] == '\t')) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool ConsumeWord(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  // A '...' or "..." literal without escapes (numpy never writes any).
  bool ParseString(std::string& out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) return false;
    const char quote = text_[pos_];
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) return false;
    out.assign(text_.substr(pos_ + 1, end - pos_ - 1));
    if (out.find('\\') != std::string::npos) return false;
    pos_ = end + 1;
    return true;
  }
  // A tuple of non-negative ints: "()", "(5,)", "(2, 3)", "(2, 3,)".
  std::optional<std::string> ParseShape(std::vector<int64_t>& shape) {
    shape.clear();
    if (!Consume('(')) return Error("shape is not a tuple");
    bool trailing_comma = false;
    while (true) {
      SkipSpace();
      if (Consume(')')) break;
      if (!shape.empty() && !trailing_comma) return Error("expected ',' in shape");
      if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9') {
        return Error("shape entry is not a non-negative integer");
      }
      int64_t value = 0;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
        if (__builtin_mul_overflow(value, int64_t{10}, &value) ||
            __builtin_add_overflow(value, int64_t{text_[pos_] - '0'}, &value)) {
          return Error("shape entry overflows int64");
        }
        ++pos_;
      }
      shape.push_back(value);
      SkipSpace();
      trailing_comma = Consume(',');
    }
    // In Python "(5)" is an int, not a tuple; numpy rejects it too.
    if (shape.size() == 1 && !trailing_comma) return "shape is not a tuple: missing ','";
    return std::nullopt;
  }

  std::string_view text_;
  size_t pos_ = 0;
};

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  FilePtr file(std::fopen(path.c_str(), "rb"));
  if (!file) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  std::string contents;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) contents.append(buffer, n);
  if (std::ferror(file.get()))
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
  return contents;
}

}  // namespace

absl::Status WriteNpy(const std::string& path, const std::vector<int64_t>& shape,
                      const float* data) {
  int64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return Invalid(path, absl::StrCat("negative dimension ", dim, " in shape"));
    if (__builtin_mul_overflow(numel, dim, &numel) || numel > (INT64_MAX >> 2)) {
      return Invalid(path, "shape has too many elements");
    }
  }
  if (numel > 0 && data == nullptr) return Invalid(path, "data is null");

  // numpy's _wrap_header: the prefix (magic, version, length field) plus the
  // header and its final '\n' is padded to a multiple of 64 with spaces.
  const std::string dict = HeaderDict(shape);
  std::string prefix;
  for (int major : {1, 2}) {
    const size_t length_field = major == 1 ? 2 : 4;
    const size_t unpadded = kMagicLen + 2 + length_field + dict.size() + 1;
    const size_t header_len = dict.size() + 1 + (kArrayAlign - unpadded % kArrayAlign);
    if (major == 1 && header_len > 0xffff) continue;  // Needs format 2.0.
    prefix.assign(kMagic, kMagicLen);
    prefix += static_cast<char>(major);
    prefix += '\0';
    for (size_t i = 0; i < length_field; ++i) prefix += static_cast<char>(header_len >> (8 * i));
    prefix += dict;
    prefix.append(header_len - dict.size() - 1, ' ');
    prefix += '\n';
    break;
  }

  FilePtr file(std::fopen(path.c_str(), "wb"));
  if (!file) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  const size_t data_bytes = static_cast<size_t>(numel) * sizeof(float);
  if (std::fwrite(prefix.data(), 1, prefix.size(), file.get()) != prefix.size() ||
      (data_bytes > 0 && std::fwrite(data, 1, data_bytes, file.get()) != data_bytes)) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
  }
  if (std::fclose(file.release()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  auto contents = ReadWholeFile(path);
  if (!contents.ok()) return contents.status();
  const std::string_view bytes = *contents;

  if (bytes.size() < kMagicLen + 2 ||
      bytes.substr(0, kMagicLen) != std::string_view(kMagic, kMagicLen)) {
    return Invalid(path, "not a .npy file (bad magic)");
  }
  const int major = static_cast<uint8_t>(bytes[6]);
  const int minor = static_cast<uint8_t>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    return Invalid(path, absl::StrCat("unsupported .npy format version ", major, ".", minor));
  }
  const size_t length_field = major == 1 ? 2 : 4;
  const size_t header_start = kMagicLen + 2 + length_field;
  if (bytes.size() < header_start) return Invalid(path, "truncated before the header length");
  uint64_t header_len = 0;
  for (size_t i = 0; i < length_field; ++i) {
    header_len |= uint64_t{static_cast<uint8_t>(bytes[kMagicLen + 2 + i])} << (8 * i);
  }
  if (header_len > bytes.size() - header_start) {
    return Invalid(path, absl::StrCat("truncated header: ", header_len, " bytes declared, ",
                                      bytes.size() - header_start, " present"));
  }

  NpyArray array;
  HeaderParser parser(bytes.substr(header_start, header_len));
  if (auto problem = parser.Parse(array.shape)) return Invalid(path, *problem);

  int64_t numel = 1;
  for (int64_t dim : array.shape) {
    if (__builtin_mul_overflow(numel, dim, &numel) || numel > (INT64_MAX >> 2)) {
      return Invalid(path, "shape has too many elements");
    }
  }
  const uint64_t data_bytes = static_cast<uint64_t>(numel) * sizeof(float);
  const uint64_t present = bytes.size() - header_start - header_len;
  if (present != data_bytes) {
    return Invalid(path, absl::StrCat("shape (", absl::StrJoin(array.shape, ", "), ") needs ",
                                      data_bytes, " data bytes but the file has ", present));
  }
  array.data.resize(static_cast<size_t>(numel));
  if (data_bytes > 0) {
    std::memcpy(array.data.data(), bytes.data() + header_start + header_len, data_bytes);
  }
  return array;
}

}  // namespace dsv2
