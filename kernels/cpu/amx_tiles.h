// Internal to kernels/cpu: the AMX tile instructions and the per-thread
// scratch shared by the tile-unit kernels (linear_amx.cc: bf16 weights;
// linear_q8_amx.cc: int8 weights). x86-64 only.
//
// Inline assembly rather than the compiler's intrinsics: GCC's name their
// tile register by pasting the macro argument's text, which a template
// parameter is not.
#pragma once

#if defined(__x86_64__)

#include <cstdint>
#include <cstdlib>
#include <memory>

#include "kernels/cpu/avx512_intrinsics.h"

#define DSV2_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define DSV2_AMX_INLINE DSV2_AMX inline __attribute__((always_inline))

namespace dsv2::cpu::internal::amx {

// Every tile the kernels use has 16 rows.
inline constexpr int kTileRows = 16;

// Configures the eight tile registers: 16 rows each, tile t `bytes_per_row[t]`
// bytes a row.
inline void LoadTileConfig(const uint16_t (&bytes_per_row)[8]) {
  struct alignas(64) {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t bytes_per_row[16] = {};
    uint8_t rows[16] = {};
  } config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kTileRows;
    config.bytes_per_row[t] = bytes_per_row[t];
  }
  asm volatile("ldtilecfg %0" ::"m"(config));
}

inline void ReleaseTiles() { asm volatile("tilerelease" ::: "memory"); }

template <int kTile>
DSV2_AMX_INLINE void TileZero() {
  asm volatile("tilezero %%tmm%c0" ::"i"(kTile));
}

template <int kTile>
DSV2_AMX_INLINE void TileLoad(const void* base, int64_t stride) {
  asm volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(stride), "i"(kTile) : "memory");
}

template <int kTile>
DSV2_AMX_INLINE void TileStore(void* base, int64_t stride) {
  asm volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(stride), "i"(kTile) : "memory");
}

// A 64-byte aligned buffer of at least `words` 32-bit words, grown as
// needed (its users keep one per thread).
class AlignedScratch {
 public:
  uint32_t* Get(int64_t words) {
    if (words > words_) {
      data_.reset(static_cast<uint32_t*>(std::aligned_alloc(64, RoundedBytes(words))));
      words_ = words;
    }
    return data_.get();
  }
  void TrimTo(size_t bytes) {
    if (RoundedBytes(words_) > bytes) {
      data_.reset();
      words_ = 0;
    }
  }

 private:
  static size_t RoundedBytes(int64_t words) { return (words * 4 + 63) / 64 * 64; }
  struct Free {
    void operator()(uint32_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint32_t, Free> data_;
  int64_t words_ = 0;
};

}  // namespace dsv2::cpu::internal::amx

#endif
