#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "common/tensor/q8.h"
#include "gtest/gtest.h"

namespace dsv2::cpu {
namespace {

// A weight matrix stored in `dtype`, with the float values it represents.
struct TestMatrix {
  std::vector<uint16_t> half;
  std::vector<int8_t> q;      // kI8: the integers,
  std::vector<float> scales;  // and their scales.
  std::vector<float> full;    // Exact values of the stored weights.
  WeightMatrix view;
};

TestMatrix MakeMatrix(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  TestMatrix m;
  m.full.resize(rows * cols);
  if (dtype == DType::kI8) {
    for (float& v : m.full) v = dist(rng);
    const int64_t blocks = Q8Blocks(cols);
    m.q.resize(rows * cols);
    m.scales.resize(rows * blocks);
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeQ8(&m.full[r * cols], cols, &m.q[r * cols], &m.scales[r * blocks]);
      for (int64_t c = 0; c < cols; ++c) {
        m.full[r * cols + c] = m.q[r * cols + c] * m.scales[r * blocks + c / kQ8Block];
      }
    }
    m.view = WeightMatrix{dtype, rows, cols, m.q.data(), m.scales.data()};
    return m;
  }
  if (dtype != DType::kF32) m.half.resize(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float v = dist(rng);
    if (dtype == DType::kBF16) {
      m.half[i] = FloatToBF16(v);
      m.full[i] = BF16ToFloat(m.half[i]);
    } else if (dtype == DType::kF16) {
      m.half[i] = FloatToF16(v);
      m.full[i] = F16ToFloat(m.half[i]);
    } else {
      m.full[i] = v;
    }
  }
  m.view = WeightMatrix{dtype, rows, cols,
                        dtype == DType::kF32 ? static_cast<const void*>(m.full.data())
                                             : static_cast<const void*>(m.half.data())};
  return m;
}

// `count` values drawn from a standard normal distribution.
std::vector<float> RandomValues(int64_t count, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<float> values(count);
  for (float& v : values) v = dist(rng);
  return values;
}

// The input values Linear multiplies `w` with: x itself, or for int8 weights
// x quantized per block of 32 (the scheme of the kernels) and dequantized.
std::vector<float> AsMultiplied(const TestMatrix& w, const float* x) {
  const int64_t cols = w.view.cols;
  std::vector<float> values(x, x + cols);
  if (w.view.dtype != DType::kI8) return values;
  std::vector<int8_t> q(cols);
  std::vector<float> scales(Q8Blocks(cols));
  QuantizeQ8(x, cols, q.data(), scales.data());
  for (int64_t c = 0; c < cols; ++c) values[c] = q[c] * scales[c / kQ8Block];
  return values;
}

// Row r of w times x, in double precision over the values as multiplied.
double Expected(const TestMatrix& w, int64_t r, const float* x) {
  const std::vector<float> values = AsMultiplied(w, x);
  double sum = 0;
  for (int64_t c = 0; c < w.view.cols; ++c) sum += double(w.full[r * w.view.cols + c]) * values[c];
  return sum;
}

// Tolerance for a float32 sum of k products of unit-variance values against a
// double-precision sum: a few ulps per term, relative to sqrt(k).
double SumTolerance(int64_t k) { return 1e-5 * std::sqrt(static_cast<double>(k)) + 1e-6; }

class LinearTest : public ::testing::TestWithParam<DType> {};

TEST_P(LinearTest, MatchesDoublePrecisionOnAwkwardShapes) {
  std::mt19937 rng(7);
  for (auto [n, rows, cols] :
       {std::tuple{1, 1, 1}, {1, 7, 31}, {3, 33, 65}, {5, 130, 257}, {9, 64, 2048}, {4, 1, 100}}) {
    TestMatrix w = MakeMatrix(GetParam(), rows, cols, rng);
    const std::vector<float> x = RandomValues(n * cols, rng);
    std::vector<float> y(n * rows);
    Linear(x.data(), n, w.view, y.data());
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_NEAR(y[t * rows + r], Expected(w, r, &x[t * cols]), SumTolerance(cols))
            << "n=" << n << " rows=" << rows << " cols=" << cols << " t=" << t << " r=" << r;
      }
    }
  }
}

