#include "common/model/safetensors.h"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/json_reading.h"
#include "common/base/regular_file.h"
#include "common/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is used in place");

// A header this large is corruption, not a checkpoint (DeepSeek-V2's largest
// shard header is well under 1 MB); refusing it bounds the JSON parse.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeEntry {
  std::string_view name;
  int64_t size;
};
constexpr std::array<DTypeEntry, 15> kDTypes = {{
    {"BOOL", 1},
    {"U8", 1},
    {"I8", 1},
    {"F8_E5M2", 1},
    {"F8_E4M3", 1},
    {"I16", 2},
    {"U16", 2},
    {"F16", 2},
    {"BF16", 2},
    {"I32", 4},
    {"U32", 4},
    {"F32", 4},
    {"F64", 8},
    {"I64", 8},
    {"U64", 8},
}};

using Json = nlohmann::json;

class Invalid {
 public:
  explicit Invalid(const std::string& path) : path_(path) {}
  template <typename... Args>
  absl::Status operator()(const Args&... args) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", args...));
  }

 private:
  const std::string& path_;
};

// A non-negative JSON integer that fits int64, or nullopt.
std::optional<int64_t> NonNegativeInt(const Json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  const uint64_t v = value.get<uint64_t>();
  if (v > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  return static_cast<int64_t>(v);
}

// Validates one tensor entry of the header and fills `info` (data, file
// excluded) and `begin`, its offset in the data buffer, which starts at file
// byte `data_start`.
absl::Status ParseEntry(const Invalid& invalid, const std::string& name, const Json& entry,
                        int64_t data_start, int64_t file_size, TensorInfo& info, int64_t& begin) {
  const std::string quoted = absl::StrCat("tensor '", name, "'");
  if (!entry.is_object()) {
    return invalid("header entry for ", quoted, " is not an object (got ", JsonTypeName(entry),
                   ")");
  }

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return invalid(quoted, " has no \"dtype\"");
  if (!dtype_it->is_string()) {
    return invalid(quoted, ": \"dtype\" is not a string (got ", JsonTypeName(*dtype_it), ")");
  }
  info.dtype_name = dtype_it->get<std::string>();
  const std::optional<int64_t> element_size = SafetensorsElementSize(info.dtype_name);
  if (!element_size) return invalid(quoted, " has unknown dtype '", info.dtype_name, "'");
  info.dtype = ParseDType(info.dtype_name);

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return invalid(quoted, " has no \"shape\"");
  if (!shape_it->is_array()) {
    return invalid(quoted, ": \"shape\" is not an array (got ", JsonTypeName(*shape_it), ")");
  }
  int64_t numel = 1;
  for (const Json& dim : *shape_it) {
    if (dim.is_number_integer() && !dim.is_number_unsigned()) {
      return invalid(quoted, " has negative dimension ", dim.get<int64_t>(), " in its shape");
    }
    const std::optional<int64_t> size = NonNegativeInt(dim);
    if (!size) {
      return invalid(quoted, ": shape entry ", JsonValueForMessage(dim), " is not an int64");
    }
    info.shape.push_back(*size);
    if (__builtin_mul_overflow(numel, *size, &numel)) {
      return invalid(quoted, ": element count of its shape overflows int64");
    }
  }
  int64_t expected_bytes;
  if (__builtin_mul_overflow(numel, *element_size, &expected_bytes)) {
    return invalid(quoted, ": byte size of its shape overflows int64");
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) return invalid(quoted, " has no \"data_offsets\"");
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return invalid(quoted, ": \"data_offsets\" is not an array of two integers");
  }
  const std::optional<int64_t> first = NonNegativeInt((*offsets_it)[0]);
  const std::optional<int64_t> last = NonNegativeInt((*offsets_it)[1]);
  if (!first || !last) {
    return invalid(quoted, ": \"data_offsets\" [", JsonValueForMessage((*offsets_it)[0]), ", ",
                   JsonValueForMessage((*offsets_it)[1]),
                   "] are not two non-negative int64 values");
  }
  if (*first > *last) {
    return invalid(quoted, ": data_offsets begin ", *first, " is after end ", *last);
  }
  if (*last > file_size - data_start) {
    return invalid("file truncated: ", quoted, " ends at data offset ", *last,
                   ", so the file should be at least ", data_start + *last, " bytes, but it is ",
                   file_size, " bytes");
  }
  if (*last - *first != expected_bytes) {
    return invalid(quoted, " of dtype ", info.dtype_name, " and shape [",
                   absl::StrJoin(info.shape, ", "), "] needs ", expected_bytes,
                   " bytes but its data_offsets [", *first, ", ", *last, "] span ", *last - *first);
  }
  info.num_bytes = expected_bytes;
  begin = *first;
  return absl::OkStatus();
}

}  // namespace

