// AVX2/FMA implementations of the Linear kernels, for CPUs without AVX-512.
//
// Accumulation structure of every f16 and f32 output (fixed for this ISA):
// one 8-lane float32 accumulator; k advances in steps of 8 from 0, the last
// partial step zero padded in both operands; then the lanes are summed by the
// fixed tree of Reduce8. bf16 has a structure of its own (see "bf16" below).
// Weights are converted to float32 in registers as they stream in: up to 3
// tokens, 4 concurrent runs of rows one token at a time (as the AVX-512
// streaming path); more, tiles of kRows rows × kTokens tokens (16 ymm
// registers: 8 sums, 4 weights, 1 input).
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/linear_kernels.h"

#define DSV2_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DSV2_AVX2_INLINE DSV2_AVX2 inline __attribute__((always_inline))

namespace dsv2::cpu::internal {
namespace {

constexpr int kRows = 4;
constexpr int kTokens = 2;

// 8 consecutive weights from element i, as float32.
template <DType kType>
DSV2_AVX2_INLINE __m256 Load8(const void* base, int64_t i) {
  if constexpr (kType == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    const __m128i half =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (kType == DType::kF16) {
      return _mm256_cvtph_ps(half);
    } else {  // bf16 is the top half of a float32.
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
    }
  }
}

// The last `count` (< 8) weights from element i, zero padded.
template <DType kType>
DSV2_AVX2_INLINE __m256 Load8Tail(const void* base, int64_t i, int64_t count) {
  alignas(32) float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < count; ++j) lanes[j] = LoadAsFloat(base, kType, i + j);
  return _mm256_load_ps(lanes);
}

DSV2_AVX2_INLINE __m256i TailMask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The fixed horizontal sum: lane i + lane i+4, then i+2, then i+1.
DSV2_AVX2_INLINE float Reduce8(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// out[r * T + t] = dot(w row r, x token t) over k elements.
template <DType kType, int T>
DSV2_AVX2 void Tile(const void* const* w, const float* x, int64_t x_stride, int64_t k, float* out) {
  __m256 acc[kRows][T];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 wv[kRows];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) wv[r] = Load8<kType>(w[r], i);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * x_stride + i);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  if (i < k) {
    const __m256i mask = TailMask(k - i);
    __m256 wv[kRows];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) wv[r] = Load8Tail<kType>(w[r], i, k - i);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_maskload_ps(x + t * x_stride + i, mask);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) out[r * T + t] = Reduce8(acc[r][t]);
  }
}

template <DType kType, int T>
void Tokens(const LinearArgs& a, const void* const* rows, int valid_rows, int64_t row, int64_t t) {
  float out[kRows * T];
  Tile<kType, T>(rows, a.x + t * a.x_stride, a.x_stride, a.w.cols, out);
  for (int r = 0; r < valid_rows; ++r) {
    for (int j = 0; j < T; ++j) a.y[(t + j) * a.w.rows + row + r] = out[r * T + j];
  }
}

// Few tokens (decode): as the AVX-512 streaming path, a thread reads its rows
// as kStreams concurrent runs, one row of each per tile, prefetching 1 KiB
// ahead in every run; one token at a time, later tokens re-reading the tile's
// rows from L1. 4 runs, not AVX-512's 8: on a Zen 3 guest 4 read 8–15% faster
// from DRAM and 10% faster from L2 (medians of 6 alternating runs; rows 4 KiB
// apart put every run's line in the same L1 set, 8-way).
constexpr int kStreams = 4;
constexpr int64_t kStreamMaxTokens = 3;
constexpr int64_t kStreamPrefetchBytes = 1024;