TEST_P(LinearTest, ResultDoesNotDependOnBatchOrThreads) {
  std::mt19937 rng(11);
  const int64_t n = 7, rows = 97, cols = 203;
  TestMatrix w = MakeMatrix(GetParam(), rows, cols, rng);
  const std::vector<float> x = RandomValues(n * cols, rng);
  std::vector<float> batched(n * rows), serial(n * rows);
  Linear(x.data(), n, w.view, batched.data());
  Linear(x.data(), n, w.view, serial.data(), 0, /*parallel=*/false);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> alone(rows);
    Linear(x.data() + t * cols, 1, w.view, alone.data());
    for (int64_t r = 0; r < rows; ++r) {
      ASSERT_EQ(alone[r], batched[t * rows + r]) << "t=" << t << " r=" << r;  // Bitwise.
      ASSERT_EQ(serial[t * rows + r], batched[t * rows + r]);
    }
  }
}

TEST_P(LinearTest, StridedInputAndTransposedAccumulate) {
  std::mt19937 rng(3);
  const int64_t rows = 19, cols = 45, stride = 50;
  TestMatrix w = MakeMatrix(GetParam(), rows, cols, rng);
  std::vector<float> x(2 * stride, 0.5f);
  x[stride + 3] = -2.0f;
  std::vector<float> y(2 * rows);
  Linear(x.data(), 2, w.view, y.data(), stride);
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_NEAR(y[rows + r], Expected(w, r, &x[stride]), SumTolerance(cols));
  }
  // Three tokens, a and y strided; each token's sums are those of a call of
  // its own, bit for bit.
  const int64_t n = 3, a_stride = rows + 2, y_stride = cols + 5;
  std::vector<float> a(n * a_stride), acc(n * y_stride, 1.0f);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r)
      a[t * a_stride + r] = 0.1f * float(r) - 0.7f + 0.3f * float(t);
  }
  LinearTransposedAccumulate(a.data(), n, a_stride, w.view, acc.data(), y_stride);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> alone(cols, 1.0f);
    LinearTransposedAccumulate(&a[t * a_stride], 1, 0, w.view, alone.data(), 0);
    for (int64_t c = 0; c < cols; ++c) {
      double expected = 1.0;
      for (int64_t r = 0; r < rows; ++r)
        expected += double(a[t * a_stride + r]) * w.full[r * cols + c];
      ASSERT_NEAR(acc[t * y_stride + c], expected, SumTolerance(rows)) << "token " << t;
      ASSERT_EQ(acc[t * y_stride + c], alone[c]) << "token " << t << " column " << c;
    }
  }
}

// Token counts on both sides of every tiling boundary: the streaming path's
// groups (of 3 up to 3 tokens, of up to 6 from 4 to 39), the panel path's
// tiles of 6 with their merged remainders (40 on) and its token blocks; the
// AVX2 paths' (up to 12 tokens, then tiles); AMX's tiles of 5 tokens (one,
// two, or more of them) and its blocks of 160 tokens; AMX int8's groups of 8.
constexpr int64_t kTokenCounts[] = {1,  2,  3,  4,  5,  6,  7,  10, 11, 12,
                                    13, 14, 19, 32, 39, 40, 41, 43, 97, 171};

