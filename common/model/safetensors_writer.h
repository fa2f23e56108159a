// Writing safetensors files, laid out as the reference safetensors library
// lays them out (but for the header's padding, below), for tools that
// convert or synthesize checkpoints and for tests. Tensor bytes are produced
// one tensor at a time by a callback, so a multi-GB file streams through a
// buffer the size of its largest tensor.
//
// Thread safety: no shared state; concurrent calls on different paths are
// safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dsv2 {

// Where the data buffer of a written file starts: a cache line, so that
// a tensor after tensors of whole cache lines is aligned in the mapping.
inline constexpr int64_t kDataAlignment = 64;

struct TensorToWrite {
  std::string name;
  std::string dtype_name;  // A safetensors dtype: "BF16", "F32", "I64", ...
  std::vector<int64_t> shape;
};

// Writes `tensors` to `path`: the 8-byte header length, the compact JSON
// header ("__metadata__" first when `metadata` is non-empty, then the tensors
// in the given order with consecutive data_offsets in that order), padded with
// spaces so that the data starts at a multiple of kDataAlignment bytes (the
// reference library pads to 8; readers take any padding), then each
// tensor's bytes. fill(index, out, num_bytes) must write all num_bytes bytes
// of tensors[index] to `out`; it is called once per tensor in order, except
// for tensors of zero bytes. The file is written under a temporary name and
// renamed into place, so `path` never holds a partial file.
//
// Errors: InvalidArgument for an unknown dtype, a duplicate, empty or
// reserved ("__metadata__") name, a negative dimension, or a name that is not
// valid UTF-8; I/O failures carry the errno text.
absl::Status WriteSafetensors(
    const std::string& path, const std::vector<TensorToWrite>& tensors,
    const std::function<void(size_t index, char* out, int64_t num_bytes)>& fill,
    const std::map<std::string, std::string>& metadata = {});

}  // namespace dsv2
