// Zero-copy reader for the safetensors format in which Hugging Face publishes
// checkpoints: an 8-byte little-endian header length N, N bytes of JSON
// header, then the data buffer. The header maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
// start of the data buffer) plus an optional "__metadata__" string map.
//
// Open validates the whole header against the file before anything is
// handed out, so a TensorInfo's bytes are always inside the mapping and sized
// exactly numel x element size, and no two tensors share bytes. Every
// malformed input is an error status; none can crash the reader.
//
// Ownership: a SafetensorsFile owns a read-only private mapping of the file;
// TensorInfo::data points into it and is valid while the SafetensorsFile
// lives. Truncating the file on disk while it is mapped raises SIGBUS on
// access, as with any mmap; published checkpoints are not modified in place.
//
// Thread safety: immutable after Open; all methods may be called
// concurrently.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/regular_file.h"
#include "common/tensor/dtype.h"

namespace dsv2 {

// Bytes per element of a safetensors dtype string (the spec's BOOL, U8, I8,
// F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64);
// nullopt for any other string. Shared by the reader and the writer.
std::optional<int64_t> SafetensorsElementSize(std::string_view dtype_name);

struct TensorInfo {
  std::string name;
  std::string dtype_name;      // As written in the header: "BF16", "F32", "I64", ...
  std::optional<DType> dtype;  // Set when the engine computes with it (BF16, F16, F32, I8).
  std::vector<int64_t> shape;
  // Into the file mapping; valid while the file is open. The data buffer
  // starts 8-byte aligned when the header is padded as the reference library
  // pads it (64-byte aligned in files of WriteSafetensors), and the reference
  // library orders tensors by decreasing element size, so published files
  // are aligned to their elements; the reader does not require it, so
  // consumers that need alignment must check.
  const void* data = nullptr;
  int64_t num_bytes = 0;
  std::string file;  // Path of the file holding it (for error messages).

  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. A missing file is NotFound; a path that is
  // not a regular file (a FIFO, a directory, a device) and every format
  // problem are InvalidArgument naming the file and, where one is at fault,
  // the tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr if absent.
  const TensorInfo* Find(std::string_view name) const;
  // Sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  int64_t file_size() const { return file_size_; }
  // The whole file as mapped (Map asks for huge pages for it).
  const void* mapping() const { return mapping_; }

 private:
  SafetensorsFile() = default;
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Map(const RegularFile& file);

  std::string path_;
  void* mapping_ = nullptr;  // mmap of the whole file; munmap'd by the destructor.
  int64_t file_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace dsv2
