// AMX implementation of the bf16 Linear (CPUs with AMX-TILE, AMX-BF16 and
// AMX-INT8: Intel Sapphire Rapids and later), and the "amx" kernel set: this
// Linear, the int8 Linear of linear_q8_amx.cc, and the AVX-512 kernels for
// every other op, for Linear on f16 and f32 weights, and for the bf16
// Linear of routed experts' matrices (WeightMatrix::routed).
//
// The tile unit multiplies bf16 by bf16 only, and the activations are
// float32. Each input is therefore split exactly into three bf16 parts,
// x = h + m + l (h: x's top 16 bits; m: the top 16 bits of the remainder;
// l: what is left, at most 8 significant bits), so that every product of a
// weight and a part is exact in float32, as the float32 kernels' products
// are; only the summation differs.
//
// Accumulation structure of every output (fixed for this ISA): the weight
// row and each part of the input, in steps of 32 columns from k = 0 (the last
// partial step zero in both operands), go through one tdpbf16ps per step
// into one float32 tile element per part, in the tile unit's own order;
// then y = h-sum + (m-sum + l-sum). A tile element depends only on its weight
// row and its column of the input tile, so any tiling over rows and tokens
// gives the same bits, for every batch size: decode goes through the tile
// unit too.
//
// Operands. A (weights): 16 rows × 32 bf16, loaded straight from the
// checkpoint's rows or from a copy (zero-padded for the matrix's last
// partial tile of rows and for the last partial step of k). B (inputs): 16 pairs of k ×
// 3·min(n, 5) columns, packed once per call: columns 3t, 3t+1, 3t+2 hold
// token t's parts h, m, l, up to five tokens per tile. C: 16 rows × as many
// columns, float32.
//
// Blocking (Layout, TileMap). With one tile of tokens (decode: up to 5
// tokens) a thread's rows go two row tiles at a time, and with two tiles one
// row tile at a time for both, over every step of k; these chunks have at
// most two accumulators and alternate their weight and input registers with
// the step, so that loads run ahead of the products. With more tokens, two
// row tiles at a time serve pairs of token tiles (2 × 2 accumulators: all 8
// registers), in blocks of 32 token tiles; each chunk's weights are first
// copied into a panel of whole, aligned tiles (from memory in the first
// block), which the block's token tiles then read from L2 (straight from the
// matrix, a tile's rows are 1-20 KiB apart and, in checkpoints whose data is
// not 64-byte aligned, each straddles two cache lines).
//
// Why routed experts stay on AVX-512 (docs/performance.md, "AMX"): with one
// to five tokens the tile loop reads weights from memory 7-10% slower than the
// AVX-512 streaming kernel, and a routed expert sees that few tokens at
// every batch size, while the matrices that see the whole batch (the
// attention projections, dense and shared MLPs, the LM head) are
// compute-bound from a few tens of tokens on, where the tile unit is 1.4-2x
// faster. Batch invariance rules out choosing by token count; choosing by
// matrix keeps it.

#if defined(__x86_64__)

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/amx_tiles.h"
#include "kernels/cpu/linear_kernels.h"