// out[r] = dot(w row r, x) for kStreams rows; the same operations per output
// as Tile.
template <DType kType>
DSV2_AVX2 void StreamTile(const void* const* w, const float* x, int64_t k, float* out) {
  __m256 acc[kStreams];
#pragma GCC unroll 8
  for (int r = 0; r < kStreams; ++r) acc[r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    if ((i & 31) == 0) {
#pragma GCC unroll 8
      for (int r = 0; r < kStreams; ++r) {
        _mm_prefetch(static_cast<const char*>(w[r]) + i * DTypeSize(kType) + kStreamPrefetchBytes,
                     _MM_HINT_T0);
      }
    }
    const __m256 xv = _mm256_loadu_ps(x + i);
#pragma GCC unroll 8
    for (int r = 0; r < kStreams; ++r) acc[r] = _mm256_fmadd_ps(Load8<kType>(w[r], i), xv, acc[r]);
  }
  if (i < k) {
    const __m256 xv = _mm256_maskload_ps(x + i, TailMask(k - i));
#pragma GCC unroll 8
    for (int r = 0; r < kStreams; ++r) {
      acc[r] = _mm256_fmadd_ps(Load8Tail<kType>(w[r], i, k - i), xv, acc[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kStreams; ++r) out[r] = Reduce8(acc[r]);
}

template <DType kType>
void StreamRows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t tiles = StreamTileCount(row_begin, row_end, kStreams);
  for (int64_t j = 0; j < tiles; ++j) {
    int64_t rows[kStreams];
    const int valid = StreamTileRows<kStreams>(row_begin, row_end, j, rows);
    const void* w[kStreams];
    for (int r = 0; r < kStreams; ++r) w[r] = a.w.row_ptr(rows[r]);
    for (int64_t t = 0; t < a.n; ++t) {
      float out[kStreams];
      StreamTile<kType>(w, a.x + t * a.x_stride, a.w.cols, out);
      for (int r = 0; r < valid; ++r) a.y[t * a.w.rows + rows[r]] = out[r];
    }
  }
}

template <DType kType>
void LinearRowsTyped(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  if (a.n <= kStreamMaxTokens) return StreamRows<kType>(a, row_begin, row_end);
  for (int64_t row = row_begin; row < row_end; row += kRows) {
    const int valid = static_cast<int>(std::min<int64_t>(kRows, row_end - row));
    const void* rows[kRows];
    // A partial tile repeats its last row; those results are dropped.
    for (int r = 0; r < kRows; ++r) rows[r] = a.w.row_ptr(row + std::min(r, valid - 1));
    int64_t t = 0;
    for (; t + kTokens <= a.n; t += kTokens) Tokens<kType, kTokens>(a, rows, valid, row, t);
    for (; t < a.n; ++t) Tokens<kType, 1>(a, rows, valid, row, t);
  }
}

// ---- bf16 ---------------------------------------------------------------------
//
// bf16 weights have their own accumulation structure, built around the
// cheapest widening AVX2 has: a 32-byte load holds 16 weights, element 2j in
// the low and 2j+1 in the high half of 32-bit lane j, so a left shift by 16
// gives the even elements as float32 and a mask of the high halves the odd
// ones: two single-cycle operations per 16 weights (zero-extend + shift, the
// obvious way, costs two shuffle-port operations per 8 and left the decode
// kernel compute bound below the DRAM bandwidth of an AMD Zen 4 guest). The
// input is packed once per call to match, block by block of 16: its 8 even
// elements, then its 8 odd ones, zero past k.
//
// Accumulation structure of every output: one 8-lane float32 accumulator;
// for each block of 16 from k = 0, acc += even weights · even inputs, then
// acc += odd weights · odd inputs (lane j sums elements 2j, 2j+1 of each
// block in order); the last partial block is zero padded in both operands;
// then Reduce8.
constexpr int64_t kBf16Block = 16;

// A token's inputs in the packed order, `Padded(k)` floats.
int64_t Padded(int64_t k) { return (k + kBf16Block - 1) / kBf16Block * kBf16Block; }

DSV2_AVX2 void PackInputs(const LinearArgs& a, std::vector<float>& packed) {
  const int64_t k = a.w.cols, kp = Padded(k), full = k / kBf16Block * kBf16Block;
  packed.resize(a.n * kp);
  for (int64_t t = 0; t < a.n; ++t) {
    const float* x = a.x + t * a.x_stride;
    float* p = packed.data() + t * kp;
    for (int64_t i = 0; i < full; i += kBf16Block) {
      const __m256 lo = _mm256_loadu_ps(x + i), hi = _mm256_loadu_ps(x + i + 8);
      // Per 128-bit lane: lo's even (odd) pair, then hi's; then the 64-bit
      // pieces in order lo, lo, hi, hi.
      const __m256 even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
      const __m256 odd = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
      _mm256_storeu_ps(p + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even),
                                                                     _MM_SHUFFLE(3, 1, 2, 0))));
      _mm256_storeu_ps(p + i + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd),
                                                                         _MM_SHUFFLE(3, 1, 2, 0))));
    }
    if (full < k) {
      std::fill(p + full, p + kp, 0.0f);
      for (int64_t j = 0; full + j < k; ++j) p[full + (j & 1) * 8 + j / 2] = x[full + j];
    }
  }
}

