// AVX-512 implementations of the Linear kernels.
//
// Accumulation structure of every output (fixed for this ISA): one 16-lane
// float32 accumulator; k advances in steps of 16 from 0, the last partial step
// zero in both operands past k; then the 16 lanes are summed by one fixed tree
// (lane i + lane i+8, then i+4, i+2, i+1; Reduce16 and Reduce4x16 are the same
// tree). Both code paths below perform exactly these operations on each
// output, so they agree bit for bit and any tiling over rows and tokens is
// free:
//
//  - streaming (up to 39 tokens: decode, expert groups, small batches).
//    Each thread reads its rows as concurrent sequential runs (one row of
//    each per tile), converting bf16/f16 to float32 in registers, with a
//    software prefetch 1 KiB ahead in every run: 8 runs with the tokens in
//    groups of up to 3 for 1-3 tokens (decode), 4 runs with groups of up to
//    6 from 4 tokens on (the routed experts of a batch), so that each weight
//    load serves twice the tokens there. Several tokens are first copied
//    one cache line further apart than a row, off the 4 KiB multiples that
//    put all their lines of a step in one L1 set.
//  - panel (40 tokens or more: prefill, large batches). Compute bound. x is packed
//    once per call; each thread converts a block of weight rows to float32
//    (in the first token tile that uses it) into a per-thread buffer that the
//    other token tiles reuse. A register-tiled micro-kernel (4 rows × 6 tokens:
//    24 accumulators, 4 weight vectors, 1 input vector of the 32 registers)
//    runs over k blocks of up to 1024 columns, its accumulators parked
//    between blocks. Both packed operands are laid out [k step][rows or
//    tokens][16], one sequential stream each (rows of the original matrices
//    are 1-40 KiB apart and would fall in the same few L1 sets). The weights
//    of the next block are prefetched into L2 while the current one computes.

#if defined(__x86_64__) || defined(__i386__)

#include <algorithm>
#include <array>
#include <cstdlib>
#include <utility>

#include "common/base/thread_pool.h"
#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/linear_kernels.h"

#define DSV2_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define DSV2_AVX512_INLINE DSV2_AVX512 inline __attribute__((always_inline))

namespace dsv2::cpu::internal {
namespace {

constexpr int kRows = 4;    // Weight rows per register tile (both paths).
constexpr int kTokens = 6;  // Most tokens per register tile: 4·6 + 4 + 1 ≤ 32 registers.

// Streaming path: each thread reads its rows as kStreams concurrent runs (1-3
// tokens; half as many from 4 on), and prefetches each run this many bytes
// ahead of its loads.
constexpr int kStreams = 8;
constexpr int64_t kStreamPrefetchBytes = 1024;

// Panel path (measured on Sapphire Rapids, 48 KiB L1d and 2 MiB L2 per core):
// k in even blocks of at most 64 steps of 16 (1024 columns), so that a tile's
// packed tokens (6 × 4 KiB) stay in L1 while the converted weight rows
// stream by from L2; blocks of tokens and of converted rows sized for L2.
constexpr int64_t kMaxBlockSteps = 64;
constexpr int64_t kTokenBlockBytes = 768 << 10;
constexpr int64_t kRowBlockBytes = 256 << 10;

// From this many tokens on, the panel path is faster: below it the weights
// are streamed once and converted per group of up to 6 tokens (cold 1408 x
// 2048 bf16 on the AMX guest: streaming / panel 629 / 666 us at 24 tokens,
// 852 / 921-953 at 36, 1018 / 1021 at 42, 1187 / 1134 at 48).
constexpr int64_t kPanelMinTokens = 40;

// ---- Loads and the fixed reduction ------------------------------------------

// 16 consecutive weights from element i, as float32.
template <DType kType>
DSV2_AVX512_INLINE __m512 Load16(const void* base, int64_t i) {
  if constexpr (kType == DType::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    const __m256i half = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (kType == DType::kF16) {
      return _mm512_cvtph_ps(half);
    } else {  // bf16 is the top half of a float32.
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
    }
  }
}

// As Load16, lanes outside `mask` zero (and not read).
template <DType kType>
DSV2_AVX512_INLINE __m512 Load16Masked(const void* base, int64_t i, __mmask16 mask) {
  if constexpr (kType == DType::kF32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + i);
  } else {
    const __m256i half = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i);
    if constexpr (kType == DType::kF16) {
      return _mm512_cvtph_ps(half);
    } else {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
    }
  }
}