namespace dsv2::cpu::internal {
namespace {

using amx::AlignedScratch;
using amx::kTileRows;  // Weight rows per A tile; pairs of k per B tile.
using amx::ReleaseTiles;
using amx::TileLoad;
using amx::TileStore;
using amx::TileZero;

constexpr int64_t kStep = 32;    // Columns of k per tile step.
constexpr int kParts = 3;        // h, m, l.
constexpr int kGroupTokens = 5;  // Most tokens per B tile (3 columns each).
constexpr int64_t kTileBytes = 1024;

// Tokens go in blocks of this many token tiles (160 tokens): each chunk's
// weights are copied into its panel once per block, which then serves all
// of the block's token tiles. (Blocks sized for the packed inputs to stay in
// L2 were 10-40% slower: for long rows, k = 10944, that is two token tiles a
// block, and copying the panel dominated.)
constexpr int64_t kBlockTokenTiles = 32;

// ---- Tile registers ----------------------------------------------------------

// How a call uses the eight tile registers, by how many token tiles it has
// (TileMap has the registers of each chunk).
enum class Layout {
  kOneTokenTile,   // Accumulators 0-1, weights 2-5, inputs 6-7.
  kTwoTokenTiles,  // Accumulators 0-1, weights 2-3, inputs 4-7.
  kMore,           // Accumulators 0-3, weights 4-5, inputs 6-7.
};

// Weight tiles 64 bytes a row (32 bf16), input and accumulator tiles
// `columns` 32-bit words.
void LoadTileConfig(Layout layout, int columns) {
  const int first_weights = layout == Layout::kMore ? 4 : 2;
  const int weight_tiles = layout == Layout::kOneTokenTile ? 4 : 2;
  uint16_t bytes_per_row[8];
  for (int t = 0; t < 8; ++t) {
    const bool weights = t >= first_weights && t < first_weights + weight_tiles;
    bytes_per_row[t] = static_cast<uint16_t>(weights ? 64 : columns * 4);
  }
  amx::LoadTileConfig(bytes_per_row);
}

// C += A · B.
template <int kC, int kA, int kB>
DSV2_AMX_INLINE void TileDot() {
  asm volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(kC), "i"(kA), "i"(kB));
}

// ---- Inputs -----------------------------------------------------------------

int64_t Steps(int64_t k) { return (k + kStep - 1) / kStep; }
int64_t Groups(int64_t n) { return (n + kGroupTokens - 1) / kGroupTokens; }
// Columns of the input and accumulator tiles: 3 per token of a full group.
int Columns(int64_t n) { return kParts * static_cast<int>(std::min<int64_t>(n, kGroupTokens)); }

// The packed inputs: [group of up to 5 tokens][step][pair of k][column],
// 32-bit words each holding the bf16 parts of an even (low half) and an odd
// (high half) element of k; `columns` words per pair.
DSV2_AMX void PackInputs(const LinearArgs& a, int columns, uint32_t* packed) {
  const int64_t k = a.w.cols, steps = Steps(k), group_words = steps * kTileRows * columns;
  // Only a last, partial group has columns that no token writes.
  if (a.n % kGroupTokens != 0 && a.n > kGroupTokens) {
    std::fill_n(packed + (a.n / kGroupTokens) * group_words, group_words, 0u);
  }
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  // Word j of the result holds the high halves of element 2j (low) and 2j+1
  // (high) of the 32 floats in (lo, hi).
  alignas(64) int16_t pair_index[32];
  for (int j = 0; j < 16; ++j) {
    pair_index[2 * j] = static_cast<int16_t>(4 * j + 1);
    pair_index[2 * j + 1] = static_cast<int16_t>(4 * j + 3);
  }
  const __m512i pairs = _mm512_load_si512(pair_index);
  // Scatter offsets: pair j of a step goes to row j of the tile.
  const __m512i rows =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(columns));
  for (int64_t t = 0; t < a.n; ++t) {
    const float* x = a.x + t * a.x_stride;
    uint32_t* tile = packed + (t / kGroupTokens) * group_words + (t % kGroupTokens) * kParts;
    for (int64_t s = 0; s < steps; ++s, tile += kTileRows * columns) {
      const int64_t i = s * kStep;
      const int64_t left = k - i;
      const __mmask16 lo_mask = left >= 16 ? 0xffff : static_cast<__mmask16>((1u << left) - 1);
      const __mmask16 hi_mask = left >= 32   ? 0xffff
                                : left <= 16 ? 0
                                             : static_cast<__mmask16>((1u << (left - 16)) - 1);
      __m512i rest[2] = {_mm512_castps_si512(_mm512_maskz_loadu_ps(lo_mask, x + i)),
                         _mm512_castps_si512(_mm512_maskz_loadu_ps(hi_mask, x + i + 16))};
      for (int p = 0; p < kParts; ++p) {
        __m512i part[2];
        for (int h = 0; h < 2; ++h) {
          part[h] = _mm512_and_si512(rest[h], high_half);
          rest[h] = _mm512_castps_si512(
              _mm512_sub_ps(_mm512_castsi512_ps(rest[h]), _mm512_castsi512_ps(part[h])));
        }
        _mm512_i32scatter_epi32(tile + p, rows, _mm512_permutex2var_epi16(part[0], pairs, part[1]),
                                4);
      }
    }
  }
}

// ---- The tile loop ----------------------------------------------------------

// One call's operands as the tile loop sees them.
struct Operands {
  const LinearArgs& a;
  const uint32_t* packed;
  int columns;         // Words per row of input and accumulator tiles.
  int64_t steps;       // Of k.
  int64_t full_steps;  // Steps wholly inside k.
  int64_t stride;      // Bytes between weight rows.

  const uint32_t* Inputs(int64_t group, int64_t s) const {
    return packed + (group * steps + s) * kTileRows * columns;
  }
};