std::optional<int64_t> SafetensorsElementSize(std::string_view dtype_name) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.name == dtype_name) return entry.size;
  }
  return std::nullopt;
}

int64_t TensorInfo::numel() const {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  // A FIFO, directory or device is refused before it is opened for reading
  // (opening a FIFO would block until a writer came).
  ASSIGN_OR_RETURN(const RegularFile regular, RegularFile::Open(path));
  return GuardJsonReader(path, [&] { return Map(regular); });
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Map(const RegularFile& regular) {
  const std::string& path = regular.path();
  const Invalid invalid(path);
  const int64_t size = regular.size();
  if (size < 8) {
    return invalid("file is ", size, " bytes, shorter than the 8-byte header length field");
  }
  void* mapping = mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_PRIVATE, regular.fd(), 0);
  if (mapping == MAP_FAILED) return absl::ErrnoToStatus(errno, absl::StrCat("cannot mmap ", path));
  // Ask for 2 MiB pages: where the kernel keeps the file in huge page-cache
  // folios (ext4 and xfs on recent kernels read ahead in them for such a
  // mapping), a decode step's gigabyte of weights costs 512 times fewer TLB
  // entries (batch-1 decode of lite-4: 29.4-29.7 tokens/s against
  // 26.3-26.7 on 4 KiB pages). A hint: refused or ignored, nothing changes.
  madvise(mapping, static_cast<size_t>(size), MADV_HUGEPAGE);
  // From here the mapping is owned (and unmapped on error) by `file`.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->file_size_ = size;
  const char* base = static_cast<const char*>(mapping);

  uint64_t header_len;
  std::memcpy(&header_len, base, sizeof(header_len));
  const uint64_t after_length = static_cast<uint64_t>(size) - 8;
  if (header_len == 0) return invalid("header length is 0");
  if (header_len > kMaxHeaderBytes) {
    return invalid("header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes,
                   " bytes (corrupt file?)");
  }
  if (header_len > after_length) {
    return invalid("header length ", header_len, " is larger than the ", after_length,
                   " bytes that follow the length field (file truncated or corrupt)");
  }
  const char* header = base + 8;
  if (header[0] != '{') return invalid("header does not start with '{'");
  // Non-throwing parse; the lexer also rejects ill-formed UTF-8 in strings,
  // and the parser is iterative, so hostile nesting cannot overflow the stack.
  const Json root = Json::parse(header, header + header_len, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return invalid("header is not valid UTF-8 JSON");
  if (!root.is_object()) return invalid("header is not a JSON object");

  const int64_t data_start = 8 + static_cast<int64_t>(header_len);
  std::vector<int64_t> begins;  // Parallel to tensors_.
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return invalid("\"__metadata__\" is not an object (got ", JsonTypeName(entry), ")");
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return invalid("\"__metadata__\" value for key '", key, "' is not a string (got ",
                         JsonTypeName(value), ")");
        }
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    TensorInfo info;
    int64_t begin = 0;
    RETURN_IF_ERROR(ParseEntry(invalid, name, entry, data_start, size, info, begin));
    info.name = name;
    info.file = path;
    info.data = base + data_start + begin;
    file->tensors_.push_back(std::move(info));
    begins.push_back(begin);
  }

  // Overlap check: walk the ranges by start, remembering which earlier tensor
  // reaches furthest. Zero-size tensors occupy no bytes and overlap nothing.
  std::vector<size_t> order(begins.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::pair(begins[a], file->tensors_[a].num_bytes) <
           std::pair(begins[b], file->tensors_[b].num_bytes);
  });
  std::optional<size_t> furthest;
  int64_t furthest_end = 0;
  for (size_t i : order) {
    const TensorInfo& t = file->tensors_[i];
    if (t.num_bytes == 0) continue;
    if (furthest && begins[i] < furthest_end) {
      const TensorInfo& other = file->tensors_[*furthest];
      return invalid("tensors '", other.name, "' [", begins[*furthest], ", ", furthest_end,
                     ") and '", t.name, "' [", begins[i], ", ", begins[i] + t.num_bytes,
                     ") overlap in the data buffer");
    }
    if (begins[i] + t.num_bytes > furthest_end) {
      furthest = i;
      furthest_end = begins[i] + t.num_bytes;
    }
  }

  // nlohmann's object is a std::map, so this is normally sorted already.
  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, static_cast<size_t>(file_size_));
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  const auto it = std::lower_bound(
      tensors_.begin(), tensors_.end(), name,
      [](const TensorInfo& t, std::string_view n) { return std::string_view(t.name) < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

}  // namespace dsv2