DSV2_AVX512_INLINE __mmask16 TailMask(int64_t count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}

// The fixed tree over one accumulator: lane i + lane i+8, then i+4, i+2, i+1.
DSV2_AVX512_INLINE float Reduce16(__m512 v) {
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// The same tree over four accumulators at once; lane j of the result is
// Reduce16 of the j-th argument (the same additions of the same values).
DSV2_AVX512_INLINE __m128 Reduce4x16(__m512 a, __m512 b, __m512 c, __m512 d) {
  // [a_s8, b_s8] with a_s8[i] = a[i] + a[i+8]; likewise [c_s8, d_s8].
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
  // [a_s4, b_s4, c_s4, d_s4] with a_s4[i] = a_s8[i] + a_s8[i+4].
  const __m512 s4 = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
  // Lane group g holds element g of each argument's s4.
  const __m512 by_element = _mm512_permutexvar_ps(
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), s4);
  // s2[i] = s4[i] + s4[i+2], then s2[0] + s2[1].
  const __m256 s2 =
      _mm256_add_ps(_mm512_castps512_ps256(by_element),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(by_element), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(s2), _mm256_extractf128_ps(s2, 1));
}

// Writes the sums of a 4-row tile for one token: y[row + r] for r < valid.
DSV2_AVX512_INLINE void StoreRows(float* y, __m128 sums, int valid) {
  if (valid == kRows) {
    _mm_storeu_ps(y, sums);
  } else {
    _mm_mask_storeu_ps(y, static_cast<__mmask8>((1u << valid) - 1u), sums);
  }
}

// ---- Streaming path ---------------------------------------------------------
//
// A thread's rows are split into kStreams contiguous runs that are read at
// the same time, one row of each per tile: the core keeps kStreams long
// sequential streams in flight, which gets more bandwidth out of the memory
// system than one stream or a few short ones (a 1 KiB row ends before the
// hardware prefetcher has caught up with it).

