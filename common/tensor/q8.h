// The int8 block format of dsv2-int8 checkpoints ("quant_method":
// "dsv2-int8" in config.json; docs/performance.md, "8-bit weights"): a
// vector of n values is stored as n int8 integers q in [-127, 127] plus one
// float32 scale per block of kQ8Block consecutive values (the last block may
// be partial), and value ≈ q · scale. The int8 Linear quantizes its
// activations the same way, per token, so that each block's dot product is
// an exact int32 sum.
#pragma once

#include <cstdint>

namespace dsv2 {

inline constexpr int64_t kQ8Block = 32;

// Blocks (and so scales) of a vector of n values.
inline constexpr int64_t Q8Blocks(int64_t n) { return (n + kQ8Block - 1) / kQ8Block; }

// Quantizes x[0, n) block by block: scales[b] = absmax(block b) / 127 and
// q[i] = round-half-even(x[i] · (127 / absmax)), so the largest magnitude of
// a block maps to ±127. An all-zero block has scale 0 and zeros. A block
// holding a NaN or an infinity has scale NaN and zeros, so that a product
// with it is NaN rather than a silently finite number. Writes Q8Blocks(n)
// scales. Returns false when some block was not finite.
bool QuantizeQ8(const float* x, int64_t n, int8_t* q, float* scales);

}  // namespace dsv2
