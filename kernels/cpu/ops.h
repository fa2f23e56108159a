// The CPU compute ops of the model, in float32 arithmetic over weights read
// in their stored dtype. Each output element is computed by one thread in a
// fixed order, so results do not depend on the thread count or on how many
// tokens are processed together (a sequence's numbers are the same alone or
// in a batch).
//
// The instruction set is chosen once, at first use, from the CPU's features:
// AMX (the widest: bf16 weights on the tile unit but for routed experts'
// matrices, the rest AVX-512), AVX-512, AVX2/FMA, or portable loops; each
// fixes its own accumulation structure per matrix, and tests compare every
// one against double-precision sums. Linear never repacks the
// checkpoint's weights (they are memory-mapped tensors): it converts them to
// float32 as it reads them, in registers or, for many tokens, into a small
// per-thread buffer that the tokens share (AMX copies them, unconverted,
// into such a buffer). Int8 weights (dsv2-int8, common/tensor/q8.h) are
// multiplied in integers: Linear quantizes x per token in blocks of 32 as it
// starts, each block's dot product is exact in int32 and is scaled by
// w_scale · x_scale into a float32 sum. Design and measured figures:
// docs/performance.md, "CPU kernels" and "8-bit weights".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/weight_matrix.h"

namespace dsv2::cpu {

// y[n, w.rows] = x[n, w.cols] · wᵀ. Rows of x are `x_stride` floats apart
// (w.cols when 0). Threaded over weight rows unless `parallel` is false (for
// callers already inside a ThreadPool::ParallelFor body).
void Linear(const float* x, int64_t n, const WeightMatrix& w, float* y, int64_t x_stride = 0,
            bool parallel = true);

// y[t][w.cols] += Σ_r a[t][r] · w[r, :] for n tokens (a rows a_stride
// apart, y rows y_stride apart) — the product with the transposed matrix,
// used to absorb W_UK into the query. Each row of w is read once for all
// tokens; a token's additions are the same (rows in order) for any n. Int8
// rows are dequantized (q · scale) and added in float32.
void LinearTransposedAccumulate(const float* a, int64_t n, int64_t a_stride, const WeightMatrix& w,
                                float* y, int64_t y_stride);

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

// True when the AVX2/FMA or AVX-512 paths are in use.
bool UsingAvx2();

// The instruction set in use: "amx" (AVX-512 with the bf16 weights of
// every matrix but routed experts', and int8 weights with more than three
// tokens, on the AMX tile unit), "avx512", "avx2" or "portable". The default
// is the widest the CPU has; DSV2_CPU_ISA names another one it has.
const char* KernelIsa();

// Switches every op to `isa` if this CPU has it (false otherwise). For tests
// and benchmarks; not to be called while other threads run ops.
bool SetKernelIsa(std::string_view isa);

// Every instruction set this CPU can run, the one in use first.
std::vector<std::string> KernelIsas();

// Runs the ops on `isa` for the scope's life (SetKernelIsa's caveat holds).
class ScopedKernelIsa {
 public:
  explicit ScopedKernelIsa(std::string_view isa) : previous_(KernelIsa()) { SetKernelIsa(isa); }
  ~ScopedKernelIsa() { SetKernelIsa(previous_); }
  ScopedKernelIsa(const ScopedKernelIsa&) = delete;
  ScopedKernelIsa& operator=(const ScopedKernelIsa&) = delete;

 private:
  std::string previous_;
};

}  // namespace dsv2::cpu
