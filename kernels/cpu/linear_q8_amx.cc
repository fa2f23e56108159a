// AMX implementation of the int8 Linear (dsv2-int8 weights, common/tensor/q8.h;
// CPUs with AMX-TILE and AMX-INT8) of the "amx" kernel set, for calls of two
// tokens or more on any matrix, routed experts' too; one token (decode of a
// single sequence) takes the AVX-512 streaming kernel, which reads the
// weights closer to the memory bandwidth. Both give the same bits.
//
// Accumulation structure of every output (linear_q8_avx512.cc's): k goes in
// steps of two blocks (64 columns) from 0. Each block's integer dot product
// is exact in int32 (tdpbssd), converted to float32 (exact: its magnitude is
// at most 32 · 128 · 127 < 2^24) and fused-multiply-added, times the float32
// product w_scale · x_scale of the block, into one of two float32 sums: the
// even blocks' and the odd blocks' (a missing last block adds 0 · 0);
// y = even + odd. An output depends only on its weight row and its token, so
// any tiling over rows and tokens gives the same bits at every batch size.
//
// Operands of a step. A (weights): 16 rows × 64 bytes, straight from the
// checkpoint's rows or, for a matrix's last partial tile of rows and for a
// last partial step of k, from a zero-padded copy. B (inputs, packed once
// per call for groups of up to 8 tokens): 16 rows (k / 4) × 16 columns of 4
// bytes; column c < 8 holds token c's first block of the step in rows 0-7
// and zeros in rows 8-15, column 8 + c the same token's second block in rows
// 8-15 and zeros in rows 0-7. So C (16 rows × 16 int32) holds in columns 0-7
// the first block's dot products of the group's tokens and in 8-15 the
// second block's. Half of the products the tile unit computes are with
// zeros: steps of one block (K = 32) would do the same useful work per tile
// instruction but twice the float32 work below per weight byte.
//
// After each step, C goes to memory and each of its 16 rows (a weight row:
// its first block's dot products, then its second's) is added as
// fmadd(dots, w_scales · x_scales, acc): w_scales holds the row's two block
// scales (lanes 0-7 and 8-15), x_scales the tokens' (packed with the
// inputs); the row's 16-lane accumulator holds the even-block sums of the
// group's tokens in lanes 0-7 and the odd-block sums in 8-15. Consecutive
// steps alternate their tile registers, so that a step's tile product runs
// while the previous step's sums are converted.
//
// Blocking: a thread's rows go one row tile at a time through every token
// group. With one group (up to 8 tokens: decode, routed experts) each weight
// is read once, from memory, and a tile's 16 rows come from 16 runs of the
// thread's rows, row j of each (its stride is a run of rows), so that the
// tile loads read 16 sequential streams, as the AVX-512 kernel's 8 runs do,
// rather than 16 neighbouring rows 64 bytes at a time (16-21 GB/s against
// 20-24 at 4-6 tokens, docs/performance.md). With more groups a tile's rows
// are neighbours, whose 16 × k bytes the later groups read from L1 or L2
// (rows a run apart fall in the same L1 sets).

#if defined(__x86_64__)

#include <algorithm>
#include <cstring>

#include "kernels/cpu/amx_tiles.h"
#include "kernels/cpu/linear_kernels.h"

