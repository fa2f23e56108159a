// cpu::Linear on DeepSeek-V2-Lite's projection and expert shapes (bf16
// weights, or with --dtype int8 dsv2-int8 weights and their scales), next to
// this machine's rooflines measured in the same run:
//
//  - decode (n = 1): GB/s of weight bytes read, as a share of the measured
//    memory read bandwidth. Weights are cold, as in a real decode step (the
//    model is far larger than the last-level cache): each call reads the
//    next of enough copies of the matrix to exceed the cache several times;
//  - small batches (n = 8, 32, 64): time relative to n = 1 on the same cold
//    weights, and the throughput ratio n · t(1) / t(n);
//  - prefill (n = 512): GFLOP/s as a share of the measured fp32 FMA peak;
//  - with --sweep N,...: the time of each of those token counts on the same
//    cold weights, as weight GB/s and GFLOP/s (the routed experts of a
//    batch get a few tokens each: where the kernels change paths).
//
// Each repetition measures the read bandwidth right before and right after
// the n = 1 timing and keeps the ratio to their mean, so that the noise of a
// shared machine cancels, and reports how far the two readings differ; the
// figures are medians over repetitions. Matrices that fit in a quarter of the
// last-level cache are also timed at n = 1 on one resident copy: the kernel's
// own ceiling, which must stay well above the DRAM bandwidth (≥ 1.5× the
// fastest read of the run) for DRAM to be the limit on any machine. A few outputs of every shape
// are checked against a double-precision sum.
//
// Floors (docs/performance.md): n = 1 at ≥ 90% of the read bandwidth on the
// large matrices, n = 32 throughput ≥ 8× n = 1 (t32/t1 ≤ 4), n = 512 at ≥ 50%
// of the FMA peak; the last column says which of them a shape meets.
//
//   linear_bench [--reps 7] [--shapes q_proj,kv_a_proj,...] [--cold-mib N]
//                [--isa amx|avx512|avx2|portable] [--dtype bf16|int8]
//                [--sweep 1,2,4,...] [--json]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/roofline.h"
#include "bench/stats.h"
#include "common/base/thread_pool.h"
#include "common/tensor/dtype.h"
#include "common/tensor/q8.h"
#include "kernels/cpu/ops.h"

