// Reading and writing float32 arrays in numpy's .npy format, the exchange
// format between this engine and the Python reference (golden activations,
// debugging dumps). Only what that exchange needs is supported: little-endian
// float32 ('<f4') in C order.
//
// Thread safety: the functions keep no state; concurrent calls on different
// paths are safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv2 {

// Writes `data` (product of `shape` floats, C order; an empty shape is a 0-d
// scalar of one element) to `path` byte for byte as numpy.save does: format
// version 1.0 (2.0 only if the header would not fit), descr '<f4',
// fortran_order False, and the header padded with spaces and a final '\n' so
// the data starts at a multiple of 64 bytes. Overwrites an existing file.
absl::Status WriteNpy(const std::string& path, const std::vector<int64_t>& shape,
                      const float* data);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order; product(shape) elements.
};

// Reads a .npy file of format version 1.0, 2.0 or 3.0 holding a '<f4' array
// in C order. Anything else (bad magic, truncated header or data, trailing
// bytes, Fortran order, another dtype, malformed header) is InvalidArgument
// naming the path and the problem; a missing file is NotFound.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

}  // namespace dsv2