namespace dsv2::cpu::internal {
namespace {

using amx::kTileRows;

constexpr int64_t kStep = 2 * kQ8Block;  // Columns of k per tile step: two blocks.
constexpr int kGroupTokens = 8;          // Tokens per B tile.
constexpr int64_t kTileWords = 16 * 16;  // Every tile: 16 rows of 64 bytes.
// How far ahead in its row each weight row is prefetched while the first
// group reads it from memory.
constexpr int64_t kPrefetchBytes = 256;

int64_t Steps(int64_t k) { return (k + kStep - 1) / kStep; }
int64_t Groups(int64_t n) { return (n + kGroupTokens - 1) / kGroupTokens; }

// C += A · B, signed bytes.
template <int kC, int kA, int kB>
DSV2_AMX_INLINE void TileDot() {
  asm volatile("tdpbssd %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(kC), "i"(kA), "i"(kB));
}

// Tile registers by the step's parity: C 0-1, A (weights) 2-3, B (inputs) 4-5.
template <int kParity>
struct Regs {
  static constexpr int kC = kParity, kA = 2 + kParity, kB = 4 + kParity;
};

// The packed inputs, one B tile per [group][step], and their scales
// [group][step][16] (lane c: token c's first block of the step, 8 + c: its
// second; 0 for missing tokens and blocks).
DSV2_AMX void PackInputs(const LinearQ8Args& a, int64_t steps, uint32_t* packed, float* scales) {
  const int64_t blocks = Q8Blocks(a.w.cols);
  std::fill_n(packed, Groups(a.n) * steps * kTileWords, 0u);
  std::fill_n(scales, Groups(a.n) * steps * 16, 0.0f);
  // Word r of a step (its bytes 4r..4r+3) goes to row r: to column c for
  // r < 8 (the first block), to column 8 + c after.
  const __m512i offsets =
      _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 136, 152, 168, 184, 200, 216, 232, 248);
  for (int64_t t = 0; t < a.n; ++t) {
    const int8_t* x = a.x_q + t * a.x_stride;
    const float* xs = a.x_scales + t * blocks;
    const int64_t c = t % kGroupTokens, first = t / kGroupTokens * steps;
    for (int64_t s = 0; s < steps; ++s) {
      const bool second = 2 * s + 1 < blocks;
      // x is readable (zero past k) to the end of its last block, not beyond.
      const __m512i words = _mm512_maskz_loadu_epi32(second ? 0xffff : 0x00ff, x + s * kStep);
      _mm512_i32scatter_epi32(packed + (first + s) * kTileWords + c, offsets, words, 4);
      float* lanes = scales + (first + s) * 16 + c;
      lanes[0] = xs[2 * s];
      if (second) lanes[8] = xs[2 * s + 1];
    }
  }
}

// One call's operands as the tile loop sees them.
struct Operands {
  const LinearQ8Args& a;
  const uint32_t* packed;
  const float* x_scales;  // Packed, as above.
  int64_t steps;
  int64_t full_steps;  // Steps wholly inside k.
  int64_t blocks;      // Of a row.
};

// Rows row + m · row_step for m < valid (valid ≤ 16) times one token group
// at a time.
class RowTile {
 public:
  DSV2_AMX RowTile(const Operands& op, int64_t row, int64_t valid, int64_t row_step)
      : op_(op),
        row_(row),
        valid_(valid),
        row_step_(row_step),
        direct_steps_(valid == kTileRows ? op.full_steps : 0) {
    // A partial tile repeats its last row's scales; those sums are dropped.
    for (int m = 0; m < kTileRows; ++m) {
      w_scales_[m] = op.a.w.row_scales(Row(std::min<int64_t>(m, valid - 1)));
    }
  }

  DSV2_AMX void Run(int64_t group) {
    __m512 acc[kTileRows];
#pragma GCC unroll 16
    for (int m = 0; m < kTileRows; ++m) acc[m] = _mm512_setzero_ps();
    const int64_t steps = op_.steps;
    if (steps > 0) {
      // C of step s goes to memory before step s + 1 is issued: loads wait
      // for the store to retire, which must not wait for the next product.
      Issue<0>(group, 0);
      int64_t s = 1;
      for (; s + 2 <= steps; s += 2) {
        amx::TileStore<Regs<0>::kC>(sums_[0], 64);
        Issue<1>(group, s);
        Drain(sums_[0], group, s - 1, acc);
        amx::TileStore<Regs<1>::kC>(sums_[1], 64);
        Issue<0>(group, s + 1);
        Drain(sums_[1], group, s, acc);
      }
      amx::TileStore<Regs<0>::kC>(sums_[0], 64);
      if (s < steps) {
        Issue<1>(group, s);
        Drain(sums_[0], group, s - 1, acc);
        amx::TileStore<Regs<1>::kC>(sums_[1], 64);
        Drain(sums_[1], group, s, acc);
      } else {
        Drain(sums_[0], group, s - 1, acc);
      }
    }
    StoreOutputs(group, acc);
  }

 private:
  int64_t Row(int64_t m) const { return row_ + m * row_step_; }

  // Starts step s: C = A · B.
  template <int kParity>
  DSV2_AMX_INLINE void Issue(int64_t group, int64_t s) {
    using R = Regs<kParity>;
    if (s < direct_steps_) {
      const char* weights = op_.a.w.row_ptr(row_) + s * kStep;
      const int64_t stride = row_step_ * op_.a.w.cols;
      if (group == 0) {
#pragma GCC unroll 16
        for (int m = 0; m < kTileRows; ++m) {
          _mm_prefetch(weights + m * stride + kPrefetchBytes, _MM_HINT_T0);
        }
      }
      amx::TileLoad<R::kA>(weights, stride);
    } else {
      // Zero-padded: the bytes past a row may be another tensor's, or unmapped.
      char* tile = staged_[kParity];
      std::memset(tile, 0, sizeof(staged_[kParity]));
      const int64_t bytes = std::min<int64_t>(kStep, op_.a.w.cols - s * kStep);
      for (int64_t m = 0; m < valid_; ++m) {
        std::memcpy(tile + m * kStep, op_.a.w.row_ptr(Row(m)) + s * kStep, bytes);
      }
      amx::TileLoad<R::kA>(tile, kStep);
    }
    amx::TileLoad<R::kB>(op_.packed + (group * op_.steps + s) * kTileWords, 64);
    amx::TileZero<R::kC>();
    TileDot<R::kC, R::kA, R::kB>();
  }

