// A model directory as published on Hugging Face: either a single
// model.safetensors, or model.safetensors.index.json ({"metadata": {...},
// "weight_map": {tensor name: shard file name}}) with the shard files it
// names. Opening maps every file and cross-checks the index against the
// shards, so afterwards each tensor name resolves to exactly one validated
// TensorInfo.
//
// Ownership: a Checkpoint owns its SafetensorsFiles (and so their mappings);
// the TensorInfo pointers it returns stay valid while it lives, including
// across moves.
//
// Thread safety: immutable after Open; all methods may be called
// concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/safetensors.h"

namespace dsv2 {

class Checkpoint {
 public:
  // Opens the checkpoint in `dir`, preferring the index when both layouts are
  // present. NotFound when the directory holds neither (the message names the
  // files looked for) or a shard is missing; InvalidArgument for a malformed
  // index, a shard name that is not a plain file name, or an index that
  // disagrees with the shards (a mapped tensor missing from its shard, a
  // tensor stored in a shard other than the one it is mapped to or in two
  // shards, a stored tensor absent from the weight_map), and for a model
  // file that is not a regular file (a FIFO, a directory, a device), which
  // is refused before it is opened; errors of SafetensorsFile::Open pass
  // through.
  static absl::StatusOr<Checkpoint> Open(const std::string& dir);

  Checkpoint(Checkpoint&&) = default;
  Checkpoint& operator=(Checkpoint&&) = default;

  // nullptr if absent.
  const TensorInfo* Find(std::string_view name) const;
  // Sorted.
  std::vector<std::string> TensorNames() const;
  // Sum of the tensors' data bytes.
  int64_t total_bytes() const { return total_bytes_; }
  const std::string& dir() const { return dir_; }
  size_t num_files() const { return files_.size(); }

  // Reads the pages of every tensor (or those whose name `want` accepts)
  // into memory, so that the first requests do not wait on the disk; calls
  // progress(bytes_done, bytes_to_read) along the way (at most every 1%).
  // Returns the bytes read. The rest stays on disk until first touched.
  int64_t Prefault(const std::function<void(int64_t done, int64_t total)>& progress,
                   const std::function<bool(std::string_view name)>& want = nullptr) const;

  // Bytes of the files' mappings that the kernel maps with huge pages now
  // (pages read in so far; the mappings ask for them).
  int64_t HugePageBytes() const;

 private:
  Checkpoint() = default;
  // Parses the index `text` and opens the shards it names.
  absl::Status OpenShards(const std::string& index_path, std::string_view text);

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*, std::less<>> tensors_;  // Into files_.
  int64_t total_bytes_ = 0;
};

}  // namespace dsv2
