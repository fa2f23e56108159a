// AVX2 implementation of the int8 Linear (dsv2-int8 weights,
// common/tensor/q8.h; the activations arrive quantized, see LinearQ8Args).
//
// Accumulation structure of every output (fixed for this ISA): one 8-lane
// float32 accumulator; for each block of 32 columns in order, the block's 32
// products are summed exactly into 8 int32 lanes (lane j: columns 4j..4j+3)
// by _mm256_maddubs_epi16 on |w| and x·sign(w) — pair sums of at most
// 2·128·127, which do not saturate int16 — then _mm256_madd_epi16 with ones;
// the lanes are converted to float32 and added as fmadd(lanes, w_scale ·
// x_scale, acc). A partial last block is zero past the row's end in both
// operands. Then the lanes are summed by the fixed tree of Reduce8. Both
// paths do exactly this per output, so rows and tokens may be tiled freely:
//
//  - streaming (up to 3 tokens: decode). Memory bound, as the float kernels'
//    streaming path: a thread reads its rows as kStreams concurrent runs, one
//    row of each per tile, prefetching the weights 1 KiB ahead in every run
//    and their scales along with them; one token at a time, later tokens
//    re-reading the tile's rows from L1.
//  - tiles (more tokens): kRows rows × kTokens tokens per register tile, the
//    weights of a block loaded once for the tile's tokens.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/linear_kernels.h"

#define DSV2_Q8_AVX2 __attribute__((target("avx2,fma")))
#define DSV2_Q8_AVX2_INLINE DSV2_Q8_AVX2 inline __attribute__((always_inline))

