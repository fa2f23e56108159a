// The CPU compute ops of the model, in float32 arithmetic over weights read
// in their stored dtype. Each output element is computed by one thread in a
// fixed order, so results do not depend on the thread count or on how many
// tokens are processed together (a sequence's numbers are the same alone or
// in a batch).
//
// AVX2/FMA paths are chosen at run time where the CPU has them, portable
// loops elsewhere; tests compare both against double-precision sums.
#pragma once

#include <cstdint>

#include "kernels/cpu/weight_matrix.h"

namespace dsv2::cpu {

// y[n, w.rows] = x[n, w.cols] · wᵀ. Rows of x are `x_stride` floats apart
// (w.cols when 0). Threaded over weight rows unless `parallel` is false (for
// callers already inside a ThreadPool::ParallelFor body).
void Linear(const float* x, int64_t n, const WeightMatrix& w, float* y, int64_t x_stride = 0,
            bool parallel = true);

// y[w.cols] += Σ_r a[r] · w[r, :] — the product with the transposed matrix,
// used to absorb W_UK into the query.
void LinearTransposedAccumulate(const float* a, const WeightMatrix& w, float* y);

// Dot product of two float vectors.
float Dot(const float* a, const float* b, int64_t n);

// y[i] += alpha · x[i].
void Axpy(float alpha, const float* x, float* y, int64_t n);

// Row-wise RMSNorm over `n` rows of `dim`: y = w ⊙ x / sqrt(mean(x²) + eps).
// In place when y == x. `x_stride` / `y_stride` default to dim.
void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* y,
             int64_t x_stride = 0, int64_t y_stride = 0);

// In-place softmax over n values (max-subtracted).
void Softmax(float* x, int64_t n);

// out[i] = silu(gate[i]) · up[i].
void SiluMul(const float* gate, const float* up, float* out, int64_t n);

// Row `row` of an embedding matrix, converted to float32.
void EmbeddingRow(const WeightMatrix& table, int64_t row, float* out);

// True when the AVX2/FMA paths are in use.
bool UsingAvx2();

}  // namespace dsv2::cpu
