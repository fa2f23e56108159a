// A read-only view of a weight matrix as stored in a checkpoint: nn.Linear
// layout [rows = out_features, cols = in_features], row-major, in its stored
// dtype. Kernels read bf16/f16 weights directly and compute in float32.
#pragma once

#include <cstdint>

#include "common/tensor/dtype.h"

namespace dsv2 {

struct WeightMatrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;  // Not owned; the checkpoint mapping outlives it.

  const char* row_ptr(int64_t row) const {
    return static_cast<const char*>(data) + row * cols * DTypeSize(dtype);
  }
  // Rows [first, first + count) as a matrix of their own.
  WeightMatrix RowSlice(int64_t first, int64_t count) const {
    return WeightMatrix{dtype, count, cols, row_ptr(first)};
  }
};

}  // namespace dsv2