TEST_P(LinearTest, EveryIsaAndPathMatchesDoublePrecision) {
  std::mt19937 rng(5);
  // 2100 columns: three k blocks on the panel path and a 4-column tail.
  for (auto [rows, cols] : {std::pair{37, 100}, {130, 1040}, {67, 2100}}) {
    TestMatrix w = MakeMatrix(GetParam(), rows, cols, rng);
    const int64_t n = 40;
    const std::vector<float> x = RandomValues(n * cols, rng);
    for (const std::string& isa : KernelIsas()) {
      ScopedKernelIsa scope(isa);
      for (int64_t tokens : {int64_t{1}, int64_t{5}, n}) {
        std::vector<float> y(tokens * rows);
        Linear(x.data(), tokens, w.view, y.data());
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t r = 0; r < rows; ++r) {
            ASSERT_NEAR(y[t * rows + r], Expected(w, r, &x[t * cols]), SumTolerance(cols))
                << isa << " n=" << tokens << " rows=" << rows << " cols=" << cols << " t=" << t
                << " r=" << r;
          }
        }
      }
    }
  }
}

// For matrices of both kinds: routed experts' and the others (they take
// different kernels under AMX).
TEST_P(LinearTest, EveryIsaGivesEachTokenTheSameBitsInAnyBatch) {
  std::mt19937 rng(13);
  const int64_t rows = 67, cols = 2100, stride = cols + 5;  // Strided input, as kv_b reads it.
  TestMatrix w = MakeMatrix(GetParam(), rows, cols, rng);
  const int64_t max_n = *std::max_element(std::begin(kTokenCounts), std::end(kTokenCounts)) + 10;
  const std::vector<float> x = RandomValues(max_n * stride, rng);
  for (const std::string& isa : KernelIsas()) {
    for (bool routed : {false, true}) {
      ScopedKernelIsa scope(isa);
      w.view.routed = routed;
      std::vector<float> alone(max_n * rows);  // Each token on its own.
      for (int64_t t = 0; t < max_n; ++t) {
        Linear(x.data() + t * stride, 1, w.view, alone.data() + t * rows, stride);
      }
      for (int64_t n : kTokenCounts) {
        // Tokens [first, first + n): the same token sits at another place in each batch.
        const int64_t first = (max_n - n) / 2;
        std::vector<float> batched(n * rows), serial(n * rows);
        Linear(x.data() + first * stride, n, w.view, batched.data(), stride);
        Linear(x.data() + first * stride, n, w.view, serial.data(), stride, /*parallel=*/false);
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t r = 0; r < rows; ++r) {
            ASSERT_EQ(batched[t * rows + r], alone[(first + t) * rows + r])  // Bitwise.
                << isa << (routed ? " routed" : "") << " n=" << n << " t=" << t << " r=" << r;
            ASSERT_EQ(serial[t * rows + r], batched[t * rows + r]) << isa << " n=" << n;
          }
        }
      }
    }
  }
}

// Under AMX a routed expert's bf16 matrix takes the AVX-512 kernel, bit for
// bit at every token count, and the other bf16 matrices the tile unit (whose
// sums differ from AVX-512's in their last bits). int8 weights take the tile
// unit from four tokens on, routed or not, with AVX-512's accumulation
// structure: the same bits (LinearQ8Test.AmxAndAvx512GiveTheSameBits covers
// more shapes).
TEST_P(LinearTest, AmxLeavesRoutedMatricesToAvx512) {
  const std::vector<std::string> isas = KernelIsas();
  if (std::find(isas.begin(), isas.end(), "amx") == isas.end()) {
    GTEST_SKIP() << "this CPU (or its OS) offers no AMX";
  }
  std::mt19937 rng(17);
  const int64_t rows = 67, cols = 2100, n = 50;
  TestMatrix w = MakeMatrix(GetParam(), rows, cols, rng);
  const std::vector<float> x = RandomValues(n * cols, rng);
  auto linear = [&](std::string_view isa, bool routed, int64_t tokens) {
    ScopedKernelIsa scope(isa);
    WeightMatrix view = w.view;
    view.routed = routed;
    std::vector<float> y(tokens * rows);
    Linear(x.data(), tokens, view, y.data());
    return y;
  };
  int64_t differing = 0;
  for (int64_t tokens : {int64_t{1}, int64_t{6}, n}) {
    EXPECT_EQ(linear("amx", true, tokens), linear("avx512", true, tokens)) << "n=" << tokens;
    const std::vector<float> tiles = linear("amx", false, tokens);
    const std::vector<float> vector = linear("avx512", false, tokens);
    for (size_t i = 0; i < tiles.size(); ++i) differing += tiles[i] != vector[i];
  }
  if (GetParam() == DType::kBF16) {
    EXPECT_GT(differing, 0) << "bf16 matrices that are not routed should take the tile unit";
  } else {
    EXPECT_EQ(differing, 0);
  }
}