template <DType kType, int S, int T>
DSV2_AVX512_INLINE void StreamStep(const void* const* w, const float* x, int64_t x_stride,
                                   int64_t i, __m512 (&acc)[S][T]) {
  __m512 xv[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_ps(x + t * x_stride + i);
#pragma GCC unroll 16
  for (int r = 0; r < S; ++r) {
    const __m512 wv = Load16<kType>(w[r], i);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
  }
}

// y[r][t · y_stride] = dot(row w[r], x token t) for S rows (the first
// `valid` stored) and T tokens.
template <DType kType, int S, int T>
DSV2_AVX512 void StreamTile(const void* const* w, float* const* y, int valid, const float* x,
                            int64_t x_stride, int64_t y_stride, int64_t k) {
  __m512 acc[S][T];
#pragma GCC unroll 16
  for (int r = 0; r < S; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  constexpr int64_t kSize = DTypeSize(kType);
  const int64_t full = k & ~int64_t{15};
  int64_t i = 0;
  for (; i + 32 <= full; i += 32) {
    // A run is contiguous, so near the end of a row this reaches into the
    // run's next row.
#pragma GCC unroll 16
    for (int r = 0; r < S; ++r) {
      const char* p = static_cast<const char*>(w[r]) + i * kSize + kStreamPrefetchBytes;
      _mm_prefetch(p, _MM_HINT_T0);
      if constexpr (kType == DType::kF32) _mm_prefetch(p + 64, _MM_HINT_T0);
    }
    StreamStep<kType, S, T>(w, x, x_stride, i, acc);
    StreamStep<kType, S, T>(w, x, x_stride, i + 16, acc);
  }
  if (i < full) {
    StreamStep<kType, S, T>(w, x, x_stride, i, acc);
    i += 16;
  }
  if (i < k) {
    const __mmask16 mask = TailMask(k - i);
    __m512 xv[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_ps(mask, x + t * x_stride + i);
#pragma GCC unroll 16
    for (int r = 0; r < S; ++r) {
      const __m512 wv = Load16Masked<kType>(w[r], i, mask);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 4
    for (int g = 0; g < S; g += 4) {
      alignas(16) float sums[4];
      _mm_store_ps(sums, Reduce4x16(acc[g][t], acc[g + 1][t], acc[g + 2][t], acc[g + 3][t]));
      for (int r = g; r < std::min(g + 4, valid); ++r) y[r][t * y_stride] = sums[r - g];
    }
  }
}

using StreamTileFn = void (*)(const void* const*, float* const*, int, const float*, int64_t,
                              int64_t, int64_t);

// StreamTile<kType, S, T + 1> at index T, for each T of the sequence.
template <DType kType, int S, int... T>
constexpr std::array<StreamTileFn, sizeof...(T)> StreamTiles(std::integer_sequence<int, T...>) {
  return {StreamTile<kType, S, T + 1>...};
}

// Rows [row_begin, row_end) for all tokens, S rows per tile and the tokens
// in groups of at most G (S · G ≤ 24 accumulators), as even as possible.
template <DType kType, int S, int G>
void StreamRowsIn(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t groups = (a.n + G - 1) / G;
  const int64_t tiles = StreamTileCount(row_begin, row_end, S);
  for (int64_t j = 0; j < tiles; ++j) {
    int64_t rows[S];
    const int valid = StreamTileRows<S>(row_begin, row_end, j, rows);
    const void* w[S];
    for (int r = 0; r < S; ++r) w[r] = a.w.row_ptr(rows[r]);
    for (int64_t g = 0, t = 0; g < groups; ++g) {
      const int64_t width = (a.n - t + (groups - g) - 1) / (groups - g);
      float* y[S];
      for (int r = 0; r < S; ++r) y[r] = a.y + t * a.w.rows + rows[r];
      const float* x = a.x + t * a.x_stride;
      const int64_t xs = a.x_stride, ys = a.w.rows, k = a.w.cols;
      static constexpr auto kTiles = StreamTiles<kType, S>(std::make_integer_sequence<int, G>());
      kTiles[width - 1](w, y, valid, x, xs, ys, k);
      t += width;
    }
  }
}

template <DType kType>
void StreamRows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  if (a.n <= 3) return StreamRowsIn<kType, kStreams, 3>(a, row_begin, row_end);
  return StreamRowsIn<kType, 4, 6>(a, row_begin, row_end);
}

// ---- Panel path -------------------------------------------------------------

// A per-thread float buffer, 64-byte aligned, grown on demand and kept
// (unless above a limit) for the next call.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(data_); }

  float* Get(int64_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      const int64_t bytes = (floats * 4 + 63) & ~int64_t{63};
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      capacity_ = floats;
    }
    return data_;
  }

  // Frees the buffer if it holds more than `floats` (a long prompt's packed
  // tokens should not stay allocated for the life of the thread).
  void TrimTo(int64_t floats) {
    if (capacity_ > floats) {
      std::free(data_);
      data_ = nullptr;
      capacity_ = 0;
    }
  }

 private:
  float* data_ = nullptr;
  int64_t capacity_ = 0;
};

thread_local Scratch tls_packed_x, tls_packed_w, tls_parked;

struct PanelPlan {
  int64_t steps;         // ceil(k / 16).
  int64_t block_steps;   // k steps per block (even blocks of at most kMaxBlockSteps).
  int64_t block_tokens;  // Tokens per block (a multiple of kTokens).
  int64_t block_rows;    // Rows per block (a multiple of kRows).
};

PanelPlan PlanPanel(const LinearArgs& a) {
  PanelPlan plan;
  plan.steps = (a.w.cols + 15) / 16;
  const int64_t k_blocks = (plan.steps + kMaxBlockSteps - 1) / kMaxBlockSteps;
  plan.block_steps = (plan.steps + k_blocks - 1) / k_blocks;
  const int64_t vector_bytes = plan.block_steps * 64;  // One packed row or token.
  const int64_t all_tokens = (a.n + kTokens - 1) / kTokens * kTokens;
  plan.block_tokens = std::min(
      all_tokens, std::max<int64_t>(1, kTokenBlockBytes / vector_bytes / kTokens) * kTokens);
  plan.block_rows = std::max<int64_t>(1, kRowBlockBytes / vector_bytes / kRows) * kRows;
  // Threads take whole row blocks; a small matrix gets smaller blocks, at
  // least 6 per thread, so that the last one does not leave a thread idle.
  const int64_t threads = ThreadPool::Default().num_threads();
  const int64_t balanced = (a.w.rows / (6 * threads) + kRows - 1) / kRows * kRows;
  plan.block_rows = std::min(plan.block_rows, std::max<int64_t>(kRows, balanced));
  return plan;
}

// Tokens are cut into register tiles of kTokens, except that a remainder of
// 1-3 is merged with the tile before it and the pair split evenly (7 = 4 + 3,
// 8 = 4 + 4, 9 = 5 + 4): narrow tiles load more per multiply-add.
struct TokenTile {
  int64_t start;
  int64_t width;
};

TokenTile TileOf(int64_t n, int64_t token) {
  const int64_t full = n / kTokens * kTokens, rest = n - full;
  if (rest == 0 || rest >= 4 || full == 0 || token < full - kTokens) {
    const int64_t start = token / kTokens * kTokens;
    return {start, std::min<int64_t>(kTokens, n - start)};
  }
  const int64_t first = full - kTokens, wide = (kTokens + rest + 1) / 2;
  if (token < first + wide) return {first, wide};
  return {first + wide, kTokens + rest - wide};
}

// Copies tokens [t_begin, t_end) of x into their register tiles: the tile
// starting at token s, of width w, at packed + s·steps·16, laid out
// [step][w][16]; k past the end is zero.
DSV2_AVX512 void PackTokens(const LinearArgs& a, int64_t steps, int64_t t_begin, int64_t t_end,
                            float* packed) {
  const int64_t k = a.w.cols, full = k / 16;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const TokenTile tile = TileOf(a.n, t);
    float* dst = packed + tile.start * steps * 16 + (t - tile.start) * 16;
    const float* src = a.x + t * a.x_stride;
    for (int64_t s = 0; s < full; ++s) {
      _mm512_store_ps(dst + s * tile.width * 16, _mm512_loadu_ps(src + s * 16));
    }
    if (full < steps) {
      _mm512_store_ps(dst + full * tile.width * 16,
                      _mm512_maskz_loadu_ps(TailMask(k - full * 16), src + full * 16));
    }
  }
}