// The weights of the last, partial block from element i of a row of k
// columns, through a zero-padded copy (the bytes past the row may be another
// tensor's, or unmapped).
DSV2_AVX2_INLINE __m256i LoadBf16Tail(const uint16_t* row, int64_t i, int64_t k) {
  alignas(32) uint16_t tail[kBf16Block] = {};
  for (int64_t j = 0; i + j < k; ++j) tail[j] = row[i + j];
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
}

DSV2_AVX2_INLINE __m256 EvenBf16(__m256i raw) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
}
DSV2_AVX2_INLINE __m256 OddBf16(__m256i raw, __m256i high_halves) {
  return _mm256_castsi256_ps(_mm256_and_si256(raw, high_halves));
}

// One block of 16 from element i: acc[r][t] += R rows' weights `raw` · T
// packed tokens `kp` floats apart.
template <int R, int T>
DSV2_AVX2_INLINE void Bf16Block(const __m256i (&raw)[R], const float* packed, int64_t kp, int64_t i,
                                __m256i high_halves, __m256 (&acc)[R][T]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 even = EvenBf16(raw[r]);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[r][t] = _mm256_fmadd_ps(even, _mm256_loadu_ps(packed + t * kp + i), acc[r][t]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 odd = OddBf16(raw[r], high_halves);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[r][t] = _mm256_fmadd_ps(odd, _mm256_loadu_ps(packed + t * kp + i + 8), acc[r][t]);
    }
  }
}

// out[r * T + t] = dot(w row r, token t) for R rows and T tokens, the packed
// tokens `kp` floats apart. With kPrefetch (the streaming path, weights
// coming from memory), each row is prefetched kStreamPrefetchBytes ahead.
template <int R, int T, bool kPrefetch>
DSV2_AVX2 void TileBf16(const uint16_t* const* w, const float* packed, int64_t kp, int64_t k,
                        float* out) {
  const __m256i high_halves = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  __m256i raw[R];
  int64_t i = 0;
  for (; i + kBf16Block <= k; i += kBf16Block) {
    if (kPrefetch && (i & 31) == 0) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(w[r] + i) + kStreamPrefetchBytes, _MM_HINT_T0);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      raw[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + i));
    }
    Bf16Block<R, T>(raw, packed, kp, i, high_halves, acc);
  }
  if (i < k) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) raw[r] = LoadBf16Tail(w[r], i, k);
    Bf16Block<R, T>(raw, packed, kp, i, high_halves, acc);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) out[r * T + t] = Reduce8(acc[r][t]);
  }
}

// Few tokens (decode, small expert groups): a thread reads its rows as S
// concurrent runs, one row of each per tile, prefetching ahead in every run:
// one token at a time for up to 3 tokens (later tokens re-read the tile's
// rows from L1), tokens in groups of 3 (12 sums) up to kBf16StreamMaxTokens,
// each weight load then serving 3 tokens. Only the first group prefetches;
// the others find the rows in cache.
constexpr int64_t kBf16StreamMaxTokens = 12;
constexpr int kBf16GroupTokens = 3;

