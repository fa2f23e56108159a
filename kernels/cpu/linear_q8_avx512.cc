// AVX-512 implementation of the int8 Linear (dsv2-int8 weights,
// common/tensor/q8.h; the activations arrive quantized, see LinearQ8Args).
// Needs AVX-512BW for the byte operations; uses vpdpbusd where the CPU has
// AVX512-VNNI (checked at run time), which gives the same int32 lanes.
//
// Accumulation structure of every output (fixed for this ISA): one 16-lane
// float32 accumulator; k advances in steps of two blocks (64 columns) from 0.
// A step's products are summed exactly into 16 int32 lanes (lane j: columns
// 4j..4j+3 of the step, so lanes 0-7 hold the first block and 8-15 the
// second), either by vpdpbusd on |w| and x·sign(w) or by vpmaddubsw (pair
// sums of at most 2·128·127, which do not saturate int16) then vpmaddwd with
// ones; the lanes are converted to float32 and added as fmadd(lanes, scales,
// acc), where scales holds the first block's w_scale · x_scale in lanes 0-7
// and the second's in 8-15. The last step, when k is not a multiple of 64,
// is zero past k in both operands (and a missing second block has scale 0).
// Then the 16 lanes are summed by one fixed tree (lane i + lane i+8, then
// i+4, i+2, i+1). Both paths do exactly this per output:
//
//  - streaming (up to 3 tokens: decode): a thread reads its rows as kStreams
//    concurrent runs, one row of each per tile, prefetching the weights 1 KiB
//    ahead in every run and their scales along with them; one token at a time.
//  - tiles (more tokens): kRows rows × kTokens tokens per register tile.
#if defined(__x86_64__) || defined(__i386__)

#include <algorithm>

#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/linear_kernels.h"

#define DSV2_Q8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define DSV2_Q8_AVX512_INLINE DSV2_Q8_AVX512 inline __attribute__((always_inline))

namespace dsv2::cpu::internal {
namespace {

constexpr int kStreams = 8;
constexpr int64_t kStreamMaxTokens = 3;
constexpr int64_t kPrefetchBytes = 1024;
constexpr int kRows = 4;
constexpr int kTokens = 4;
constexpr int64_t kStep = 2 * kQ8Block;

// The bytes [i, min(i + 64, k)) of a row as a mask: all of them, or those
// before k. Masked-off bytes are not read.
DSV2_Q8_AVX512_INLINE __mmask64 StepMask(int64_t i, int64_t k) {
  const int64_t count = std::min<int64_t>(kStep, k - i);
  return count == kStep ? ~__mmask64{0} : (__mmask64{1} << count) - 1;
}

// The step's products of w and x, summed exactly into 16 int32 lanes, as
// float32. vpdpbusd is written in assembly so that nothing else in this file
// is compiled for VNNI: CPUs without it run the same code.
template <bool kVnni>
DSV2_Q8_AVX512_INLINE __m512 StepDot(__m512i w, __m512i x) {
  const __m512i abs_w = _mm512_abs_epi8(w);
  // x · sign(w): negated where w is negative; w's zeros make their products 0.
  const __m512i signed_x =
      _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
  __m512i sums;
  if constexpr (kVnni) {
    sums = _mm512_setzero_si512();
    asm("vpdpbusd %2, %1, %0" : "+v"(sums) : "v"(abs_w), "v"(signed_x));
  } else {
    sums = _mm512_madd_epi16(_mm512_maddubs_epi16(abs_w, signed_x), _mm512_set1_epi16(1));
  }
  return _mm512_cvtepi32_ps(sums);
}

// Lanes 0-7: the step's first block's scale product; 8-15: the second's.
DSV2_Q8_AVX512_INLINE __m512 StepScales(float first, float second) {
  return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(first), _mm512_set1_ps(second));
}

// Scale product of block b for a row of `blocks` blocks; 0 past the row.
DSV2_Q8_AVX512_INLINE float ScaleProduct(const float* ws, const float* xs, int64_t b,
                                         int64_t blocks) {
  return b < blocks ? ws[b] * xs[b] : 0.0f;
}

// The fixed tree: lane i + lane i+8, then i+4, i+2, i+1.
DSV2_Q8_AVX512_INLINE float Reduce16(__m512 v) {
  const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), high);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// out[r] = row r · x for kStreams rows (w: the rows' weights, ws: their scales).