// Walks the cache lines of the weights a block will convert (rows × a k
// range), prefetching them into L2 a few at a time while another block
// computes, so that memory and arithmetic overlap.
struct BlockPrefetcher {
  const char* row = nullptr;  // The current row's first byte of the range.
  int64_t row_stride = 0;
  int64_t row_lines = 0;  // Lines per row (one more than the range may need).
  int64_t line = 0;
  int64_t rows_left = 0;
  int per_step = 0;  // Lines per micro-kernel step.

  DSV2_AVX512_INLINE void Step() {
    for (int i = 0; i < per_step && rows_left > 0; ++i) {
      _mm_prefetch(row + 64 * line, _MM_HINT_T1);
      if (++line == row_lines) {
        line = 0;
        row += row_stride;
        --rows_left;
      }
    }
  }
};

// Where a tile's weights come from: the packed float32 block, or (the first
// token tile of a block) the weight rows themselves, converted in registers
// and written to the packed block on the way for the other token tiles.
struct TileWeights {
  float* packed = nullptr;       // [step][kRows][16] of this row tile.
  const void* rows[kRows] = {};  // Weight rows (convert only); a partial tile repeats its last.
  int64_t s0 = 0;                // First k step of the block (convert only).
  int64_t k = 0;                 // Columns of w (convert only).
};