TEST_P(LinearTest, NoColumnsGivesZeros) {
  const std::vector<uint16_t> none;
  const WeightMatrix w{GetParam(), 5, 0, none.data()};
  for (int64_t n : {1, 20}) {
    std::vector<float> y(n * 5, 1.0f);
    Linear(nullptr, n, w, y.data());
    for (float v : y) EXPECT_EQ(v, 0.0f);
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, LinearTest,
                         ::testing::Values(DType::kBF16, DType::kF16, DType::kF32, DType::kI8),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// The format stores [-127, 127], but a checkpoint's -128 must not overflow
// the kernels' byte arithmetic (|-128| and the int16 pair sums): every path
// still computes the exact integer sums.
TEST(LinearQ8Test, WeightsOfMinus128AreExactOnEveryIsa) {
  const int64_t rows = 9, cols = 70;
  std::vector<int8_t> q(rows * cols, -128);
  std::vector<float> scales(rows * Q8Blocks(cols), 1.0f / 128);
  const WeightMatrix w{DType::kI8, rows, cols, q.data(), scales.data()};
  // x quantizes to ±127 exactly with scale 1/127: x = ±1.
  std::vector<float> x(5 * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = i % 3 == 0 ? -1.0f : 1.0f;
  for (const std::string& isa : KernelIsas()) {
    ScopedKernelIsa scope(isa);
    for (int64_t n : {1, 5}) {
      std::vector<float> y(n * rows);
      Linear(x.data(), n, w, y.data());
      for (int64_t t = 0; t < n; ++t) {
        double expected = 0;
        for (int64_t c = 0; c < cols; ++c) expected -= x[t * cols + c];
        ASSERT_NEAR(y[t * rows], expected, 1e-4) << isa << " n=" << n;
      }
    }
  }
}

// The AMX int8 kernel (two tokens or more) and the AVX-512 one (every token
// count) share one accumulation structure: the same bits for every token, on
// row lengths with an odd or even number of blocks and a partial last one,
// routed or not, and for up to 8 tokens (one token group) on tiles whose
// rows come from runs a thread reads side by side (300 and 200 rows: runs of
// 18 and 8 rows, then a partial tile of the rows left over).
TEST(LinearQ8Test, AmxAndAvx512GiveTheSameBits) {
  const std::vector<std::string> isas = KernelIsas();
  if (std::find(isas.begin(), isas.end(), "amx") == isas.end()) {
    GTEST_SKIP() << "this CPU (or its OS) offers no AMX";
  }
  std::mt19937 rng(19);
  for (auto [rows, cols] : {std::pair{5, 1}, {17, 32}, {33, 70}, {40, 96}, {16, 128}, {67, 2100},
                            {300, 96}, {200, 256}}) {
    TestMatrix w = MakeMatrix(DType::kI8, rows, cols, rng);
    w.q[0] = -128;  // Outside the format's range, but read exactly.
    const int64_t max_n = 43;
    const std::vector<float> x = RandomValues(max_n * cols, rng);
    for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{8}, int64_t{9}, int64_t{17},
                      max_n}) {
      for (bool routed : {false, true}) {
        WeightMatrix view = w.view;
        view.routed = routed;
        std::vector<float> tiles(n * rows), vector(n * rows);
        {
          ScopedKernelIsa scope("amx");
          Linear(x.data(), n, view, tiles.data());
        }
        {
          ScopedKernelIsa scope("avx512");
          Linear(x.data(), n, view, vector.data());
        }
        for (int64_t i = 0; i < n * rows; ++i) {
          ASSERT_EQ(tiles[i], vector[i]) << "rows=" << rows << " cols=" << cols << " n=" << n
                                         << (routed ? " routed" : "") << " i=" << i;
        }
      }
    }
  }
}

// An activation block holding a NaN or an infinity quantizes to scale NaN
// (common/tensor/q8.h): every output of that token is NaN on every path,
// and the other tokens of the call are untouched.
TEST(LinearQ8Test, ANonFiniteActivationPoisonsOnlyItsToken) {
  std::mt19937 rng(23);
  const int64_t rows = 37, cols = 100, n = 9;
  TestMatrix w = MakeMatrix(DType::kI8, rows, cols, rng);
  std::vector<float> clean = RandomValues(n * cols, rng);
  clean[4 * cols + 70] = 0.0f;
  std::vector<float> x = clean;
  x[4 * cols + 70] = INFINITY;  // Token 4, its third block.
  for (const std::string& isa : KernelIsas()) {
    ScopedKernelIsa scope(isa);
    for (int64_t tokens : {int64_t{5}, n}) {  // Token 4 last, and amid others.
      std::vector<float> y(tokens * rows), reference(tokens * rows);
      Linear(x.data(), tokens, w.view, y.data());
      Linear(clean.data(), tokens, w.view, reference.data());
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t r = 0; r < rows; ++r) {
          if (t == 4) {
            ASSERT_TRUE(std::isnan(y[t * rows + r])) << isa << " n=" << tokens << " r=" << r;
          } else {
            ASSERT_EQ(y[t * rows + r], reference[t * rows + r]) << isa << " t=" << t;
          }
        }
      }
    }
  }
}