namespace dsv2::bench {
namespace {

struct Shape {
  const char* name;
  int64_t out, in;  // nn.Linear [out_features, in_features].
  // A routed expert's matrix (WeightMatrix::routed): the kernel the model
  // gives those, e.g. AVX-512 for bf16 under amx.
  bool routed = false;
};

// DeepSeek-V2-Lite (hidden 2048, 16 heads, kv_lora_rank 512, expert width
// 1408, dense width 10944, vocabulary 102400).
constexpr Shape kShapes[] = {
    {"q_proj", 3072, 2048},
    {"kv_a_proj", 576, 2048},
    {"kv_b_proj", 4096, 512},
    {"o_proj", 2048, 2048},
    {"expert_up", 1408, 2048, /*routed=*/true},
    {"expert_down", 2048, 1408, /*routed=*/true},
    {"dense_up", 10944, 2048},
    {"dense_down", 2048, 10944},
    {"lm_head", 102400, 2048},
};

constexpr int64_t kBatchTokens[] = {1, 8, 32, 64};
constexpr int64_t kPrefillTokens = 512;

// A cheap deterministic generator of values in [-1, 1).
struct Noise {
  uint64_t state;
  float Next() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return static_cast<float>(state >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
};

// Bytes a call reads of a matrix of shape s: bf16 weights, or int8 ones and
// their float32 scales.
int64_t MatrixBytes(const Shape& s, DType dtype) {
  return dtype == DType::kI8 ? s.out * (s.in + 4 * Q8Blocks(s.in)) : s.out * s.in * 2;
}

// `copies` identical matrices, back to back: bf16, or int8 (each copy its
// integers, then its scales).
struct ColdWeights {
  DType dtype = DType::kBF16;
  std::vector<char> data;
  int64_t copies = 0;
  WeightMatrix Copy(const Shape& s, int64_t c) const {
    const char* base = data.data() + c * MatrixBytes(s, dtype);
    const float* scales =
        dtype == DType::kI8 ? reinterpret_cast<const float*>(base + s.out * s.in) : nullptr;
    return WeightMatrix{dtype, s.out, s.in, base, scales, s.routed};
  }
  // The value weight (r, c) stands for.
  double Value(const Shape& s, int64_t r, int64_t c) const {
    const WeightMatrix m = Copy(s, 0);
    if (dtype != DType::kI8)
      return BF16ToFloat(reinterpret_cast<const uint16_t*>(m.data)[r * s.in + c]);
    return static_cast<double>(static_cast<const int8_t*>(m.data)[r * s.in + c]) *
           m.row_scales(r)[c / kQ8Block];
  }
};

ColdWeights MakeWeights(const Shape& s, DType dtype, int64_t cold_bytes) {
  const int64_t elements = s.out * s.in, bytes = MatrixBytes(s, dtype);
  ColdWeights w;
  w.dtype = dtype;
  w.copies = std::max<int64_t>(1, (cold_bytes + bytes - 1) / bytes);
  w.data.resize(w.copies * bytes);
  Noise noise{0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(elements)};
  if (dtype == DType::kI8) {
    std::vector<float> row(s.in);
    auto* q = reinterpret_cast<int8_t*>(w.data.data());
    auto* scales = reinterpret_cast<float*>(w.data.data() + elements);
    for (int64_t r = 0; r < s.out; ++r) {
      for (float& v : row) v = noise.Next();
      QuantizeQ8(row.data(), s.in, q + r * s.in, scales + r * Q8Blocks(s.in));
    }
  } else {
    auto* values = reinterpret_cast<uint16_t*>(w.data.data());
    for (int64_t i = 0; i < elements; ++i) values[i] = FloatToBF16(noise.Next());
  }
  ThreadPool::Default().ParallelFor(w.copies - 1, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin + 1; c < end + 1; ++c) {
      std::memcpy(w.data.data() + c * bytes, w.data.data(), bytes);
    }
  });
  return w;
}

// Seconds per call: calls cycle through the copies, at least `min_calls` of
// them and for at least `min_seconds`.
double TimeCalls(const Shape& s, const ColdWeights& w, const float* x, int64_t n, float* y,
                 int64_t& next_copy, int64_t min_calls, double min_seconds) {
  int64_t calls = 0;
  const double start = NowSeconds();
  double elapsed = 0;
  do {
    cpu::Linear(x, n, w.Copy(s, next_copy), y);
    next_copy = (next_copy + 1) % w.copies;
    ++calls;
    elapsed = NowSeconds() - start;
  } while (calls < min_calls || elapsed < min_seconds);
  return elapsed / static_cast<double>(calls);
}

// Seconds per n = 1 call with copy 0 resident in the cache: the best of a few
// bursts of calls after a warm-up, so that it is the kernel's ceiling rather
// than the noise of the shared machine.
double TimeHot(const Shape& s, const ColdWeights& w, const float* x, float* y) {
  const WeightMatrix m = w.Copy(s, 0);
  double best = 1e30;
  for (int burst = 0; burst < 8; ++burst) {  // The first brings it into the cache.
    constexpr int kCalls = 20;
    const double start = NowSeconds();
    for (int c = 0; c < kCalls; ++c) cpu::Linear(x, 1, m, y);
    best = std::min(best, (NowSeconds() - start) / kCalls);
  }
  return best;
}

// Largest |y - double-precision reference| over a few outputs of each token
// (for int8 weights, of x as the kernels multiply it: quantized per block).
double MaxError(const Shape& s, const ColdWeights& w, const float* x, int64_t n, const float* y) {
  double worst = 0;
  std::vector<float> values(s.in), scales(Q8Blocks(s.in));
  std::vector<int8_t> q(s.in);
  for (int64_t t = 0; t < n; t += std::max<int64_t>(1, n / 4)) {
    std::copy(x + t * s.in, x + (t + 1) * s.in, values.begin());
    if (w.dtype == DType::kI8) {
      QuantizeQ8(values.data(), s.in, q.data(), scales.data());
      for (int64_t c = 0; c < s.in; ++c) values[c] = q[c] * scales[c / kQ8Block];
    }
    for (int64_t r = 0; r < s.out; r += std::max<int64_t>(1, s.out / 7)) {
      double sum = 0;
      for (int64_t c = 0; c < s.in; ++c) sum += w.Value(s, r, c) * values[c];
      worst = std::max(worst, std::fabs(sum - y[t * s.out + r]));
    }
  }
  return worst;
}

struct ShapeResult {
  Shape shape;
  int64_t copies = 0;
  double decode_us = 0, decode_gb_per_s = 0, decode_pct_bw = 0;
  // The spread of the bandwidth readings around the n = 1 timings: the
  // largest (after - before) / mean of a repetition, in percent.
  double bw_spread_pct = 0;
  // n = 1 with the weights resident in the last-level cache (0 when the
  // matrix is too large to stay there): the kernel's own ceiling.
  double hot_gb_per_s = 0;
  double max_read_gb_per_s = 0;               // The fastest bandwidth reading of the shape.
  double batch_time_ratio[4] = {1, 0, 0, 0};  // t(n) / t(1) per kBatchTokens.
  double batch_us[4] = {0, 0, 0, 0};
  bool prefill = false;
  double prefill_ms = 0, prefill_gflop_per_s = 0, prefill_pct_peak = 0;
  std::vector<double> sweep_us;  // Per --sweep token count.
  double max_error = 0;
};

ShapeResult RunShape(const Shape& s, DType dtype, int reps, int64_t cold_bytes,
                     ReadBandwidthProbe& probe, const std::vector<std::string>& bw_methods,
                     const std::string& fma_isa, const std::vector<int64_t>& sweep) {
  ShapeResult result;
  result.shape = s;
  const ColdWeights w = MakeWeights(s, dtype, cold_bytes);
  result.copies = w.copies;
  const double matrix_bytes = static_cast<double>(MatrixBytes(s, dtype));
  const bool prefill = s.out * s.in <= 64ll << 20;  // Not the 100K-row lm_head.
  const int64_t max_n = std::max(prefill ? kPrefillTokens : kBatchTokens[3],
                                 sweep.empty() ? 0 : *std::max_element(sweep.begin(), sweep.end()));
  std::vector<float> x(max_n * s.in), y(max_n * s.out);
  Noise noise{12345};
  for (float& v : x) v = noise.Next();

  int64_t next_copy = 0;
  std::vector<double> us[4], gbs, pct_bw, ratio[4], gflops, pct_peak, ms, hot;
  std::vector<std::vector<double>> sweep_us(sweep.size());
  TimeCalls(s, w, x.data(), 1, y.data(), next_copy, w.copies, 0);  // Warm-up.
  // The best of the leading load styles, measured now.
  auto bandwidth_now = [&] {
    double best = 0;
    for (const std::string& method : bw_methods) best = std::max(best, probe.Pass(method));
    return best;
  };
  // Fits in a quarter of the cache: n = 1 calls on one copy keep it there.
  const bool hot_fits = matrix_bytes * 4 <= static_cast<double>(LastLevelCacheBytes());
  for (int rep = 0; rep < reps; ++rep) {
    const double before = bandwidth_now();
    double t1 = 0;
    for (int b = 0; b < 4; ++b) {
      // Every copy once: the weights always come from memory.
      const double t =
          TimeCalls(s, w, x.data(), kBatchTokens[b], y.data(), next_copy, w.copies, 0.02);
      if (b == 0) {
        t1 = t;
        const double after = bandwidth_now();
        const double bandwidth = (before + after) / 2;
        result.max_read_gb_per_s = std::max({result.max_read_gb_per_s, before, after});
        result.bw_spread_pct =
            std::max(result.bw_spread_pct, 100.0 * std::fabs(after - before) / bandwidth);
        gbs.push_back(matrix_bytes / t * 1e-9);
        pct_bw.push_back(100.0 * gbs.back() / bandwidth);
      }
      us[b].push_back(t * 1e6);
      ratio[b].push_back(t / t1);
    }
    for (size_t i = 0; i < sweep.size(); ++i) {
      sweep_us[i].push_back(
          TimeCalls(s, w, x.data(), sweep[i], y.data(), next_copy, w.copies, 0.02) * 1e6);
    }
    if (hot_fits) hot.push_back(matrix_bytes / TimeHot(s, w, x.data(), y.data()) * 1e-9);
    if (prefill) {
      const double peak = FmaPass(fma_isa, 0.1);
      const double t = TimeCalls(s, w, x.data(), kPrefillTokens, y.data(), next_copy, 2, 0.2);
      ms.push_back(t * 1e3);
      gflops.push_back(2.0 * static_cast<double>(kPrefillTokens * s.out * s.in) / t * 1e-9);
      pct_peak.push_back(100.0 * gflops.back() / peak);
    }
  }
  result.decode_us = Median(us[0]);
  result.decode_gb_per_s = Median(gbs);
  result.decode_pct_bw = Median(pct_bw);
  result.hot_gb_per_s = hot.empty() ? 0 : Median(hot);
  for (int b = 0; b < 4; ++b) {
    result.batch_us[b] = Median(us[b]);
    result.batch_time_ratio[b] = Median(ratio[b]);
  }
  for (const std::vector<double>& times : sweep_us) result.sweep_us.push_back(Median(times));
  result.prefill = prefill;
  if (prefill) {
    result.prefill_ms = Median(ms);
    result.prefill_gflop_per_s = Median(gflops);
    result.prefill_pct_peak = Median(pct_peak);
  }
  // Accuracy of the largest n on copy 0 (all copies are equal).
  cpu::Linear(x.data(), max_n, w.Copy(s, 0), y.data());
  result.max_error = MaxError(s, w, x.data(), max_n, y.data());
  return result;
}

int Main(int argc, char** argv) {
  Flags flags(argc, argv);
  const std::vector<long> sweep_list = flags.GetList("sweep", "", 1, 4096);
  const std::vector<int64_t> sweep(sweep_list.begin(), sweep_list.end());
  const int reps = static_cast<int>(flags.GetInt("reps", 7, 1, 1000));
  const int64_t cold_bytes =
      flags.GetInt("cold-mib", std::max<int64_t>(1024, 3 * LastLevelCacheBytes() >> 20), 1, 1 << 20)
      << 20;
  if (const std::optional<int> stop = flags.StopForUsage(
          "linear_bench", {"reps", "shapes", "cold-mib", "isa", "dtype", "sweep", "json"},
          "usage: linear_bench [--reps N (default 7)] [--shapes NAME,... (default all)]\n"
          "                    [--cold-mib N (weight copies per shape, default 3 x LLC,"
          " at least 1024)]\n"
          "                    [--isa amx|avx512|avx2|portable (default: the widest)]\n"
          "                    [--dtype bf16|int8 (default bf16; int8: dsv2-int8 weights)]\n"
          "                    [--sweep N,... (token counts, 1 to 4096)] [--json]\n")) {
    return *stop;
  }
  const std::string isa = flags.Get("isa", "");
  if (!isa.empty() && !cpu::SetKernelIsa(isa)) {
    std::fprintf(stderr, "linear_bench: this CPU cannot run --isa %s\n", isa.c_str());
    return 2;
  }
  const std::string dtype_name = flags.Get("dtype", "bf16");
  if (dtype_name != "bf16" && dtype_name != "int8") {
    std::fprintf(stderr, "linear_bench: --dtype: '%s' is neither bf16 nor int8\n",
                 dtype_name.c_str());
    return 2;
  }
  const DType dtype = dtype_name == "int8" ? DType::kI8 : DType::kBF16;
  const std::string wanted = "," + flags.Get("shapes", "") + ",";
  const bool json = flags.Has("json");

  ReadBandwidthProbe probe(cold_bytes);
  const Roofline roofline = MeasureRoofline(probe, 3);
  // The two best load styles at start; each repetition keeps the better.
  std::vector<NamedFigure> styles = roofline.bandwidth_gb_per_s;
  std::sort(styles.begin(), styles.end(),
            [](const NamedFigure& a, const NamedFigure& b) { return a.value > b.value; });
  // The FMA peak of the instruction set the kernels use (the widest when
  // they are portable).
  const std::string kernel_isa = cpu::KernelIsa();
  const std::string fma_isa = kernel_isa == "avx2" ? "avx2" : roofline.best_fma_isa;
  double fma_at_start = 0;
  for (const NamedFigure& f : roofline.fma_gflop_per_s) {
    if (f.name == fma_isa) fma_at_start = f.value;
  }
  std::vector<std::string> bw_methods;
  for (size_t i = 0; i < std::min<size_t>(2, styles.size()); ++i)
    bw_methods.push_back(styles[i].name);
  if (!json) {
    std::printf("cpu::Linear, %s weights, kernels %s, %d threads; medians of %d repetitions\n",
                dtype_name.c_str(), cpu::KernelIsa(), roofline.threads, reps);
    std::printf(
        "roofline at start: read %.1f GB/s (%s, %.0f MiB), FMA %.1f GFLOP/s (%s);\n"
        "each repetition re-measures the read bandwidth before and after the n = 1 timing\n"
        "(the better of %s each time) and keeps the ratio to their mean (bw±: the\n"
        "largest before/after difference); hot GB/s: n = 1 on weights resident in the\n"
        "%.0f MiB last-level cache, the kernel's own ceiling (x DRAM: its ratio to the\n"
        "fastest read seen in the run)\n",
        roofline.bandwidth_gb_per_s_best, roofline.best_bandwidth_method.c_str(),
        static_cast<double>(probe.bytes()) / 1048576.0, fma_at_start, fma_isa.c_str(),
        (bw_methods[0] + (bw_methods.size() > 1 ? " and " + bw_methods[1] : "")).c_str(),
        static_cast<double>(LastLevelCacheBytes()) / 1048576.0);
    std::printf(
        "\n%-12s %6s %6s %7s | %9s %7s %6s %5s | %7s %6s | %7s %7s %7s %8s | %8s %8s "
        "%6s | %8s | %s\n",
        "shape", "out", "in", "MiB", "n=1 us", "GB/s", "%bw", "bw±", "hot", "xDRAM", "t8/t1",
        "t32/t1", "t64/t1", "thr32/1", "n=512 ms", "GFLOP/s", "%peak", "max err", "floors");
    std::fflush(stdout);
  }
  std::vector<ShapeResult> results;
  double best_read = roofline.bandwidth_gb_per_s_best;  // The fastest read so far.
  for (const Shape& s : kShapes) {
    if (wanted != ",," && wanted.find(std::string(",") + s.name + ",") == std::string::npos) {
      continue;
    }
    const ShapeResult r = RunShape(s, dtype, reps, cold_bytes, probe, bw_methods, fma_isa, sweep);
    results.push_back(r);
    best_read = std::max(best_read, r.max_read_gb_per_s);
    if (json) continue;
    std::printf("%-12s %6lld %6lld %7.1f | %9.1f %7.2f %5.1f%% %4.0f%% | ", s.name,
                static_cast<long long>(s.out), static_cast<long long>(s.in),
                static_cast<double>(MatrixBytes(s, dtype)) / 1048576.0, r.decode_us,
                r.decode_gb_per_s, r.decode_pct_bw, r.bw_spread_pct);
    if (r.hot_gb_per_s > 0) {
      std::printf("%7.1f %5.2fx | ", r.hot_gb_per_s, r.hot_gb_per_s / best_read);
    } else {
      std::printf("%7s %6s | ", "-", "-");
    }
    std::printf("%7.2f %7.2f %7.2f %7.1fx | ", r.batch_time_ratio[1], r.batch_time_ratio[2],
                r.batch_time_ratio[3], 32.0 / r.batch_time_ratio[2]);
    if (r.prefill) {
      std::printf("%8.2f %8.1f %5.1f%% | ", r.prefill_ms, r.prefill_gflop_per_s,
                  r.prefill_pct_peak);
    } else {
      std::printf("%8s %8s %6s | ", "-", "-", "-");
    }
    std::printf("%8.1e | bw %s, thr32 %s, peak %s\n", r.max_error,
                r.decode_pct_bw >= 90 ? "ok" : "LOW",
                32.0 / r.batch_time_ratio[2] >= 8 ? "ok" : "LOW",
                !r.prefill                 ? "-"
                : r.prefill_pct_peak >= 50 ? "ok"
                                           : "LOW");
    std::fflush(stdout);
  }
  std::vector<double> hot;
  for (const ShapeResult& r : results) {
    if (r.hot_gb_per_s > 0) hot.push_back(r.hot_gb_per_s);
  }
  if (!json && !sweep.empty()) {
    std::printf("\ntoken sweep on cold weights (medians): us, weight GB/s, GFLOP/s\n");
    for (const ShapeResult& r : results) {
      const double bytes = static_cast<double>(MatrixBytes(r.shape, dtype));
      const double flop = 2.0 * static_cast<double>(r.shape.out * r.shape.in);
      std::printf("%-12s", r.shape.name);
      for (size_t i = 0; i < sweep.size(); ++i) {
        const double t = r.sweep_us[i] * 1e-6;
        std::printf(" | n=%lld %.0f %.1f %.0f", static_cast<long long>(sweep[i]), r.sweep_us[i],
                    bytes / t * 1e-9, static_cast<double>(sweep[i]) * flop / t * 1e-9);
      }
      std::printf("\n");
    }
  }
  if (!json && !hot.empty()) {
    std::printf(
        "\nn = 1 in cache: %.1f GB/s (median over %zu shapes) = %.2fx the fastest read of "
        "the run (%.1f GB/s)\n",
        Median(hot), hot.size(), Median(hot) / best_read, best_read);
  }
  if (json) {
    std::printf(
        "{\"kernels\": \"%s\", \"threads\": %d, \"reps\": %d, \"weight_dtype\": \"%s\", "
        "\"roofline_at_start\": {\"read_gb_per_s\": %.2f, \"fma_gflop_per_s\": %.1f, "
        "\"fma_isa\": \"%s\"}, \"fastest_read_gb_per_s\": %.2f, \"hot_n1_gb_per_s\": %.2f, "
        "\"shapes\": [",
        cpu::KernelIsa(), roofline.threads, reps, dtype_name.c_str(),
        roofline.bandwidth_gb_per_s_best, fma_at_start, fma_isa.c_str(), best_read,
        hot.empty() ? 0.0 : Median(hot));
    for (size_t i = 0; i < results.size(); ++i) {
      const ShapeResult& r = results[i];
      std::printf(
          "%s{\"name\": \"%s\", \"out\": %lld, \"in\": %lld, \"weight_copies\": %lld, "
          "\"n1_us\": %.2f, \"n1_gb_per_s\": %.3f, \"n1_pct_bandwidth\": %.2f, "
          "\"bandwidth_spread_pct\": %.2f, \"hot_n1_gb_per_s\": %.2f, ",
          i ? ", " : "", r.shape.name, static_cast<long long>(r.shape.out),
          static_cast<long long>(r.shape.in), static_cast<long long>(r.copies), r.decode_us,
          r.decode_gb_per_s, r.decode_pct_bw, r.bw_spread_pct, r.hot_gb_per_s);
      for (int b = 1; b < 4; ++b) {
        const long long n = kBatchTokens[b];
        std::printf(
            "\"n%lld_us\": %.2f, \"n%lld_time_ratio\": %.3f, \"n%lld_throughput_ratio\": %.2f, ", n,
            r.batch_us[b], n, r.batch_time_ratio[b], n,
            static_cast<double>(n) / r.batch_time_ratio[b]);
      }
      if (r.prefill) {
        std::printf("\"n512_ms\": %.3f, \"n512_gflop_per_s\": %.2f, \"n512_pct_fma_peak\": %.2f, ",
                    r.prefill_ms, r.prefill_gflop_per_s, r.prefill_pct_peak);
      }
      if (!sweep.empty()) {
        std::printf("\"sweep\": [");
        for (size_t j = 0; j < sweep.size(); ++j) {
          std::printf("%s{\"n\": %lld, \"us\": %.2f}", j ? ", " : "",
                      static_cast<long long>(sweep[j]), r.sweep_us[j]);
        }
        std::printf("], ");
      }
      std::printf("\"max_abs_error\": %.3e}", r.max_error);
    }
    std::printf("]}\n");
  }
  return 0;
}

}  // namespace
}  // namespace dsv2::bench

int main(int argc, char** argv) { return dsv2::bench::Main(argc, argv); }
