#include "common/model/safetensors_writer.h"

#include <cerrno>
#include <cstdio>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

}  // namespace

absl::Status WriteSafetensors(
    const std::string& path, const std::vector<TensorToWrite>& tensors,
    const std::function<void(size_t index, char* out, int64_t num_bytes)>& fill,
    const std::map<std::string, std::string>& metadata) {
  auto invalid = [&path](auto&&... args) {
    return absl::InvalidArgumentError(absl::StrCat("writing ", path, ": ", args...));
  };

  // ordered_json keeps insertion order, matching the reference writer's
  // layout: metadata, then tensors by offset.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<int64_t> sizes;
  sizes.reserve(tensors.size());
  std::set<std::string> names;
  int64_t offset = 0;
  int64_t largest = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return invalid("tensor name '", t.name, "' is reserved or empty");
    }
    if (!names.insert(t.name).second) return invalid("duplicate tensor name '", t.name, "'");
    const std::optional<int64_t> element_size = SafetensorsElementSize(t.dtype_name);
    if (!element_size)
      return invalid("tensor '", t.name, "' has unknown dtype '", t.dtype_name, "'");
    int64_t bytes = *element_size;
    for (int64_t dim : t.shape) {
      if (dim < 0) return invalid("tensor '", t.name, "' has negative dimension ", dim);
      if (__builtin_mul_overflow(bytes, dim, &bytes)) {
        return invalid("tensor '", t.name, "' is too large");
      }
    }
    int64_t end;
    if (__builtin_add_overflow(offset, bytes, &end)) return invalid("tensors are too large");
    header[t.name] = {{"dtype", t.dtype_name}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
    sizes.push_back(bytes);
    largest = std::max(largest, bytes);
    offset = end;
  }

  std::string text;
  try {
    text = header.dump();  // Compact, as serde_json::to_string writes it.
  } catch (const nlohmann::json::exception&) {
    return invalid("a tensor name or metadata string is not valid UTF-8");
  }
  // The data buffer starts at a multiple of kDataAlignment: with tensors
  // whose sizes are multiples of it (all of a DeepSeek-V2 model's), every
  // tensor is aligned to a cache line, which the kernels read fastest.
  text.append((kDataAlignment - (8 + text.size()) % kDataAlignment) % kDataAlignment, ' ');

  const std::string temp_path = path + ".partial";
  std::unique_ptr<FILE, FileCloser> file(std::fopen(temp_path.c_str(), "wb"));
  if (!file) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", temp_path));
  auto io_error = [&](int error) {
    file.reset();
    std::remove(temp_path.c_str());
    return absl::ErrnoToStatus(error, absl::StrCat("cannot write ", temp_path));
  };

  char length[8];
  for (int i = 0; i < 8; ++i)
    length[i] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  if (std::fwrite(length, 1, 8, file.get()) != 8 ||
      std::fwrite(text.data(), 1, text.size(), file.get()) != text.size()) {
    return io_error(errno);
  }
  // One buffer, sized for the largest tensor, reused for all of them.
  const auto buffer = std::make_unique_for_overwrite<char[]>(static_cast<size_t>(largest));
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (sizes[i] == 0) continue;
    fill(i, buffer.get(), sizes[i]);
    const size_t n = static_cast<size_t>(sizes[i]);
    if (std::fwrite(buffer.get(), 1, n, file.get()) != n) return io_error(errno);
  }
  if (std::fclose(file.release()) != 0) return io_error(errno);
  if (std::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temp_path.c_str());
    return absl::ErrnoToStatus(error, absl::StrCat("cannot rename ", temp_path, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace dsv2
