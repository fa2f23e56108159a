// Checkpoint files. The first byte picks what the rest is:
//   even  a safetensors file, opened from memory (a memfd, so the reader's
//         real path runs: stat, open, mmap, header validation);
//   odd   a model.safetensors.index.json, opened as the index of a
//         checkpoint directory holding one valid shard ("s.safetensors":
//         tensors "a" and "b").
// A file that opens must keep the reader's promises: every tensor's bytes
// inside the mapping, sized numel × element size, no two overlapping, names
// sorted and found. Errors must be InvalidArgument naming the file, and come
// from checked accessors.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fuzz/fuzz_target.h"
#include "common/model/checkpoint.h"
#include "common/model/safetensors.h"
#include "common/model/safetensors_writer.h"
#include "common/model/weight_check.h"

namespace dsv2::fuzz {
namespace {

void CheckError(const absl::Status& status, const std::string& path) {
  Require(status.code() == absl::StatusCode::kInvalidArgument ||
              status.code() == absl::StatusCode::kNotFound,
          "malformed files are InvalidArgument (or a missing shard NotFound)");
  Require(status.message().find(path) != std::string_view::npos, "errors name the file");
  RequireCheckedJsonReads();
}

void CheckFile(const SafetensorsFile& file) {
  const char* begin = nullptr;
  std::vector<std::pair<const char*, const char*>> ranges;
  for (size_t i = 0; i < file.tensors().size(); ++i) {
    const TensorInfo& t = file.tensors()[i];
    Require(i == 0 || file.tensors()[i - 1].name < t.name, "tensors are sorted by name");
    Require(file.Find(t.name) == &t, "Find returns the tensor");
    Require(t.num_bytes == t.numel() * *SafetensorsElementSize(t.dtype_name),
            "bytes = numel x element size");
    const char* data = static_cast<const char*>(t.data);
    if (begin == nullptr || data < begin) begin = data;
    if (t.num_bytes > 0) ranges.push_back({data, data + t.num_bytes});
    // Every byte is readable (ASan/SIGSEGV otherwise), and the scan for
    // non-finite values handles every dtype.
    volatile char sink = 0;
    for (int64_t b = 0; b < t.num_bytes; ++b) sink = sink + data[b];
    (void)FindNonFinite(t, 0, t.numel());
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    Require(ranges[i - 1].second <= ranges[i].first, "tensors do not overlap");
  }
}

// The input as a file in memory, at a path the reader opens like any other.
class MemoryFile {
 public:
  explicit MemoryFile(std::string_view bytes) : fd_(memfd_create("fuzz.safetensors", MFD_CLOEXEC)) {
    Require(fd_ >= 0, "memfd_create works");
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = write(fd_, bytes.data() + done, bytes.size() - done);
      Require(n > 0, "writing the memfd works");
      done += static_cast<size_t>(n);
    }
  }
  ~MemoryFile() { close(fd_); }
  std::string path() const { return absl::StrCat("/proc/self/fd/", fd_); }

 private:
  int fd_;
};

// A checkpoint directory of this process with one valid shard; the index
// is rewritten per input.
const std::string& CheckpointDir() {
  static const std::string* dir = [] {
    auto* d = new std::string(absl::StrCat(std::filesystem::temp_directory_path().string(),
                                           "/dsv2_safetensors_fuzz_", getpid()));
    std::filesystem::create_directories(*d);
    const absl::Status written = WriteSafetensors(
        *d + "/s.safetensors", {{"a", "F32", {2}}, {"b", "BF16", {3}}},
        [](size_t, char* out, int64_t n) { std::memset(out, 0, static_cast<size_t>(n)); });
    Require(written.ok(), "the shard is written");
    return d;
  }();
  return *dir;
}

}  // namespace

void FuzzOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) {
    const MemoryFile memory(rest);
    auto file = SafetensorsFile::Open(memory.path());
    if (!file.ok()) return CheckError(file.status(), memory.path());
    Require((*file)->file_size() == static_cast<int64_t>(rest.size()), "the whole file is mapped");
    CheckFile(**file);
    return;
  }
  const std::string& dir = CheckpointDir();
  const std::string index = dir + "/model.safetensors.index.json";
  std::ofstream(index, std::ios::binary | std::ios::trunc).write(rest.data(), rest.size());
  auto checkpoint = Checkpoint::Open(dir);
  if (!checkpoint.ok()) return CheckError(checkpoint.status(), dir);
  for (const std::string& name : checkpoint->TensorNames()) {
    Require(name == "a" || name == "b", "an index lists only the shard's tensors");
    Require(checkpoint->Find(name) != nullptr, "listed tensors are found");
  }
  Require(checkpoint->TensorNames().size() == 2, "an index that opens maps every stored tensor");
}

}  // namespace dsv2::fuzz