  // Adds step s's products (in `dots`), scaled, into acc.
  DSV2_AMX_INLINE void Drain(const int32_t* dots, int64_t group, int64_t s,
                             __m512 (&acc)[kTileRows]) {
    const __m512 x_scales = _mm512_load_ps(op_.x_scales + (group * op_.steps + s) * 16);
    // Lanes 0-7: the row's scale of block 2s; 8-15: of block 2s + 1, 0 past the row.
    const __m512i pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __mmask16 present = 2 * s + 1 < op_.blocks ? 0x3 : 0x1;
#pragma GCC unroll 16
    for (int m = 0; m < kTileRows; ++m) {
      const __m512 w_scales =
          _mm512_permutexvar_ps(pair, _mm512_maskz_loadu_ps(present, w_scales_[m] + 2 * s));
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(dots + 16 * m)),
                               _mm512_mul_ps(w_scales, x_scales), acc[m]);
    }
  }

  // y = even-block sum + odd-block sum, per row and token.
  DSV2_AMX void StoreOutputs(int64_t group, const __m512 (&acc)[kTileRows]) {
    alignas(64) float sums[kTileRows][16];
#pragma GCC unroll 16
    for (int m = 0; m < kTileRows; ++m) _mm512_store_ps(sums[m], acc[m]);
    const LinearQ8Args& a = op_.a;
    const int64_t t0 = group * kGroupTokens;
    const int tokens = static_cast<int>(std::min<int64_t>(kGroupTokens, a.n - t0));
    for (int64_t m = 0; m < valid_; ++m) {
      for (int c = 0; c < tokens; ++c)
        a.y[(t0 + c) * a.w.rows + Row(m)] = sums[m][c] + sums[m][8 + c];
    }
  }

  const Operands& op_;
  const int64_t row_, valid_, row_step_;
  const int64_t direct_steps_;  // Steps whose weights are read straight from the matrix.
  const float* w_scales_[kTileRows];
  alignas(64) int32_t sums_[2][kTileWords];
  alignas(64) char staged_[2][kTileRows * kStep];
};

DSV2_AMX void Rows(const Operands& op, int64_t row_begin, int64_t row_end) {
  const uint16_t bytes_per_row[8] = {64, 64, 64, 64, 64, 64, 64, 64};
  amx::LoadTileConfig(bytes_per_row);
  const int64_t groups = Groups(op.a.n);
  const auto run_tile = [&](int64_t row, int64_t valid, int64_t row_step) {
    RowTile tile(op, row, valid, row_step);
    for (int64_t g = 0; g < groups; ++g) tile.Run(g);
  };
  // With one token group, tiles of 16 runs (row j of each), then the rows
  // left over; else tiles of neighbouring rows.
  const int64_t run = groups == 1 ? (row_end - row_begin) / kTileRows : 0;
  for (int64_t j = 0; j < run; ++j) run_tile(row_begin + j, kTileRows, run);
  for (int64_t row = row_begin + kTileRows * run; row < row_end; row += kTileRows) {
    run_tile(row, std::min<int64_t>(kTileRows, row_end - row), 1);
  }
  amx::ReleaseTiles();
}

}  // namespace

void LinearQ8Amx(const LinearQ8Args& a, bool parallel) {
  if (a.n <= 1) return LinearQ8Avx512(a, parallel);
  if (a.w.rows == 0) return;
  const int64_t steps = Steps(a.w.cols), tiles = Groups(a.n) * steps;
  // Per calling thread, as in the other kernels: the pool's threads read the
  // caller's buffer while it waits.
  thread_local amx::AlignedScratch scratch;
  uint32_t* packed = scratch.Get(tiles * (kTileWords + 16));
  float* x_scales = reinterpret_cast<float*>(packed + tiles * kTileWords);
  PackInputs(a, steps, packed, x_scales);
  const Operands op{a, packed, x_scales, steps, a.w.cols / kStep, Q8Blocks(a.w.cols)};
  // At least ~64K multiply-adds per run, so that small products stay on one thread.
  const int64_t min_rows = 65536 / std::max<int64_t>(1, a.w.cols * a.n);
  ForRowRuns(a.w.rows, kTileRows, min_rows, parallel,
             [&](const RowRun& run) { Rows(op, run.begin, run.end); });
  scratch.TrimTo(kScratchKeepBytes);
}

}  // namespace dsv2::cpu::internal

#endif