TEST(OpsTest, RmsNormSoftmaxSilu) {
  const std::vector<float> x = {1.0f, -2.0f, 3.0f, 0.5f};
  const std::vector<float> w = {1.0f, 0.5f, 2.0f, -1.0f};
  std::vector<float> y(4);
  RmsNorm(x.data(), w.data(), 1, 4, 1e-6f, y.data());
  const double rms = std::sqrt((1 + 4 + 9 + 0.25) / 4.0 + 1e-6);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i], w[i] * x[i] / rms, 1e-6);

  std::vector<float> s = {1.0f, 2.0f, 3.0f, 1000.0f, -1000.0f};
  Softmax(s.data(), 5);
  EXPECT_NEAR(s[3], 1.0f, 1e-6);
  EXPECT_EQ(s[4], 0.0f);
  std::vector<float> t = {0.0f, std::log(3.0f)};
  Softmax(t.data(), 2);
  EXPECT_NEAR(t[0], 0.25f, 1e-7);
  EXPECT_NEAR(t[1], 0.75f, 1e-7);

  const float gate[2] = {0.0f, 2.0f}, up[2] = {3.0f, -1.5f};
  float out[2];
  SiluMul(gate, up, out, 2);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 2.0 / (1 + std::exp(-2.0)) * -1.5, 1e-6);
}

TEST(OpsTest, DotAndAxpyOnOddLengths) {
  for (int64_t n : {0, 1, 7, 8, 33, 100}) {
    std::vector<float> a(n), b(n), y(n, 1.0f);
    double expected = 0;
    for (int64_t i = 0; i < n; ++i) {
      a[i] = 0.01f * static_cast<float>(i) - 0.3f;
      b[i] = 1.0f - 0.02f * static_cast<float>(i);
      expected += double(a[i]) * b[i];
    }
    EXPECT_NEAR(Dot(a.data(), b.data(), n), expected, 1e-5);
    Axpy(2.0f, a.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], 1.0f + 2.0f * a[i]);
  }
}

}  // namespace
}  // namespace dsv2::cpu