// The weights of step s of a tile: from the packed block, or converted from
// the rows (`kTail`: the last, partial step, masked) and stored to the block.
template <DType kType, bool kConvert, bool kTail = false>
DSV2_AVX512_INLINE void LoadWeights(const void* const* rows, float* packed, int64_t s, int64_t i,
                                    int64_t k, __m512 (&wv)[kRows]) {
  packed += s * kRows * 16;
  if constexpr (!kConvert) {
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) wv[r] = _mm512_load_ps(packed + r * 16);
  } else {
    if constexpr (kTail) {
      const __mmask16 mask = TailMask(k - i);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) wv[r] = Load16Masked<kType>(rows[r], i, mask);
    } else {
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) wv[r] = Load16<kType>(rows[r], i);
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) _mm512_store_ps(packed + r * 16, wv[r]);
  }
}

template <int T>
DSV2_AVX512_INLINE void TileFmas(const __m512 (&wv)[kRows], const float* x,
                                 __m512 (&acc)[kRows][T]) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    const __m512 xv = _mm512_load_ps(x + t * 16);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
  }
}

// A tile of 4 rows × T packed tokens over `steps` k steps. The accumulators
// start at zero if `first`, else from `parked`; they are parked there again
// unless y is given, in which case the sums go to y[t][r] (the first `valid`
// rows).
template <DType kType, bool kConvert, int T>
DSV2_AVX512 void PanelTile(const TileWeights& w, const float* x, int64_t steps, bool first,
                           float* parked, float* y, int64_t y_stride, int valid,
                           BlockPrefetcher& prefetcher) {
  __m512 acc[kRows][T];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[r][t] = first ? _mm512_setzero_ps() : _mm512_load_ps(parked + (r * T + t) * 16);
    }
  }
  BlockPrefetcher pf = prefetcher;  // In registers for the loop.
  float* packed = w.packed;
  const void* rows[kRows];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) rows[r] = w.rows[r];
  // Steps with all 16 columns inside the matrix (converting needs a mask past them).
  const int64_t full = kConvert ? std::min(steps, w.k / 16 - w.s0) : steps;
  for (int64_t s = 0; s < full; ++s) {
    pf.Step();
    __m512 wv[kRows];
    LoadWeights<kType, kConvert>(rows, packed, s, (w.s0 + s) * 16, w.k, wv);
    TileFmas<T>(wv, x + s * T * 16, acc);
  }
  for (int64_t s = full; s < steps; ++s) {  // At most one.
    __m512 wv[kRows];
    LoadWeights<kType, kConvert, true>(rows, packed, s, (w.s0 + s) * 16, w.k, wv);
    TileFmas<T>(wv, x + s * T * 16, acc);
  }
  prefetcher = pf;
  if (y == nullptr) {
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) _mm512_store_ps(parked + (r * T + t) * 16, acc[r][t]);
    }
    return;
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    StoreRows(y + t * y_stride, Reduce4x16(acc[0][t], acc[1][t], acc[2][t], acc[3][t]), valid);
  }
}

template <DType kType, bool kConvert>
void RunPanelTile(int64_t width, const TileWeights& w, const float* x, int64_t steps, bool first,
                  float* parked, float* y, int64_t y_stride, int valid,
                  BlockPrefetcher& prefetcher) {
  using Tile = void (*)(const TileWeights&, const float*, int64_t, bool, float*, float*, int64_t,
                        int, BlockPrefetcher&);
  static constexpr Tile kTiles[kTokens + 1] = {nullptr,
                                               PanelTile<kType, kConvert, 1>,
                                               PanelTile<kType, kConvert, 2>,
                                               PanelTile<kType, kConvert, 3>,
                                               PanelTile<kType, kConvert, 4>,
                                               PanelTile<kType, kConvert, 5>,
                                               PanelTile<kType, kConvert, 6>};
  kTiles[width](w, x, steps, first, parked, y, y_stride, valid, prefetcher);
}

