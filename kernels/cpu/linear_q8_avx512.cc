// AVX-512 implementation of the int8 Linear (dsv2-int8 weights,
// common/tensor/q8.h; the activations arrive quantized, see LinearQ8Args).
// Needs AVX-512BW for the byte operations; uses vpdpbusd where the CPU has
// AVX512-VNNI (checked at run time), which gives the same int32 lanes.
//
// Accumulation structure of every output (fixed for this ISA, and the AMX
// kernel's, linear_q8_amx.cc, so that the two give the same bits): k
// advances in steps of two blocks (64 columns) from 0. Each block's
// products are summed exactly in int32, converted to float32 (exact: below
// 2^24) and fused-multiply-added, times the float32 product w_scale ·
// x_scale of the block, into one of two float32 sums: the even blocks' and
// the odd blocks' (the last step, when k is not a multiple of 64, is zero
// past k in both operands, and a missing second block has scale 0). Then
// y = even + odd.
//
// A step's products of one row and one token go into 16 int32 lanes (lane
// j: columns 4j..4j+3, so lanes 0-7 hold the first block and 8-15 the
// second), by vpdpbusd on |w| and x·sign(w) or by vpmaddubsw (pair sums of
// at most 2·128·127, which do not saturate int16) then vpmaddwd with ones.
// Eight such (row, token) pairs are then reduced together into one vector
// of their block sums (BlockDots), which is converted, scaled and added
// into an accumulator holding the pairs' even and odd sums side by side.
// Both paths do exactly this per output:
//
//  - streaming (up to 3 tokens: decode): a thread reads its rows as kStreams
//    concurrent runs, one row of each per tile, prefetching the weights 1 KiB
//    ahead in every run and their scales along with them; one token at a
//    time.
//  - tiles (more tokens): kRows rows × kTokens tokens per register tile.
#if defined(__x86_64__) || defined(__i386__)

#include <algorithm>
#include <cstring>

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

// The step's products of w and x, summed exactly into 16 int32 lanes.
// vpdpbusd is written in assembly so that nothing else in this file is
// compiled for VNNI: CPUs without it run the same code.
template <bool kVnni>
DSV2_Q8_AVX512_INLINE __m512i StepSums(__m512i w, __m512i x) {
  const __m512i abs_w = _mm512_abs_epi8(w);
  // x · sign(w): negated where w is negative; w's zeros make their products 0.
  const __m512i signed_x =
      _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
  if constexpr (kVnni) {
    __m512i sums = _mm512_setzero_si512();
    asm("vpdpbusd %2, %1, %0" : "+v"(sums) : "v"(abs_w), "v"(signed_x));
    return sums;
  }
  return _mm512_madd_epi16(_mm512_maddubs_epi16(abs_w, signed_x), _mm512_set1_epi16(1));
}

// Lane i: (a ‖ b)[2i] + (a ‖ b)[2i + 1].
DSV2_Q8_AVX512_INLINE __m512i PairSums(__m512i a, __m512i b) {
  const __m512i evens =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return _mm512_add_epi32(_mm512_permutex2var_epi32(a, evens, b),
                          _mm512_permutex2var_epi32(a, odds, b));
}

// The exact block sums of eight pairs' step sums (StepSums): lane 2q + p
// holds pair q's block p, as float32.
DSV2_Q8_AVX512_INLINE __m512 BlockDots(const __m512i (&sums)[8]) {
  return _mm512_cvtepi32_ps(
      PairSums(PairSums(PairSums(sums[0], sums[1]), PairSums(sums[2], sums[3])),
               PairSums(PairSums(sums[4], sums[5]), PairSums(sums[6], sums[7]))));
}

// The scales of blocks b and b + 1 of a row or token with `blocks` blocks, as
// the two float32 halves of a double (0 for a missing second block).
DSV2_Q8_AVX512_INLINE double ScalePair(const float* scales, int64_t b, int64_t blocks) {
  const float pair[2] = {scales[b], b + 1 < blocks ? scales[b + 1] : 0.0f};
  double bits;
  std::memcpy(&bits, pair, sizeof(bits));
  return bits;
}

// acc's lanes 2q, 2q + 1 hold the even and odd sums of pair q: out[q] =
// even + odd, for q < 8.
DSV2_Q8_AVX512_INLINE void StoreSums(__m512 acc, float* out) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc);
#pragma GCC unroll 8
  for (int q = 0; q < 8; ++q) out[q] = lanes[2 * q] + lanes[2 * q + 1];
}