template <bool kVnni>
DSV2_Q8_AVX512 void StreamTile(const int8_t* const* w, const float* const* ws, const int8_t* x,
                               const float* xs, int64_t k, float* out) {
  const int64_t blocks = Q8Blocks(k);
  __m512 acc[kStreams];
#pragma GCC unroll 8
  for (int r = 0; r < kStreams; ++r) acc[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kStep <= k; i += kStep) {
    const int64_t b = i / kQ8Block;
#pragma GCC unroll 8
    for (int r = 0; r < kStreams; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r]) + i + kPrefetchBytes, _MM_HINT_T0);
    }
    if ((b & 15) == 0) {  // Every 64 bytes of scales: as far ahead as the weights.
#pragma GCC unroll 8
      for (int r = 0; r < kStreams; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(ws[r] + b + kPrefetchBytes / kQ8Block),
                     _MM_HINT_T0);
      }
    }
    const __m512i xv = _mm512_loadu_si512(x + i);
#pragma GCC unroll 8
    for (int r = 0; r < kStreams; ++r) {
      acc[r] = _mm512_fmadd_ps(StepDot<kVnni>(_mm512_loadu_si512(w[r] + i), xv),
                               StepScales(ws[r][b] * xs[b], ws[r][b + 1] * xs[b + 1]), acc[r]);
    }
  }
  if (i < k) {
    const int64_t b = i / kQ8Block;
    const __mmask64 mask = StepMask(i, k);
    const __m512i xv = _mm512_maskz_loadu_epi8(mask, x + i);
#pragma GCC unroll 8
    for (int r = 0; r < kStreams; ++r) {
      acc[r] = _mm512_fmadd_ps(
          StepDot<kVnni>(_mm512_maskz_loadu_epi8(mask, w[r] + i), xv),
          StepScales(ScaleProduct(ws[r], xs, b, blocks), ScaleProduct(ws[r], xs, b + 1, blocks)),
          acc[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kStreams; ++r) out[r] = Reduce16(acc[r]);
}

template <bool kVnni>
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
      StreamTile<kVnni>(w, ws, a.x_q + t * a.x_stride, a.x_scales + t * blocks, a.w.cols, out);
      for (int r = 0; r < valid; ++r) a.y[t * a.w.rows + rows[r]] = out[r];
    }
  }
}

// out[r * T + t] = row r · token t, for kRows rows and T tokens; x and xs
// point at the first token, whose successors are x_stride and `blocks` apart.
template <bool kVnni, int T>
DSV2_Q8_AVX512 void Tile(const int8_t* const* w, const float* const* ws, const int8_t* x,
                         int64_t x_stride, const float* xs, int64_t blocks, int64_t k, float* out) {
  __m512 acc[kRows][T];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < k; i += kStep) {
    const int64_t b = i / kQ8Block;
    const __mmask64 mask = StepMask(i, k);
    __m512i wv[kRows];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) wv[r] = _mm512_maskz_loadu_epi8(mask, w[r] + i);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512i xv = _mm512_maskz_loadu_epi8(mask, x + t * x_stride + i);
      const float* x_scales = xs + t * blocks;
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        acc[r][t] = _mm512_fmadd_ps(StepDot<kVnni>(wv[r], xv),
                                    StepScales(ScaleProduct(ws[r], x_scales, b, blocks),
                                               ScaleProduct(ws[r], x_scales, b + 1, blocks)),
                                    acc[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) out[r * T + t] = Reduce16(acc[r][t]);
  }
}

template <bool kVnni, int T>
void Tokens(const LinearQ8Args& a, const int8_t* const* w, const float* const* ws, int valid,
            int64_t row, int64_t t) {
  const int64_t blocks = Q8Blocks(a.w.cols);
  float out[kRows * T];
  Tile<kVnni, T>(w, ws, a.x_q + t * a.x_stride, a.x_stride, a.x_scales + t * blocks, blocks,
                 a.w.cols, out);
  for (int r = 0; r < valid; ++r) {
    for (int j = 0; j < T; ++j) a.y[(t + j) * a.w.rows + row + r] = out[r * T + j];
  }
}

template <bool kVnni>
void Rows(const LinearQ8Args& a, int64_t row_begin, int64_t row_end) {
  if (a.n <= kStreamMaxTokens) return StreamRows<kVnni>(a, row_begin, row_end);
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
    for (; t + kTokens <= a.n; t += kTokens) Tokens<kVnni, kTokens>(a, w, ws, valid, row, t);
    for (; t < a.n; ++t) Tokens<kVnni, 1>(a, w, ws, valid, row, t);
  }
}

}  // namespace

void LinearQ8Avx512(const LinearQ8Args& a, bool parallel) {
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  // At least ~32K multiply-adds per run, so that small products stay on one thread.
  const int64_t min_rows = 32768 / std::max<int64_t>(1, a.w.cols * a.n);
  ForRowRuns(a.w.rows, a.n <= kStreamMaxTokens ? kStreams : kRows, min_rows, parallel,
             [&](const RowRun& run) {
               if (vnni) return Rows<true>(a, run.begin, run.end);
               Rows<false>(a, run.begin, run.end);
             });
}

}  // namespace dsv2::cpu::internal

#endif
