#include "kernels/cpu/ops.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"
#include "common/base/logging.h"
#include "common/base/thread_pool.h"
#include "common/tensor/q8.h"
#include "kernels/cpu/linear_kernels.h"

namespace dsv2::cpu {
namespace internal {
namespace {

// ---- Portable ---------------------------------------------------------------
// Eight partial sums (element i goes to sum i % 8), added pairwise.
float DotRowPortable(const void* w, DType dtype, const float* x, int64_t k) {
  float partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < k; ++i) partial[i % 8] += LoadAsFloat(w, dtype, i) * x[i];
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
         ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

void LinearRowsPortable(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t t = 0; t < a.n; ++t) {
      a.y[t * a.w.rows + r] =
          DotRowPortable(a.w.row_ptr(r), a.w.dtype, a.x + t * a.x_stride, a.w.cols);
    }
  }
}

void AxpyPortable(float alpha, const void* w, DType dtype, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * LoadAsFloat(w, dtype, i);
}

float DotPortable(const float* a, const float* b, int64_t n) {
  return DotRowPortable(a, DType::kF32, b, n);
}

void LinearPortable(const LinearArgs& a, bool parallel) {
  ForRowRuns(a.w.rows, 1, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, a.w.cols * a.n)),
             parallel, [&](const RowRun& run) { LinearRowsPortable(a, run.begin, run.end); });
}

// One float32 sum over the blocks in order, each block's products summed
// exactly in int32.
float DotQ8Portable(const int8_t* w, const float* w_scales, const int8_t* x, const float* x_scales,
                    int64_t k) {
  float sum = 0.0f;
  for (int64_t b = 0; b * kQ8Block < k; ++b) {
    const int64_t end = std::min(k, (b + 1) * kQ8Block);
    int32_t block = 0;
    for (int64_t i = b * kQ8Block; i < end; ++i) block += int32_t{w[i]} * int32_t{x[i]};
    sum += static_cast<float>(block) * (w_scales[b] * x_scales[b]);
  }
  return sum;
}

void LinearQ8Portable(const LinearQ8Args& a, bool parallel) {
  const int64_t blocks = Q8Blocks(a.w.cols);
  ForRowRuns(a.w.rows, 1, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, a.w.cols * a.n)),
             parallel, [&](const RowRun& run) {
               for (int64_t r = run.begin; r < run.end; ++r) {
                 const auto* w = reinterpret_cast<const int8_t*>(a.w.row_ptr(r));
                 for (int64_t t = 0; t < a.n; ++t) {
                   a.y[t * a.w.rows + r] =
                       DotQ8Portable(w, a.w.row_scales(r), a.x_q + t * a.x_stride,
                                     a.x_scales + t * blocks, a.w.cols);
                 }
               }
             });
}

}  // namespace

void ForRowRuns(int64_t rows, int64_t unit, int64_t min_rows, bool parallel,
                const std::function<void(const RowRun&)>& body) {
  ThreadPool& pool = ThreadPool::Default();
  const int threads = pool.num_threads();
  const int64_t units = (rows + unit - 1) / unit;
  const int64_t min_units = std::max<int64_t>(1, (min_rows + unit - 1) / unit);
  if (!parallel || threads == 1 || units <= min_units) return body(RowRun{0, rows, 0, 0});
  std::atomic<int64_t> next{0};
  // Claims the next run: [begin, end) in rows, empty when the work is done.
  auto claim = [&](int64_t& begin, int64_t& end) {
    int64_t first = next.load(std::memory_order_relaxed);
    int64_t take = 0;
    do {
      if (first >= units) {
        begin = end = rows;
        return;
      }
      take = std::min(units - first, std::max(min_units, (units - first) / (2 * threads)));
    } while (!next.compare_exchange_weak(first, first + take, std::memory_order_relaxed));
    begin = first * unit;
    end = std::min(rows, (first + take) * unit);
  };
  // One task per thread; each runs until no work is left.
  pool.ParallelFor(threads, 1, [&](int64_t, int64_t) {
    RowRun run;
    claim(run.begin, run.end);
    while (run.begin < run.end) {
      claim(run.next_begin, run.next_end);
      body(run);
      run = RowRun{run.next_begin, run.next_end, 0, 0};
    }
  });
}

const IsaKernels& PortableKernels() {
  static const IsaKernels kernels{"portable", LinearPortable, AxpyPortable, DotPortable,
                                  LinearQ8Portable};
  return kernels;
}

}  // namespace internal

namespace {

#if defined(__x86_64__) || defined(__i386__)
// F16C (half-precision conversions) from CPUID leaf 1; not every compiler's
// __builtin_cpu_supports knows its name.
bool CpuHasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}

bool CpuHas(std::string_view isa) {
  if (isa == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && CpuHasF16c();
  }
  if (isa == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && CpuHasF16c();
  }
  return isa == "portable";
}
#else
bool CpuHas(std::string_view isa) { return isa == "portable"; }
#endif

// Every instruction set, widest first; the CPU always runs the last.
constexpr std::array<const char*, 4> kIsasWidestFirst = {"amx", "avx512", "avx2", "portable"};

