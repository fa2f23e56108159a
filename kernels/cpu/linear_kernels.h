// Internal to kernels/cpu: the per-ISA implementations behind cpu::Linear and
// the vector helpers. ops.cc picks one set once, from the CPU's features.
//
// Every implementation fixes, per output element, how its dot product is
// accumulated (vector width, accumulator count, k order, tail, horizontal
// reduction); blocking over rows and tokens never changes it. That is what
// makes a token's numbers independent of the batch and of the thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "kernels/cpu/weight_matrix.h"

namespace dsv2::cpu::internal {

// One Linear call: y[n, w.rows] = x[n, w.cols] · wᵀ, x rows `x_stride` apart.
struct LinearArgs {
  const float* x = nullptr;
  int64_t n = 0;
  int64_t x_stride = 0;
  WeightMatrix w;
  float* y = nullptr;
};

// One Linear call on int8 weights (w.dtype kI8, w.scales set). x has been
// quantized by QuantizeQ8, token by token: x_q [n, x_stride] with x_stride
// a multiple of kQ8Block and the columns past w.cols zero, so that every
// block of x can be read whole; x_scales [n, Q8Blocks(w.cols)].
//
// Accumulation structure (per ISA, fixed like the float kernels'): each
// block's integer dot product is exact in int32 lanes, which are converted to
// float32, multiplied by the one float32 product w_scale · x_scale of the
// block and added into float32 accumulator lanes in block order; the lanes
// are summed by the ISA's fixed tree at the end.
struct LinearQ8Args {
  const int8_t* x_q = nullptr;
  const float* x_scales = nullptr;
  int64_t n = 0;
  int64_t x_stride = 0;
  WeightMatrix w;
  float* y = nullptr;
};

// A run of rows handed to a thread, and the run that thread will do next
// (empty when none), so that the body can prefetch its first weights.
struct RowRun {
  int64_t begin = 0, end = 0;
  int64_t next_begin = 0, next_end = 0;
};

// Calls body(run) over [0, rows) in runs of whole `unit`s (the last run ends
// at `rows`), each at least `min_rows` long: on ThreadPool::Default() when
// `parallel`, else on the calling thread in one run. Runs are handed out as
// threads ask for them and shrink as the work runs out ("guided"
// scheduling): long runs first, which keeps the weights streaming
// sequentially, and short ones at the end, so that the threads finish
// together even when a core of this shared machine is slowed down. Each
// thread claims its next run before starting the current one.
void ForRowRuns(int64_t rows, int64_t unit, int64_t min_rows, bool parallel,
                const std::function<void(const RowRun& run)>& body);

// Per-thread scratch (packed or quantized inputs) larger than this after a
// call is released: a long prompt's buffers are not kept for the thread's
// life.
inline constexpr size_t kScratchKeepBytes = size_t{16} << 20;

// The streaming split of a thread's rows [begin, end): S concurrent runs
// of (end - begin) / S rows, tile j taking row j of every run; the last tile
// takes the rows left over after the runs, repeating its last one (whose
// sums the caller does not store).
inline int64_t StreamTileCount(int64_t begin, int64_t end, int s) {
  return (end - begin) / s + ((end - begin) % s != 0);
}
// Fills rows[0, S) with tile j's rows; returns how many are distinct.
template <int S>
int StreamTileRows(int64_t begin, int64_t end, int64_t j, int64_t* rows) {
  const int64_t run = (end - begin) / S;
  if (j < run) {
    for (int r = 0; r < S; ++r) rows[r] = begin + r * run + j;
    return S;
  }
  const int valid = static_cast<int>(end - (begin + S * run));
  for (int r = 0; r < S; ++r) rows[r] = begin + S * run + (r < valid ? r : valid - 1);
  return valid;
}

struct IsaKernels {
  const char* name;
  // The whole Linear; threaded with ForRowRuns when `parallel`.
  void (*linear)(const LinearArgs& args, bool parallel);
  // y[i] += alpha · w[i] for i < n, w in `dtype`.
  void (*axpy)(float alpha, const void* w, DType dtype, int64_t n, float* y);
  float (*dot)(const float* a, const float* b, int64_t n);
  // The whole Linear on int8 weights; threaded with ForRowRuns when `parallel`.
  void (*linear_q8)(const LinearQ8Args& args, bool parallel);
};

// The int8 Linear of each instruction set (linear_q8_avx2.cc,
// linear_q8_avx512.cc, linear_q8_amx.cc); defined only where those kernels
// are built (x86; AMX: x86-64).
void LinearQ8Avx2(const LinearQ8Args& args, bool parallel);
void LinearQ8Avx512(const LinearQ8Args& args, bool parallel);
void LinearQ8Amx(const LinearQ8Args& args, bool parallel);

const IsaKernels& PortableKernels();
// nullptr when built without support for the ISA (never on x86-64 GCC/Clang).
const IsaKernels* Avx2Kernels();
const IsaKernels* Avx512Kernels();
// AVX-512 with the bf16 Linear and the int8 Linear of two tokens or more on
// the AMX tile unit; nullptr where the CPU lacks AMX or the OS does not grant
// its state (linear_amx.cc).
const IsaKernels* AmxKernels();

}  // namespace dsv2::cpu::internal