namespace dsv2::cpu::internal {
namespace {

// 4 runs: the loop then keeps its 4 weight and 4 scale pointers in registers
// (8 and 8 spilled); on a Zen 3 guest 10–22% faster from DRAM, 33% from L2.
constexpr int kStreams = 4;
constexpr int64_t kStreamMaxTokens = 3;
constexpr int64_t kPrefetchBytes = 1024;
constexpr int kRows = 4;
constexpr int kTokens = 2;

DSV2_Q8_AVX2_INLINE __m256i LoadBlock(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// The partial last block of a row of k weights (k % kQ8Block != 0), zero
// padded: reading past the row could leave the checkpoint's mapping.
DSV2_Q8_AVX2_INLINE __m256i LoadTailBlock(const int8_t* row, int64_t k) {
  const int64_t begin = k / kQ8Block * kQ8Block;
  alignas(32) int8_t tail[kQ8Block] = {};
  std::memcpy(tail, row + begin, static_cast<size_t>(k - begin));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
}

// A block's 32 products, summed exactly into 8 int32 lanes, as float32.
DSV2_Q8_AVX2_INLINE __m256 BlockDot(__m256i w, __m256i x) {
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// The fixed horizontal sum: lane i + lane i+4, then i+2, then i+1.
DSV2_Q8_AVX2_INLINE float Reduce8(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// out[r] = row r · x for kStreams rows (w: the rows' weights, ws: their scales).
DSV2_Q8_AVX2 void StreamTile(const int8_t* const* w, const float* const* ws, const int8_t* x,
                             const float* xs, int64_t k, float* out) {
  __m256 acc[kStreams];
#pragma GCC unroll 8
  for (int r = 0; r < kStreams; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t full = k / kQ8Block;
  for (int64_t b = 0; b < full; ++b) {
    if ((b & 1) == 0) {  // Every 64 bytes of each run.
#pragma GCC unroll 8
      for (int r = 0; r < kStreams; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(w[r]) + b * kQ8Block + kPrefetchBytes,
                     _MM_HINT_T0);
      }
    }
    if ((b & 15) == 0) {  // Every 64 bytes of scales: as far ahead as the weights.
#pragma GCC unroll 8
      for (int r = 0; r < kStreams; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(ws[r] + b + kPrefetchBytes / kQ8Block),
                     _MM_HINT_T0);
      }
    }
    const __m256i xv = LoadBlock(x + b * kQ8Block);
#pragma GCC unroll 8
    for (int r = 0; r < kStreams; ++r) {
      acc[r] = _mm256_fmadd_ps(BlockDot(LoadBlock(w[r] + b * kQ8Block), xv),
                               _mm256_set1_ps(ws[r][b] * xs[b]), acc[r]);
    }
  }
  if (full * kQ8Block < k) {
    const __m256i xv = LoadBlock(x + full * kQ8Block);  // Zero padded by the caller.
#pragma GCC unroll 8
    for (int r = 0; r < kStreams; ++r) {
      acc[r] = _mm256_fmadd_ps(BlockDot(LoadTailBlock(w[r], k), xv),
                               _mm256_set1_ps(ws[r][full] * xs[full]), acc[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kStreams; ++r) out[r] = Reduce8(acc[r]);
}

void StreamRows(const LinearQ8Args& a, int64_t row_begin, int64_t row_end) {
  const int64_t blocks = Q8Blocks(a.w.cols);
  const int64_t tiles = StreamTileCount(row_begin, row_end, kStreams);
  for (int64_t j = 0; j < tiles; ++j) {
    int64_t rows[kStreams];
    const int valid = StreamTileRows<kStreams>(row_begin, row_end, j, rows);
    const int8_t* w[kStreams];
    const float* ws[kStreams];
    for (int r = 0; r < kStreams; ++r) {
      w[r] = reinterpret_cast<const int8_t*>(a.w.row_ptr(rows[r]));
      ws[r] = a.w.row_scales(rows[r]);
    }
    for (int64_t t = 0; t < a.n; ++t) {
      float out[kStreams];
      StreamTile(w, ws, a.x_q + t * a.x_stride, a.x_scales + t * blocks, a.w.cols, out);
      for (int r = 0; r < valid; ++r) a.y[t * a.w.rows + rows[r]] = out[r];
    }
  }
}

// out[r * T + t] = row r · token t, for kRows rows and T tokens; x and xs
// point at the first token, whose successors are x_stride and `blocks` apart.
template <int T>
DSV2_Q8_AVX2 void Tile(const int8_t* const* w, const float* const* ws, const int8_t* x,
                       int64_t x_stride, const float* xs, int64_t blocks, int64_t k, float* out) {
  __m256 acc[kRows][T];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  const int64_t full = k / kQ8Block;
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i wv[kRows];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      wv[r] = b < full ? LoadBlock(w[r] + b * kQ8Block) : LoadTailBlock(w[r], k);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256i xv = LoadBlock(x + t * x_stride + b * kQ8Block);
      const float x_scale = xs[t * blocks + b];
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        acc[r][t] =
            _mm256_fmadd_ps(BlockDot(wv[r], xv), _mm256_set1_ps(ws[r][b] * x_scale), acc[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) out[r * T + t] = Reduce8(acc[r][t]);
  }
}

template <int T>
void Tokens(const LinearQ8Args& a, const int8_t* const* w, const float* const* ws, int valid,
            int64_t row, int64_t t) {
  const int64_t blocks = Q8Blocks(a.w.cols);
  float out[kRows * T];
  Tile<T>(w, ws, a.x_q + t * a.x_stride, a.x_stride, a.x_scales + t * blocks, blocks, a.w.cols,
          out);
  for (int r = 0; r < valid; ++r) {
    for (int j = 0; j < T; ++j) a.y[(t + j) * a.w.rows + row + r] = out[r * T + j];
  }
}

void Rows(const LinearQ8Args& a, int64_t row_begin, int64_t row_end) {
  if (a.n <= kStreamMaxTokens) return StreamRows(a, row_begin, row_end);
  for (int64_t row = row_begin; row < row_end; row += kRows) {
    const int valid = static_cast<int>(std::min<int64_t>(kRows, row_end - row));
    const int8_t* w[kRows];
    const float* ws[kRows];
    // A partial tile repeats its last row; those results are dropped.
    for (int r = 0; r < kRows; ++r) {
      w[r] = reinterpret_cast<const int8_t*>(a.w.row_ptr(row + std::min(r, valid - 1)));
      ws[r] = a.w.row_scales(row + std::min(r, valid - 1));
    }
    int64_t t = 0;
    for (; t + kTokens <= a.n; t += kTokens) Tokens<kTokens>(a, w, ws, valid, row, t);
    for (; t < a.n; ++t) Tokens<1>(a, w, ws, valid, row, t);
  }
}

}  // namespace

void LinearQ8Avx2(const LinearQ8Args& a, bool parallel) {
  // At least ~32K multiply-adds per run, so that small products stay on one thread.
  const int64_t min_rows = 32768 / std::max<int64_t>(1, a.w.cols * a.n);
  ForRowRuns(a.w.rows, a.n <= kStreamMaxTokens ? kStreams : kRows, min_rows, parallel,
             [&](const RowRun& run) { Rows(a, run.begin, run.end); });
}

}  // namespace dsv2::cpu::internal

#endif