const internal::IsaKernels* KernelsFor(std::string_view isa) {
  // AMX: AVX-512 kernels plus the tile unit, if the OS grants it.
  if (isa == "amx") return CpuHas("avx512") ? internal::AmxKernels() : nullptr;
  if (!CpuHas(isa)) return nullptr;
  if (isa == "avx512") return internal::Avx512Kernels();
  if (isa == "avx2") return internal::Avx2Kernels();
  return &internal::PortableKernels();
}

// The widest ISA the CPU has, or DSV2_CPU_ISA where it names another one
// the CPU has.
const internal::IsaKernels* ChooseKernels() {
  const char* forced = std::getenv("DSV2_CPU_ISA");
  if (forced != nullptr) {
    if (const internal::IsaKernels* kernels = KernelsFor(forced)) return kernels;
  }
  const internal::IsaKernels* widest = nullptr;
  for (const char* isa : kIsasWidestFirst) {
    if ((widest = KernelsFor(isa)) != nullptr) break;
  }
  if (forced != nullptr) {
    DSV2_LOG(WARNING) << "DSV2_CPU_ISA='" << absl::CHexEscape(forced)
                      << "' is not an instruction set this CPU runs ("
                      << absl::StrJoin(kIsasWidestFirst, ", ") << "); using " << widest->name;
  }
  return widest;
}

// The kernels in use; chosen on first use (safe from static initializers).
std::atomic<const internal::IsaKernels*>& ActiveKernels() {
  static std::atomic<const internal::IsaKernels*> active{ChooseKernels()};
  return active;
}

const internal::IsaKernels& Kernels() { return *ActiveKernels().load(std::memory_order_relaxed); }

}  // namespace

const char* KernelIsa() { return Kernels().name; }

bool SetKernelIsa(std::string_view isa) {
  const internal::IsaKernels* kernels = KernelsFor(isa);
  if (kernels == nullptr) return false;
  ActiveKernels().store(kernels);
  return true;
}

std::vector<std::string> KernelIsas() {
  std::vector<std::string> isas = {KernelIsa()};
  for (const char* isa : kIsasWidestFirst) {
    if (isa != isas[0] && KernelsFor(isa) != nullptr) isas.push_back(isa);
  }
  return isas;
}

bool UsingAvx2() { return &Kernels() != &internal::PortableKernels(); }

namespace {

// x [n, cols] (rows `x_stride` apart) quantized for the int8 kernels, in
// buffers of the calling thread (pool threads read them while it waits), then
// the kernel.
void LinearQ8(const float* x, int64_t n, int64_t x_stride, const WeightMatrix& w, float* y,
              bool parallel) {
  thread_local std::vector<int8_t> x_q;
  thread_local std::vector<float> x_scales;
  const int64_t blocks = Q8Blocks(w.cols);
  const int64_t q_stride = blocks * kQ8Block;
  x_q.assign(n * q_stride, 0);  // The padding past w.cols stays zero.
  x_scales.resize(n * blocks);
  for (int64_t t = 0; t < n; ++t) {
    QuantizeQ8(x + t * x_stride, w.cols, &x_q[t * q_stride], &x_scales[t * blocks]);
  }
  Kernels().linear_q8(internal::LinearQ8Args{x_q.data(), x_scales.data(), n, q_stride, w, y},
                      parallel);
  if (x_q.capacity() > internal::kScratchKeepBytes) {
    x_q = {};
    x_scales = {};
  }
}

}  // namespace

void Linear(const float* x, int64_t n, const WeightMatrix& w, float* y, int64_t x_stride,
            bool parallel) {
  if (n <= 0 || w.rows <= 0) return;
  if (w.cols == 0) return std::fill(y, y + n * w.rows, 0.0f);  // Empty sums.
  if (x_stride == 0) x_stride = w.cols;
  if (w.dtype == DType::kI8) return LinearQ8(x, n, x_stride, w, y, parallel);
  Kernels().linear(internal::LinearArgs{x, n, x_stride, w, y}, parallel);
}

void LinearTransposedAccumulate(const float* a, int64_t n, int64_t a_stride, const WeightMatrix& w,
                                float* y, int64_t y_stride) {
  // Tokens in blocks whose sums stay in L1 while the rows go by.
  constexpr int64_t kBlockTokens = 8;
  const internal::IsaKernels& kernels = Kernels();
  // Int8 rows dequantized (q · its block's scale), then the float32 axpy.
  thread_local std::vector<float> dequantized;
  if (w.dtype == DType::kI8) dequantized.resize(w.cols);
  for (int64_t t0 = 0; t0 < n; t0 += kBlockTokens) {
    const int64_t t1 = std::min(n, t0 + kBlockTokens);
    for (int64_t r = 0; r < w.rows; ++r) {
      const void* row = w.row_ptr(r);
      DType dtype = w.dtype;
      if (w.dtype == DType::kI8) {
        const auto* q = static_cast<const int8_t*>(row);
        const float* scales = w.row_scales(r);
        for (int64_t c = 0; c < w.cols; ++c) {
          dequantized[c] = static_cast<float>(q[c]) * scales[c / kQ8Block];
        }
        row = dequantized.data();
        dtype = DType::kF32;
      }
      for (int64_t t = t0; t < t1; ++t) {
        kernels.axpy(a[t * a_stride + r], row, dtype, w.cols, y + t * y_stride);
      }
    }
  }
}

float Dot(const float* a, const float* b, int64_t n) { return Kernels().dot(a, b, n); }

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  Kernels().axpy(alpha, x, DType::kF32, n, y);
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