template <int S, int T>
void StreamTokensBf16(const LinearArgs& a, const float* packed, const uint16_t* const* w,
                      const int64_t* rows, int valid, int64_t t) {
  const int64_t kp = Padded(a.w.cols);
  float out[S * T];
  if (t == 0) {
    TileBf16<S, T, true>(w, packed, kp, a.w.cols, out);
  } else {
    TileBf16<S, T, false>(w, packed + t * kp, kp, a.w.cols, out);
  }
  for (int r = 0; r < valid; ++r) {
    for (int j = 0; j < T; ++j) a.y[(t + j) * a.w.rows + rows[r]] = out[r * T + j];
  }
}

template <int S, int T>
void StreamRowsBf16(const LinearArgs& a, const float* packed, int64_t row_begin, int64_t row_end) {
  const int64_t tiles = StreamTileCount(row_begin, row_end, S);
  for (int64_t j = 0; j < tiles; ++j) {
    int64_t rows[S];
    const int valid = StreamTileRows<S>(row_begin, row_end, j, rows);
    const uint16_t* w[S];
    for (int r = 0; r < S; ++r) w[r] = reinterpret_cast<const uint16_t*>(a.w.row_ptr(rows[r]));
    int64_t t = 0;
    for (; t + T <= a.n; t += T) StreamTokensBf16<S, T>(a, packed, w, rows, valid, t);
    for (; t < a.n; ++t) StreamTokensBf16<S, 1>(a, packed, w, rows, valid, t);
  }
}

// Many tokens: tiles of kBf16Rows rows × kBf16Tokens tokens, over blocks of
// rows and of tokens sized so that both stay in L2 (512 KiB per core on Zen
// 3) while the block of rows meets every block of tokens: the weights come
// from memory once, in the first token block, and each tile's rows stay in
// L1 across its block's tokens.
constexpr int kBf16Rows = 4;
constexpr int kBf16Tokens = 2;
constexpr int64_t kBf16TokenBlockBytes = 192 << 10;
constexpr int64_t kBf16RowBlockBytes = 192 << 10;

template <int T>
void TokensBf16(const LinearArgs& a, const uint16_t* const* rows, int valid_rows, int64_t row,
                const float* packed, int64_t t) {
  const int64_t kp = Padded(a.w.cols);
  float out[kBf16Rows * T];
  TileBf16<kBf16Rows, T, false>(rows, packed + t * kp, kp, a.w.cols, out);
  for (int r = 0; r < valid_rows; ++r) {
    for (int j = 0; j < T; ++j) a.y[(t + j) * a.w.rows + row + r] = out[r * T + j];
  }
}

void LinearRowsBf16(const LinearArgs& a, const float* packed, int64_t row_begin, int64_t row_end) {
  if (a.n <= kStreamMaxTokens) return StreamRowsBf16<kStreams, 1>(a, packed, row_begin, row_end);
  if (a.n <= kBf16StreamMaxTokens) {
    return StreamRowsBf16<kStreams, kBf16GroupTokens>(a, packed, row_begin, row_end);
  }
  const int64_t block_tokens = std::max<int64_t>(
      kBf16Tokens, kBf16TokenBlockBytes / (Padded(a.w.cols) * 4) / kBf16Tokens * kBf16Tokens);
  const int64_t block_rows =
      std::max<int64_t>(kBf16Rows, kBf16RowBlockBytes / (a.w.cols * 2) / kBf16Rows * kBf16Rows);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += block_rows) {
    const int64_t r1 = std::min(row_end, r0 + block_rows);
    for (int64_t t0 = 0; t0 < a.n; t0 += block_tokens) {
      const int64_t t1 = std::min(a.n, t0 + block_tokens);
      for (int64_t row = r0; row < r1; row += kBf16Rows) {
        const int valid = static_cast<int>(std::min<int64_t>(kBf16Rows, r1 - row));
        const uint16_t* rows[kBf16Rows];
        // A partial tile repeats its last row; those results are dropped.
        for (int r = 0; r < kBf16Rows; ++r) {
          rows[r] = reinterpret_cast<const uint16_t*>(a.w.row_ptr(row + std::min(r, valid - 1)));
        }
        int64_t t = t0;
        for (; t + kBf16Tokens <= t1; t += kBf16Tokens) {
          TokensBf16<kBf16Tokens>(a, rows, valid, row, packed, t);
        }
        for (; t < t1; ++t) TokensBf16<1>(a, rows, valid, row, packed, t);
      }
    }
  }
}