// What one chunk computes: kR row tiles from `row` (the first `valid_rows`
// of them real rows) × kG token tiles from group `group`.
struct Chunk {
  int64_t row = 0;
  int64_t valid_rows = 0;
  int64_t group = 0;
  // The chunk's weight tiles copied out, [row tile][step]: set for the
  // chunks of Layout::kMore, which read their weights only from it.
  const uint16_t* panel = nullptr;
};

// Copies the weight tile of the `valid` rows from `row` at step s into
// `tile` (16 rows of 64 bytes), zero-padded past the rows and past k (the
// bytes past a row may be another tensor's, or unmapped).
DSV2_AMX_INLINE void CopyWeightTile(const Operands& op, int64_t row, int64_t valid, int64_t s,
                                    uint16_t* tile) {
  const char* first = op.a.w.row_ptr(row) + s * kStep * 2;
  if (valid == kTileRows && s < op.full_steps) {
#pragma GCC unroll 16
    for (int i = 0; i < kTileRows; ++i) {
      _mm512_store_si512(tile + i * kStep, _mm512_loadu_si512(first + i * op.stride));
    }
    return;
  }
  std::memset(tile, 0, kTileBytes);
  const int64_t cols = std::min<int64_t>(kStep, op.a.w.cols - s * kStep);
  for (int64_t i = 0; i < valid; ++i) {
    std::memcpy(tile + i * kStep, first + i * op.stride, cols * 2);
  }
}

// The registers of a kR × kG chunk (kR, kG ≤ 2) by the step's parity. With
// one or two token tiles, a chunk's weight and input registers alternate
// with the step's parity, so that a step's loads need not wait for the
// previous step's products to have read their tiles; with more, the four
// accumulators of 2 × 2 chunks take half of the registers and nothing
// alternates.
template <int kR, int kG, Layout kLayout>
struct TileMap {
  static_assert(kR >= 1 && kR <= 2 && kG >= 1 && kG <= 2);
  static_assert(kLayout != Layout::kOneTokenTile || kG == 1);
  static_assert(kLayout != Layout::kTwoTokenTiles || (kR == 1 && kG == 2));
  static constexpr int A(int parity, int r) {
    switch (kLayout) {
      case Layout::kOneTokenTile:
        return 2 + 2 * parity + r;
      case Layout::kTwoTokenTiles:
        return 2 + parity;
      case Layout::kMore:
        break;
    }
    return 4 + r;
  }
  static constexpr int B(int parity, int g) {
    switch (kLayout) {
      case Layout::kOneTokenTile:
        return 6 + parity;
      case Layout::kTwoTokenTiles:
        return 4 + 2 * parity + g;
      case Layout::kMore:
        break;
    }
    return 6 + g;
  }
  static constexpr int C(int r, int g) { return kLayout == Layout::kMore ? 2 * r + g : r + g; }
};

template <int kR, int kG, Layout kLayout>
class ChunkKernel {
 public:
  DSV2_AMX ChunkKernel(const Operands& op, const Chunk& chunk) : op_(op), chunk_(chunk) {
    for (int r = 0; r < kR; ++r) {
      valid_[r] = std::min<int64_t>(kTileRows, chunk.valid_rows - r * kTileRows);
      rows_[r] = op.a.w.row_ptr(chunk.row + r * kTileRows);
      direct_steps_[r] = valid_[r] == kTileRows ? op.full_steps : 0;
    }
  }

  DSV2_AMX void Run() {
    TileZero<Map::C(0, 0)>();
    if constexpr (kG == 2) TileZero<Map::C(0, 1)>();
    if constexpr (kR == 2) TileZero<Map::C(1, 0)>();
    if constexpr (kR == 2 && kG == 2) TileZero<Map::C(1, 1)>();
    int64_t s = 0;
    for (; s + 2 <= op_.steps; s += 2) {
      Step<0>(s);
      Step<1>(s + 1);
    }
    if (s < op_.steps) Step<0>(s);
    StoreOutputs();
  }

 private:
  using Map = TileMap<kR, kG, kLayout>;

