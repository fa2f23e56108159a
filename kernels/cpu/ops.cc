#include "kernels/cpu/ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/base/thread_pool.h"

namespace dsv2::cpu {
namespace {

const bool kHaveAvx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                       __builtin_cpu_supports("f16c");

// ---- AVX2/FMA -------------------------------------------------------------
// Loads 8 consecutive weights as float32.
template <DType kType>
__attribute__((target("avx2,fma,f16c"))) inline __m256 Load8(const void* base, int64_t i) {
  if constexpr (kType == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    const __m128i half =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (kType == DType::kF16) {
      return _mm256_cvtph_ps(half);
    } else {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
    }
  }
}

__attribute__((target("avx2,fma"))) inline float HorizontalSum(__m256 v) {
  const __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  return _mm_cvtss_f32(_mm_add_ss(sum2, _mm_movehdup_ps(sum2)));
}

// Dot products of one weight row with kTokens rows of x. Every token's sum
// has the same structure (four accumulators over 32-wide steps, then 8-wide
// steps, then a scalar tail) whatever kTokens is, so results are identical
// however tokens are grouped.
template <DType kType, int kTokens>
__attribute__((target("avx2,fma,f16c"))) void DotRowAvx2(const void* w, const float* const* x,
                                                         int64_t k, float* out) {
  __m256 acc[kTokens][4];
  for (int t = 0; t < kTokens; ++t) {
    for (int a = 0; a < 4; ++a) acc[t][a] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m256 w0 = Load8<kType>(w, i), w1 = Load8<kType>(w, i + 8);
    const __m256 w2 = Load8<kType>(w, i + 16), w3 = Load8<kType>(w, i + 24);
    for (int t = 0; t < kTokens; ++t) {
      acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + i), acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[t] + i + 8), acc[t][1]);
      acc[t][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x[t] + i + 16), acc[t][2]);
      acc[t][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x[t] + i + 24), acc[t][3]);
    }
  }
  for (; i + 8 <= k; i += 8) {
    const __m256 w0 = Load8<kType>(w, i);
    for (int t = 0; t < kTokens; ++t) {
      acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + i), acc[t][0]);
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    float tail = 0.0f;
    for (int64_t j = i; j < k; ++j) tail += LoadAsFloat(w, kType, j) * x[t][j];
    const __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]),
                                     _mm256_add_ps(acc[t][2], acc[t][3]));
    out[t] = HorizontalSum(sum) + tail;
  }
}

template <DType kType>
void LinearRowsAvx2(const float* x, int64_t n, int64_t x_stride, const WeightMatrix& w,
                    int64_t row_begin, int64_t row_end, float* y) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const char* row = w.row_ptr(r);
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
      const float* xs[4] = {x + t * x_stride, x + (t + 1) * x_stride, x + (t + 2) * x_stride,
                            x + (t + 3) * x_stride};
      float out[4];
      DotRowAvx2<kType, 4>(row, xs, w.cols, out);
      for (int j = 0; j < 4; ++j) y[(t + j) * w.rows + r] = out[j];
    }
    for (; t < n; ++t) {
      const float* xs[1] = {x + t * x_stride};
      DotRowAvx2<kType, 1>(row, xs, w.cols, &y[t * w.rows + r]);
    }
  }
}

template <DType kType>
__attribute__((target("avx2,fma,f16c"))) void AxpyRowAvx2(float alpha, const void* w, int64_t n,
                                                          float* y) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, Load8<kType>(w, i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += alpha * LoadAsFloat(w, kType, i);
}

__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b, int64_t n) {
  const float* xs[1] = {b};
  float out;
  DotRowAvx2<DType::kF32, 1>(a, xs, n, &out);
  return out;
}

// ---- Portable ---------------------------------------------------------------
float DotRowPortable(const void* w, DType dtype, const float* x, int64_t k) {
  float partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < k; ++i) partial[i % 8] += LoadAsFloat(w, dtype, i) * x[i];
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
         ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

void LinearRows(const float* x, int64_t n, int64_t x_stride, const WeightMatrix& w,
                int64_t row_begin, int64_t row_end, float* y) {
  if (kHaveAvx2) {
    switch (w.dtype) {
      case DType::kBF16: return LinearRowsAvx2<DType::kBF16>(x, n, x_stride, w, row_begin, row_end, y);
      case DType::kF16: return LinearRowsAvx2<DType::kF16>(x, n, x_stride, w, row_begin, row_end, y);
      case DType::kF32: return LinearRowsAvx2<DType::kF32>(x, n, x_stride, w, row_begin, row_end, y);
    }
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t t = 0; t < n; ++t) {
      y[t * w.rows + r] = DotRowPortable(w.row_ptr(r), w.dtype, x + t * x_stride, w.cols);
    }
  }
}

void AxpyRow(float alpha, const void* w, DType dtype, int64_t n, float* y) {
  if (kHaveAvx2) {
    switch (dtype) {
      case DType::kBF16: return AxpyRowAvx2<DType::kBF16>(alpha, w, n, y);
      case DType::kF16: return AxpyRowAvx2<DType::kF16>(alpha, w, n, y);
      case DType::kF32: return AxpyRowAvx2<DType::kF32>(alpha, w, n, y);
    }
  }
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * LoadAsFloat(w, dtype, i);
}

}  // namespace

bool UsingAvx2() { return kHaveAvx2; }

void Linear(const float* x, int64_t n, const WeightMatrix& w, float* y, int64_t x_stride,
            bool parallel) {
  if (x_stride == 0) x_stride = w.cols;
  if (!parallel) return LinearRows(x, n, x_stride, w, 0, w.rows, y);
  // At least ~32K multiply-adds per chunk, so small products stay on one thread.
  const int64_t min_rows = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, w.cols * n));
  ThreadPool::Default().ParallelFor(w.rows, min_rows, [&](int64_t begin, int64_t end) {
    LinearRows(x, n, x_stride, w, begin, end, y);
  });
}

void LinearTransposedAccumulate(const float* a, const WeightMatrix& w, float* y) {
  for (int64_t r = 0; r < w.rows; ++r) AxpyRow(a[r], w.row_ptr(r), w.dtype, w.cols, y);
}

float Dot(const float* a, const float* b, int64_t n) {
  if (kHaveAvx2) return DotAvx2(a, b, n);
  return DotRowPortable(a, DType::kF32, b, n);
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  AxpyRow(alpha, x, DType::kF32, n, y);
}

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* y,
             int64_t x_stride, int64_t y_stride) {
  if (x_stride == 0) x_stride = dim;
  if (y_stride == 0) y_stride = dim;
  for (int64_t t = 0; t < n; ++t) {
    const float* in = x + t * x_stride;
    float* out = y + t * y_stride;
    const float mean_square = Dot(in, in, dim) / static_cast<float>(dim);
    const float inv = 1.0f / std::sqrt(mean_square + eps);
    for (int64_t i = 0; i < dim; ++i) out[i] = weight[i] * (in[i] * inv);
  }
}

void Softmax(float* x, int64_t n) {
  const float max = *std::max_element(x, x + n);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void EmbeddingRow(const WeightMatrix& table, int64_t row, float* out) {
  ConvertToFloat(table.row_ptr(row), table.dtype, table.cols, out);
}

}  // namespace dsv2::cpu
