// A read-only view of a weight matrix as stored in a checkpoint: nn.Linear
// layout [rows = out_features, cols = in_features], row-major, in its stored
// dtype. Kernels read bf16/f16 weights directly and compute in float32; int8
// weights (dsv2-int8, common/tensor/q8.h) come with their float32 scales,
// one per block of kQ8Block columns of each row.
#pragma once

#include <cstdint>

#include "common/tensor/dtype.h"
#include "common/tensor/q8.h"

namespace dsv2 {

struct WeightMatrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;  // Not owned; the checkpoint mapping outlives it.
  // kI8 only: [rows, Q8Blocks(cols)], row-major. Not owned.
  const float* scales = nullptr;
  // A routed expert's matrix: a decode step hands it only the few tokens
  // routed to it, not the whole batch. Where the CPU has a kernel that
  // multiplies faster but streams slower (AMX), such matrices stay on the
  // streaming vector kernel. Fixed per matrix, whatever the token count, so
  // each matrix keeps one accumulation structure at every batch size.
  bool routed = false;

  const char* row_ptr(int64_t row) const {
    return static_cast<const char*>(data) + row * cols * DTypeSize(dtype);
  }
  // The scales of row `row` (kI8 only).
  const float* row_scales(int64_t row) const { return scales + row * Q8Blocks(cols); }
  // Rows [first, first + count) as a matrix of their own.
  WeightMatrix RowSlice(int64_t first, int64_t count) const {
    return WeightMatrix{dtype, count, cols, row_ptr(first),
                        scales == nullptr ? nullptr : row_scales(first), routed};
  }
};

}  // namespace dsv2