  // The weight tile of row tile r at step s: from the chunk's panel (many
  // token tiles), else straight from the matrix, or for a partial tile of
  // rows or the last partial step of k from a zero-padded copy (the bytes
  // past a row may be another tensor's, or unmapped).
  template <int kTile>
  DSV2_AMX_INLINE void LoadWeights(int r, int64_t s) {
    if constexpr (kLayout == Layout::kMore) {
      return TileLoad<kTile>(chunk_.panel + (r * op_.steps + s) * kTileRows * kStep, kStep * 2);
    }
    if (s < direct_steps_[r]) return TileLoad<kTile>(rows_[r] + s * kStep * 2, op_.stride);
    uint16_t* tile = staged_[kTile % 2];
    CopyWeightTile(op_, chunk_.row + r * kTileRows, valid_[r], s, tile);
    TileLoad<kTile>(tile, kStep * 2);
  }

  template <int kParity>
  DSV2_AMX_INLINE void Step(int64_t s) {
    const int64_t input_stride = op_.columns * 4;
    TileLoad<Map::B(kParity, 0)>(op_.Inputs(chunk_.group, s), input_stride);
    if constexpr (kG == 2)
      TileLoad<Map::B(kParity, 1)>(op_.Inputs(chunk_.group + 1, s), input_stride);
    LoadWeights<Map::A(kParity, 0)>(0, s);
    TileDot<Map::C(0, 0), Map::A(kParity, 0), Map::B(kParity, 0)>();
    if constexpr (kG == 2) TileDot<Map::C(0, 1), Map::A(kParity, 0), Map::B(kParity, 1)>();
    if constexpr (kR == 2) {
      LoadWeights<Map::A(kParity, 1)>(1, s);
      TileDot<Map::C(1, 0), Map::A(kParity, 1), Map::B(kParity, 0)>();
      if constexpr (kG == 2) TileDot<Map::C(1, 1), Map::A(kParity, 1), Map::B(kParity, 1)>();
    }
  }

  // y = h + (m + l) per token.
  DSV2_AMX void StoreOutputs() {
    alignas(64) float c[4][kTileRows * 16];
    TileStore<Map::C(0, 0)>(c[Map::C(0, 0)], 64);
    if constexpr (kG == 2) TileStore<Map::C(0, 1)>(c[Map::C(0, 1)], 64);
    if constexpr (kR == 2) TileStore<Map::C(1, 0)>(c[Map::C(1, 0)], 64);
    if constexpr (kR == 2 && kG == 2) TileStore<Map::C(1, 1)>(c[Map::C(1, 1)], 64);
    const LinearArgs& a = op_.a;
    for (int r = 0; r < kR; ++r) {
      const int64_t row0 = chunk_.row + r * kTileRows;
      for (int g = 0; g < kG; ++g) {
        const float* sums = c[Map::C(r, g)];
        const int64_t t0 = (chunk_.group + g) * kGroupTokens;
        const int tokens = static_cast<int>(std::min<int64_t>(kGroupTokens, a.n - t0));
        for (int64_t i = 0; i < valid_[r]; ++i, sums += 16) {
          for (int t = 0; t < tokens; ++t) {
            a.y[(t0 + t) * a.w.rows + row0 + i] =
                sums[kParts * t] + (sums[kParts * t + 1] + sums[kParts * t + 2]);
          }
        }
      }
    }
  }

  const Operands& op_;
  const Chunk& chunk_;
  int64_t valid_[kR];
  const char* rows_[kR];
  int64_t direct_steps_[kR];  // Steps read straight from the matrix.
  alignas(64) uint16_t staged_[2][kTileRows * kStep];
};

template <int kR, int kG, Layout kLayout = Layout::kMore>
DSV2_AMX void RunChunk(const Operands& op, const Chunk& chunk) {
  ChunkKernel<kR, kG, kLayout>(op, chunk).Run();
}