// Rows [row_begin, row_end) of y for all tokens, from x packed by PackTokens.
// Blocks go token block → row block → k block; within a block, each token
// tile stays in L1 while the row tiles stream by from L2.
template <DType kType>
void PanelRows(const LinearArgs& a, const PanelPlan& plan, const float* packed_x,
               const RowRun& run) {
  const int64_t row_begin = run.begin, row_end = run.end;
  const int64_t steps = plan.steps;
  float* packed_w = tls_packed_w.Get(plan.block_rows * plan.block_steps * 16);
  constexpr int64_t kTileFloats = kRows * kTokens * 16;
  const int64_t max_tiles = plan.block_tokens / kTokens + 1;  // Per token block.
  float* parked = tls_parked.Get((plan.block_rows / kRows) * max_tiles * kTileFloats);
  // A token block ends with the tile that holds its last token.
  auto token_block_end = [&](int64_t t0) {
    const TokenTile tile = TileOf(a.n, std::min(a.n, t0 + plan.block_tokens) - 1);
    return tile.start + tile.width;
  };
  struct Block {
    int64_t t0, m0, s0;
  };
  // The block after `b`, or t0 == n when there is none.
  auto next_block = [&](Block b) {
    if ((b.s0 += plan.block_steps) < steps) return b;
    b.s0 = 0;
    if ((b.m0 += plan.block_rows) < row_end) return b;
    b.m0 = row_begin;
    b.t0 = token_block_end(b.t0);
    return b;
  };
  for (Block b{0, row_begin, 0}; b.t0 < a.n; b = next_block(b)) {
    const int64_t rows = std::min(plan.block_rows, row_end - b.m0);
    const int64_t row_tiles = (rows + kRows - 1) / kRows;
    const int64_t t_end = token_block_end(b.t0);
    const int64_t count = std::min(plan.block_steps, steps - b.s0);
    const bool first = b.s0 == 0, last = b.s0 + count == steps;

    // The weights of the block after this one (the first of this thread's
    // next run after the last), prefetched while this one computes.
    BlockPrefetcher prefetcher;
    Block next = next_block(b);
    int64_t next_rows = std::min(plan.block_rows, row_end - next.m0);
    if (next.t0 >= a.n) {
      next = Block{0, run.next_begin, 0};
      next_rows = std::min(plan.block_rows, run.next_end - run.next_begin);
    }
    if (next_rows > 0) {
      const int64_t next_count = std::min(plan.block_steps, steps - next.s0);
      prefetcher.row = a.w.row_ptr(next.m0) + next.s0 * 16 * DTypeSize(kType);
      prefetcher.row_stride = a.w.cols * DTypeSize(kType);
      prefetcher.row_lines = (next_count * 16 * DTypeSize(kType) + 63) / 64 + 1;
      prefetcher.rows_left = next_rows;
      const int64_t block_steps = row_tiles * ((t_end - b.t0 + kTokens - 1) / kTokens) * count;
      prefetcher.per_step = static_cast<int>(
          (prefetcher.rows_left * prefetcher.row_lines + block_steps - 1) / block_steps);
    }

    int64_t tile_index = 0;
    for (int64_t token = b.t0; token < t_end; ++tile_index) {
      const TokenTile tile = TileOf(a.n, token);
      const float* x = packed_x + tile.start * steps * 16 + b.s0 * tile.width * 16;
      for (int64_t rt = 0; rt < row_tiles; ++rt) {
        const int valid = static_cast<int>(std::min<int64_t>(kRows, rows - rt * kRows));
        TileWeights w;
        w.packed = packed_w + rt * kRows * count * 16;
        float* acc = parked + (rt * max_tiles + tile_index) * kTileFloats;
        float* y = last ? a.y + tile.start * a.w.rows + b.m0 + rt * kRows : nullptr;
        if (tile_index == 0) {
          for (int r = 0; r < kRows; ++r) {
            w.rows[r] = a.w.row_ptr(b.m0 + rt * kRows + std::min(r, valid - 1));
          }
          w.s0 = b.s0;
          w.k = a.w.cols;
          RunPanelTile<kType, true>(tile.width, w, x, count, first, acc, y, a.w.rows, valid,
                                    prefetcher);
        } else {
          RunPanelTile<kType, false>(tile.width, w, x, count, first, acc, y, a.w.rows, valid,
                                     prefetcher);
        }
      }
      token = tile.start + tile.width;
    }
  }
}

// ---- Dispatch -----------------------------------------------------------------