// out[r] = row r · x for kStreams rows (w: the rows' weights, ws: their
// scales); pair r is row r.
template <bool kVnni>
DSV2_Q8_AVX512 void StreamTile(const int8_t* const* w, const float* const* ws, const int8_t* x,
                               const float* xs, int64_t k, float* out) {
  static_assert(kStreams == 8);
  const int64_t blocks = Q8Blocks(k);
  // Byte offsets of the rows' scales from the first row's: a gather of the
  // eight rows' (block b, block b + 1) pairs.
  __m512i scale_offsets = _mm512_setzero_si512();
  {
    alignas(64) int64_t offsets[kStreams];
    for (int r = 0; r < kStreams; ++r) offsets[r] = (ws[r] - ws[0]) * int64_t{sizeof(float)};
    scale_offsets = _mm512_load_si512(offsets);
  }
  __m512 acc = _mm512_setzero_ps();
  __m512i sums[kStreams];
  int64_t i = 0;
  for (; i + kStep <= k; i += kStep) {  // Both blocks whole.
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
    for (int r = 0; r < kStreams; ++r) sums[r] = StepSums<kVnni>(_mm512_loadu_si512(w[r] + i), xv);
    const __m512 w_scales = _mm512_castpd_ps(_mm512_i64gather_pd(scale_offsets, ws[0] + b, 1));
    const __m512 x_scales = _mm512_castpd_ps(_mm512_set1_pd(ScalePair(xs, b, blocks)));
    acc = _mm512_fmadd_ps(BlockDots(sums), _mm512_mul_ps(w_scales, x_scales), acc);
  }
  if (i < k) {  // The last, partial step, or one with a single block.
    const int64_t b = i / kQ8Block;
    const __mmask64 mask = StepMask(i, k);
    const __m512i xv = _mm512_maskz_loadu_epi8(mask, x + i);
    alignas(64) double w_pairs[kStreams];
#pragma GCC unroll 8
    for (int r = 0; r < kStreams; ++r) {
      sums[r] = StepSums<kVnni>(_mm512_maskz_loadu_epi8(mask, w[r] + i), xv);
      w_pairs[r] = ScalePair(ws[r], b, blocks);
    }
    const __m512 w_scales = _mm512_castpd_ps(_mm512_load_pd(w_pairs));
    const __m512 x_scales = _mm512_castpd_ps(_mm512_set1_pd(ScalePair(xs, b, blocks)));
    acc = _mm512_fmadd_ps(BlockDots(sums), _mm512_mul_ps(w_scales, x_scales), acc);
  }
  StoreSums(acc, out);
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
// Pair q of half h is row 2h + q / 4 and token q % 4 (T = 4), or row q (T = 1,
// one half, pairs 4-7 empty).
template <bool kVnni, int T>
DSV2_Q8_AVX512 void Tile(const int8_t* const* w, const float* const* ws, const int8_t* x,
                         int64_t x_stride, const float* xs, int64_t blocks, int64_t k, float* out) {
  static_assert(kRows == 4 && (T == 4 || T == 1));
  constexpr int kHalves = T == 4 ? 2 : 1;
  __m512 acc[kHalves];
#pragma GCC unroll 2
  for (int h = 0; h < kHalves; ++h) acc[h] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += kStep) {
    const int64_t b = i / kQ8Block;
    const __mmask64 mask = StepMask(i, k);
    __m512i wv[kRows];
    double w_pairs[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      wv[r] = _mm512_maskz_loadu_epi8(mask, w[r] + i);
      w_pairs[r] = ScalePair(ws[r], b, blocks);
    }
    __m512i sums[kHalves][8];
    double x_pairs[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512i xv = _mm512_maskz_loadu_epi8(mask, x + t * x_stride + i);
      x_pairs[t] = ScalePair(xs + t * blocks, b, blocks);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) {
        if constexpr (T == 4) {
          sums[r / 2][(r % 2) * 4 + t] = StepSums<kVnni>(wv[r], xv);
        } else {
          sums[0][r] = StepSums<kVnni>(wv[r], xv);
        }
      }
    }
    if constexpr (T == 4) {
      const __m512 x_scales = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(x_pairs)));
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m512 w_scales = _mm512_castpd_ps(
            _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_set1_pd(w_pairs[2 * h])),
                               _mm256_set1_pd(w_pairs[2 * h + 1]), 1));
        acc[h] = _mm512_fmadd_ps(BlockDots(sums[h]), _mm512_mul_ps(w_scales, x_scales), acc[h]);
      }
    } else {
#pragma GCC unroll 4
      for (int q = 4; q < 8; ++q) sums[0][q] = _mm512_setzero_si512();
      const __m512 w_scales = _mm512_castpd_ps(_mm512_zextpd256_pd512(_mm256_loadu_pd(w_pairs)));
      const __m512 x_scales = _mm512_castpd_ps(_mm512_set1_pd(x_pairs[0]));
      acc[0] = _mm512_fmadd_ps(BlockDots(sums[0]), _mm512_mul_ps(w_scales, x_scales), acc[0]);
    }
  }
  float pairs[kHalves][8];
#pragma GCC unroll 2
  for (int h = 0; h < kHalves; ++h) StoreSums(acc[h], pairs[h]);
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      out[r * T + t] = T == 4 ? pairs[r / 2][(r % 2) * 4 + t] : pairs[0][r];
    }
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