void Linear(const LinearArgs& a, bool parallel) {
  // At least ~32K multiply-adds per run, so that small products stay on one thread.
  const int64_t min_rows = 32768 / std::max<int64_t>(1, a.w.cols * a.n);
  const bool stream = a.n <= kStreamMaxTokens;
  switch (a.w.dtype) {
    case DType::kBF16: {
      // Per calling thread: Linear runs on several threads at once when the
      // callers are themselves ThreadPool tasks (parallel = false).
      // (A lambda names a thread_local as the running thread's own, so the
      // pool threads get a pointer to this one's.)
      thread_local std::vector<float> packed;
      PackInputs(a, packed);
      const float* inputs = packed.data();
      const int64_t unit = a.n <= kBf16StreamMaxTokens ? kStreams : kBf16Rows;
      ForRowRuns(a.w.rows, unit, min_rows, parallel,
                 [&](const RowRun& run) { LinearRowsBf16(a, inputs, run.begin, run.end); });
      if (packed.capacity() * sizeof(float) > kScratchKeepBytes) packed = {};
      return;
    }
    case DType::kF16:
      return ForRowRuns(
          a.w.rows, stream ? kStreams : kRows, min_rows, parallel,
          [&](const RowRun& run) { LinearRowsTyped<DType::kF16>(a, run.begin, run.end); });
    case DType::kF32:
      return ForRowRuns(
          a.w.rows, stream ? kStreams : kRows, min_rows, parallel,
          [&](const RowRun& run) { LinearRowsTyped<DType::kF32>(a, run.begin, run.end); });
    case DType::kI8:  // Never: ops.cc sends int8 weights to linear_q8.
      return;
  }
}

template <DType kType>
DSV2_AVX2 void AxpyTyped(float alpha, const void* w, int64_t n, float* y) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, Load8<kType>(w, i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += alpha * LoadAsFloat(w, kType, i);
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

// Four accumulators over 32-wide steps, then 8-wide steps into the first,
// then a zero-padded tail; summed as (0 + 1) + (2 + 3), then Reduce8.
DSV2_AVX2 float Dot(const float* a, const float* b, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      acc[j] =
          _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * j), _mm256_loadu_ps(b + i + 8 * j), acc[j]);
    }
  }
  for (; i + 8 <= n; i += 8) {
    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc[0]);
  }
  if (i < n) {
    const __m256i mask = TailMask(n - i);
    acc[0] =
        _mm256_fmadd_ps(_mm256_maskload_ps(a + i, mask), _mm256_maskload_ps(b + i, mask), acc[0]);
  }
  return Reduce8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

}  // namespace

const IsaKernels* Avx2Kernels() {
  static const IsaKernels kernels{"avx2", Linear, Axpy, Dot, LinearQ8Avx2};
  return &kernels;
}

}  // namespace dsv2::cpu::internal

#else  // Not x86: no such kernels.

#include "kernels/cpu/linear_kernels.h"

namespace dsv2::cpu::internal {
const IsaKernels* Avx2Kernels() { return nullptr; }
}  // namespace dsv2::cpu::internal

#endif