// Rows [row_begin, row_end) (whole row tiles but at the matrix's end).
DSV2_AMX void LinearRows(const Operands& op, int64_t row_begin, int64_t row_end) {
  const int64_t groups = Groups(op.a.n);
  const Layout layout = groups == 1   ? Layout::kOneTokenTile
                        : groups == 2 ? Layout::kTwoTokenTiles
                                      : Layout::kMore;
  LoadTileConfig(layout, op.columns);
  if (layout == Layout::kOneTokenTile) {
    // Two row tiles at a time.
    for (int64_t row = row_begin; row < row_end; row += 2 * kTileRows) {
      const int64_t valid = std::min<int64_t>(2 * kTileRows, row_end - row);
      if (valid > kTileRows) {
        RunChunk<2, 1, Layout::kOneTokenTile>(op, Chunk{row, valid, 0});
      } else {
        RunChunk<1, 1, Layout::kOneTokenTile>(op, Chunk{row, valid, 0});
      }
    }
    return ReleaseTiles();
  }
  if (layout == Layout::kTwoTokenTiles) {
    // One row tile at a time, for both token tiles.
    for (int64_t row = row_begin; row < row_end; row += kTileRows) {
      RunChunk<1, 2, Layout::kTwoTokenTiles>(
          op, Chunk{row, std::min<int64_t>(kTileRows, row_end - row), 0});
    }
    return ReleaseTiles();
  }
  // Two row tiles at a time, each weight tile serving a pair of token tiles,
  // from the chunk's panel.
  constexpr int64_t kChunkRows = 2 * kTileRows;
  thread_local AlignedScratch panel_scratch;
  uint16_t* panel =
      reinterpret_cast<uint16_t*>(panel_scratch.Get(2 * op.steps * kTileRows * kStep / 2));
  for (int64_t g0 = 0; g0 < groups; g0 += kBlockTokenTiles) {
    const int64_t g1 = std::min(groups, g0 + kBlockTokenTiles);
    for (int64_t row = row_begin; row < row_end; row += kChunkRows) {
      const int64_t valid = std::min<int64_t>(kChunkRows, row_end - row);
      for (int64_t r = 0; r * kTileRows < valid; ++r) {
        const int64_t tile_rows = std::min<int64_t>(kTileRows, valid - r * kTileRows);
        for (int64_t s = 0; s < op.steps; ++s) {
          CopyWeightTile(op, row + r * kTileRows, tile_rows, s,
                         panel + (r * op.steps + s) * kTileRows * kStep);
        }
      }
      for (int64_t g = g0; g < g1; g += 2) {
        const Chunk chunk{row, valid, g, panel};
        if (g + 2 <= g1) {
          if (valid > kTileRows) {
            RunChunk<2, 2>(op, chunk);
          } else {
            RunChunk<1, 2>(op, chunk);
          }
        } else if (valid > kTileRows) {
          RunChunk<2, 1>(op, chunk);
        } else {
          RunChunk<1, 1>(op, chunk);
        }
      }
    }
  }
  ReleaseTiles();
}

void Linear(const LinearArgs& a, bool parallel) {
  if (a.w.dtype != DType::kBF16 || a.w.routed) return Avx512Kernels()->linear(a, parallel);
  if (a.n == 0 || a.w.rows == 0) return;
  const int columns = Columns(a.n);
  const int64_t steps = Steps(a.w.cols);
  // Per calling thread, as in the other kernels: the pool's threads read the
  // caller's buffer while it waits.
  thread_local AlignedScratch scratch;
  uint32_t* packed = scratch.Get(Groups(a.n) * steps * kTileRows * columns);
  PackInputs(a, columns, packed);
  const Operands op{a, packed, columns, steps, a.w.cols / kStep, a.w.cols * 2};
  // At least ~64K multiply-adds per run, so that small products stay on one thread.
  const int64_t min_rows = 65536 / std::max<int64_t>(1, a.w.cols * a.n);
  ForRowRuns(a.w.rows, kTileRows, min_rows, parallel,
             [&](const RowRun& run) { LinearRows(op, run.begin, run.end); });
  scratch.TrimTo(kScratchKeepBytes);
}

// Linux gives a process the AMX tile state only on request. Every CPU with
// AMX-BF16 so far also has AMX-INT8; both are required.
bool AmxUsable() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  const bool amx_bf16 = (edx & (1u << 22)) != 0, amx_tile = (edx & (1u << 24)) != 0;
  const bool amx_int8 = (edx & (1u << 25)) != 0;
  if (!amx_bf16 || !amx_int8 || !amx_tile || Avx512Kernels() == nullptr) return false;
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

}  // namespace

const IsaKernels* AmxKernels() {
  static const IsaKernels* const kernels = []() -> const IsaKernels* {
    if (!AmxUsable()) return nullptr;
    const IsaKernels* avx512 = Avx512Kernels();
    static const IsaKernels amx{"amx", Linear, avx512->axpy, avx512->dot, LinearQ8Amx};
    return &amx;
  }();
  return kernels;
}

}  // namespace dsv2::cpu::internal

#else  // Not x86-64: no such kernels.

#include "kernels/cpu/linear_kernels.h"

namespace dsv2::cpu::internal {
const IsaKernels* AmxKernels() { return nullptr; }
}  // namespace dsv2::cpu::internal

#endif
