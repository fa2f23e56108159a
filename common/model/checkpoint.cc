#include "common/model/checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "common/base/huge_pages.h"
#include "common/base/json_reading.h"
#include "common/base/regular_file.h"
#include "common/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";
// DeepSeek-V2's index is a few MB; anything near this is not an index.
constexpr int64_t kMaxIndexBytes = 100'000'000;

// Whether `path` exists; errors other than absence are returned.
absl::StatusOr<bool> Exists(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  return absl::ErrnoToStatus(errno, absl::StrCat("cannot access ", path));
}

// A shard must be a file directly inside the checkpoint directory.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

absl::StatusOr<Checkpoint> Checkpoint::Open(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open checkpoint directory ", dir));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint path ", dir, " is not a directory"));
  }
  Checkpoint checkpoint;
  checkpoint.dir_ = dir;
  const std::string index_path = absl::StrCat(dir, "/", kIndexName);
  const std::string single_path = absl::StrCat(dir, "/", kSingleName);

  ASSIGN_OR_RETURN(const bool has_index, Exists(index_path));
  if (!has_index) {
    ASSIGN_OR_RETURN(const bool has_single, Exists(single_path));
    if (!has_single) {
      return absl::NotFoundError(absl::StrCat("no checkpoint in ", dir, ": looked for ", kIndexName,
                                              " and ", kSingleName));
    }
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
    for (const TensorInfo& t : file->tensors()) {
      checkpoint.tensors_.emplace(t.name, &t);
      checkpoint.total_bytes_ += t.num_bytes;
    }
    checkpoint.files_.push_back(std::move(file));
    return checkpoint;
  }

  // The index: read only if it is a regular file, and bounded.
  ASSIGN_OR_RETURN(const std::string text, ReadRegularFile(index_path, kMaxIndexBytes));
  RETURN_IF_ERROR(
      GuardJsonReader(index_path, [&] { return checkpoint.OpenShards(index_path, text); }));
  return checkpoint;
}

absl::Status Checkpoint::OpenShards(const std::string& index_path, std::string_view text) {
  auto invalid = [&index_path](auto&&... args) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", args...));
  };
  const nlohmann::json root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return invalid("not valid JSON");
  if (!root.is_object()) return invalid("not a JSON object");
  const auto map_it = root.find("weight_map");
  if (map_it == root.end()) return invalid("has no \"weight_map\" object");
  if (!map_it->is_object()) {
    return invalid("has no \"weight_map\" object (got ", JsonTypeName(*map_it), ")");
  }
  if (map_it->empty()) return invalid("\"weight_map\" lists no tensors");
  std::map<std::string, std::string, std::less<>> weight_map;  // tensor -> shard
  std::map<std::string, size_t> shard_index;                   // shard -> files_ index
  for (const auto& [name, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return invalid("weight_map entry for '", name, "' is not a string (got ", JsonTypeName(shard),
                     ")");
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    if (!IsPlainFileName(shard_name)) {
      return invalid("shard name '", shard_name, "' for tensor '", name,
                     "' is not a plain file name in the checkpoint directory");
    }
    weight_map.emplace(name, shard_name);
    shard_index.emplace(shard_name, 0);
  }

  // Each distinct shard once, in name order. Locate every stored tensor.
  std::map<std::string, std::string> stored_in;  // tensor -> shard
  for (auto& [shard_name, index] : shard_index) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(absl::StrCat(dir_, "/", shard_name)));
    for (const TensorInfo& t : file->tensors()) {
      const auto [it, inserted] = stored_in.emplace(t.name, shard_name);
      if (!inserted) {
        return invalid("tensor '", t.name, "' appears in both shards '", it->second, "' and '",
                       shard_name, "'");
      }
    }
    index = files_.size();
    files_.push_back(std::move(file));
  }

  // The shards must hold exactly what the index says, where it says.
  for (const auto& [tensor, shard] : stored_in) {
    const auto it = weight_map.find(tensor);
    if (it == weight_map.end()) {
      return invalid("tensor '", tensor, "' in shard '", shard,
                     "' is not in the weight_map (the index must list every tensor)");
    }
    if (it->second != shard) {
      return invalid("tensor '", tensor, "' is stored in shard '", shard,
                     "' but the weight_map maps it to shard '", it->second, "'");
    }
  }
  for (const auto& [tensor, shard] : weight_map) {
    const TensorInfo* info = files_[shard_index.at(shard)]->Find(tensor);
    if (info == nullptr) {
      return invalid("tensor '", tensor, "' is mapped to shard '", shard,
                     "' but that shard does not contain it");
    }
    tensors_.emplace(tensor, info);
    total_bytes_ += info->num_bytes;
  }
  return absl::OkStatus();
}

const TensorInfo* Checkpoint::Find(std::string_view name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) names.push_back(name);
  return names;
}

int64_t Checkpoint::HugePageBytes() const {
  const std::string smaps = ReadSelfSmaps();  // Once for all the files.
  int64_t bytes = 0;
  for (const auto& file : files_) {
    bytes += FilePmdMappedBytes(smaps, reinterpret_cast<uintptr_t>(file->mapping()),
                                static_cast<uint64_t>(file->file_size()));
  }
  return bytes;
}

int64_t Checkpoint::Prefault(const std::function<void(int64_t, int64_t)>& progress,
                             const std::function<bool(std::string_view)>& want) const {
  constexpr int64_t kPage = 4096;
  int64_t total = 0;
  for (const auto& [name, info] : tensors_) {
    if (!want || want(name)) total += info->num_bytes;
  }
  const int64_t step = std::max<int64_t>(total / 100, 1);
  int64_t done = 0, reported = 0;
  volatile unsigned char sink = 0;
  for (const auto& [name, info] : tensors_) {
    if (want && !want(name)) continue;
    const auto* bytes = static_cast<const unsigned char*>(info->data);
    for (int64_t offset = 0; offset < info->num_bytes; offset += kPage) sink = sink + bytes[offset];
    done += info->num_bytes;
    if (done - reported >= step || done == total) {
      progress(done, total);
      reported = done;
    }
  }
  return total;
}

}  // namespace dsv2