template <DType kType>
void LinearTyped(const LinearArgs& a, bool parallel) {
  if (a.n < kPanelMinTokens) {
    // At least ~32K multiply-adds per run, so that small products stay on one thread.
    const int64_t min_rows = 32768 / std::max<int64_t>(1, a.w.cols * a.n);
    LinearArgs b = a;
    if (a.n > 1) {
      // Tokens one cache line further apart than a row: rows of a multiple
      // of 4 KiB (hidden 2048: 8 KiB) would put every token's line of a
      // step in the same L1 set as the others' and the weight rows'.
      b.x_stride = (a.w.cols + 15) / 16 * 16 + 16;
      float* x = tls_packed_x.Get(a.n * b.x_stride);
      for (int64_t t = 0; t < a.n; ++t)
        std::copy_n(a.x + t * a.x_stride, a.w.cols, x + t * b.x_stride);
      b.x = x;
    }
    return ForRowRuns(a.w.rows, kStreams, min_rows, parallel,
                      [&](const RowRun& run) { StreamRows<kType>(b, run.begin, run.end); });
  }
  const PanelPlan plan = PlanPanel(a);
  // The calling thread's buffer; pool threads read it while this thread waits.
  float* packed_x = tls_packed_x.Get(a.n * plan.steps * 16);
  ForRowRuns(a.n, kTokens, 4 * kTokens, parallel,
             [&](const RowRun& run) { PackTokens(a, plan.steps, run.begin, run.end, packed_x); });
  ForRowRuns(a.w.rows, plan.block_rows, plan.block_rows, parallel,
             [&](const RowRun& run) { PanelRows<kType>(a, plan, packed_x, run); });
  tls_packed_x.TrimTo(int64_t{16} << 20);  // 64 MiB.
}

void Linear(const LinearArgs& a, bool parallel) {
  switch (a.w.dtype) {
    case DType::kBF16:
      return LinearTyped<DType::kBF16>(a, parallel);
    case DType::kF16:
      return LinearTyped<DType::kF16>(a, parallel);
    case DType::kF32:
      return LinearTyped<DType::kF32>(a, parallel);
    case DType::kI8:  // Never: ops.cc sends int8 weights to linear_q8.
      return;
  }
}

template <DType kType>
DSV2_AVX512 void AxpyTyped(float alpha, const void* w, int64_t n, float* y) {
  const __m512 a = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, Load16<kType>(w, i), _mm512_loadu_ps(y + i)));
  }
  if (i < n) {
    const __mmask16 mask = TailMask(n - i);
    const __m512 sum =
        _mm512_fmadd_ps(a, Load16Masked<kType>(w, i, mask), _mm512_maskz_loadu_ps(mask, y + i));
    _mm512_mask_storeu_ps(y + i, mask, sum);
  }
}

void Axpy(float alpha, const void* w, DType dtype, int64_t n, float* y) {
  switch (dtype) {
    case DType::kBF16:
      return AxpyTyped<DType::kBF16>(alpha, w, n, y);
    case DType::kF16:
      return AxpyTyped<DType::kF16>(alpha, w, n, y);
    case DType::kF32:
      return AxpyTyped<DType::kF32>(alpha, w, n, y);
    case DType::kI8:  // Never: LinearTransposedAccumulate dequantizes int8 rows first.
      return;
  }
}

// Four accumulators over 64-wide steps, then 16-wide steps into the first,
// then a masked tail; summed as (0 + 1) + (2 + 3), then Reduce16.
DSV2_AVX512 float Dot(const float* a, const float* b, int64_t n) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      acc[j] =
          _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * j), _mm512_loadu_ps(b + i + 16 * j), acc[j]);
    }
  }
  for (; i + 16 <= n; i += 16) {
    acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc[0]);
  }
  if (i < n) {
    const __mmask16 mask = TailMask(n - i);
    acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i),
                             acc[0]);
  }
  return Reduce16(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

}  // namespace

const IsaKernels* Avx512Kernels() {
  static const IsaKernels kernels{"avx512", Linear, Axpy, Dot, LinearQ8Avx512};
  return &kernels;
}

}  // namespace dsv2::cpu::internal

#else  // Not x86: no such kernels.

#include "kernels/cpu/linear_kernels.h"

namespace dsv2::cpu::internal {
const IsaKernels* Avx512Kernels() { return nullptr; }
}  // namespace dsv2::cpu::internal

#endif
