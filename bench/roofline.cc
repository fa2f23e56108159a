#include "bench/roofline.h"

#include <immintrin.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <string>

#include "bench/stats.h"
#include "common/base/thread_pool.h"

namespace dsv2::bench {
namespace {

constexpr int64_t kBlockBytes = 1 << 20;  // Unit of work handed to a thread.

// Sums the 64-bit lanes of [p, p + bytes) into eight independent
// accumulators (integer adds: one cycle of latency, so only the loads limit
// it). The range is read as `kStreams` equal parts at once, one vector of each
// per round: a core keeps more misses in flight with several sequential
// streams than with one.
template <int kStreams>
__attribute__((target("avx512f"))) uint64_t ReadAvx512(const char* p, int64_t bytes) {
  __m512i acc[8];
#pragma GCC unroll 8
  for (auto& a : acc) a = _mm512_setzero_si512();
  const int64_t part = bytes / kStreams;
  constexpr int kVectorsPerStream = kStreams >= 8 ? 1 : 8 / kStreams;
  for (int64_t i = 0; i < part; i += 64 * kVectorsPerStream) {
#pragma GCC unroll 16
    for (int s = 0; s < kStreams; ++s) {
#pragma GCC unroll 8
      for (int v = 0; v < kVectorsPerStream; ++v) {
        const int j = (s * kVectorsPerStream + v) % 8;
        acc[j] = _mm512_add_epi64(acc[j], _mm512_load_si512(p + s * part + i + 64 * v));
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 1; j < 8; ++j) acc[0] = _mm512_add_epi64(acc[0], acc[j]);
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, acc[0]);
  return lanes[0] + lanes[7];
}

template <int kStreams>
__attribute__((target("avx2"))) uint64_t ReadAvx2(const char* p, int64_t bytes) {
  __m256i acc[8];
#pragma GCC unroll 8
  for (auto& a : acc) a = _mm256_setzero_si256();
  const int64_t part = bytes / kStreams;
  constexpr int kVectorsPerStream = kStreams >= 8 ? 1 : 8 / kStreams;
  for (int64_t i = 0; i < part; i += 32 * kVectorsPerStream) {
#pragma GCC unroll 16
    for (int s = 0; s < kStreams; ++s) {
#pragma GCC unroll 8
      for (int v = 0; v < kVectorsPerStream; ++v) {
        const int j = (s * kVectorsPerStream + v) % 8;
        acc[j] = _mm256_add_epi64(
            acc[j], _mm256_load_si256(reinterpret_cast<const __m256i*>(p + s * part + i + 32 * v)));
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 1; j < 8; ++j) acc[0] = _mm256_add_epi64(acc[0], acc[j]);
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[0]);
  return lanes[0] + lanes[3];
}

struct ReadMethod {
  const char* name;
  bool wide;  // AVX-512 (else AVX2).
  uint64_t (*read)(const char*, int64_t);
};

constexpr ReadMethod kReadMethods[] = {
    {"avx512-1stream", true, ReadAvx512<1>},  {"avx512-4streams", true, ReadAvx512<4>},
    {"avx512-8streams", true, ReadAvx512<8>}, {"avx512-16streams", true, ReadAvx512<16>},
    {"avx2-1stream", false, ReadAvx2<1>},     {"avx2-8streams", false, ReadAvx2<8>},
};

std::atomic<uint64_t> g_sink{0};  // Keeps the reads and FMAs observable.

// Each call runs `iters` rounds of independent FMA chains: sixteen (AVX-512)
// or twelve (AVX2, 16 registers) chains cover the 4-cycle latency at two FMAs
// per cycle. The empty asm keeps the compiler from folding rounds together.
__attribute__((target("avx512f"))) float FmaAvx512(int64_t iters) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps(1.0f + 0.001f * static_cast<float>(j));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) __asm__ volatile("" : "+v"(acc[j]));
  }
#pragma GCC unroll 16
  for (int j = 1; j < 16; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc[0]);
  return lanes[0] + lanes[15];
}

__attribute__((target("avx2,fma"))) float FmaAvx2(int64_t iters) {
  __m256 acc[12];
#pragma GCC unroll 16
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(1.0f + 0.001f * static_cast<float>(j));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
#pragma GCC unroll 16
    for (int j = 0; j < 12; ++j) __asm__ volatile("" : "+x"(acc[j]));
  }
#pragma GCC unroll 16
  for (int j = 1; j < 12; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc[0]);
  return lanes[0] + lanes[7];
}

}  // namespace

int64_t LastLevelCacheBytes() {
  // sysfs describes the caches each CPU sees: the highest level's instances
  // (one per distinct set of CPUs sharing it) add up to the last level.
  // glibc's sysconf derives it from CPUID, which hypervisors misreport (a
  // Zen 3 guest with a 32 MiB L3 reads 256 MiB).
  int best_level = 0;
  int64_t total = 0;
  std::set<std::string> seen;
  for (int cpu = 0;; ++cpu) {
    const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/cache";
    if (access(dir.c_str(), F_OK) != 0) break;
    for (int index = 0;; ++index) {
      const std::string base = dir + "/index" + std::to_string(index) + "/";
      std::ifstream level_file(base + "level"), type_file(base + "type"), size_file(base + "size"),
          shared_file(base + "shared_cpu_list");
      if (!level_file) break;
      int level = 0;
      std::string type, size, shared;
      level_file >> level;
      type_file >> type;
      size_file >> size;
      shared_file >> shared;
      if (type == "Instruction" || size.empty()) continue;
      int64_t bytes = std::atoll(size.c_str());
      if (size.back() == 'K') bytes <<= 10;
      if (size.back() == 'M') bytes <<= 20;
      if (level > best_level) {
        best_level = level;
        total = 0;
        seen.clear();
      }
      if (level == best_level && seen.insert(shared).second) total += bytes;
    }
  }
  if (total > 0) return total;
  for (int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
    const long bytes = sysconf(name);
    if (bytes > 0) return bytes;
  }
  return 0;
}

ReadBandwidthProbe::ReadBandwidthProbe(int64_t bytes)
    : bytes_(std::max<int64_t>(kBlockBytes, bytes / kBlockBytes * kBlockBytes)) {
  // 2 MiB aligned, huge pages where allowed: fewer TLB misses, so the figure
  // is the memory system's, not the page walker's.
  buffer_ = static_cast<char*>(std::aligned_alloc(1 << 21, bytes_));
  madvise(buffer_, bytes_, MADV_HUGEPAGE);
  // Non-zero contents (never the shared zero page), written by the threads
  // that will read them.
  ThreadPool::Default().ParallelFor(bytes_ / kBlockBytes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      std::memset(buffer_ + b * kBlockBytes, static_cast<int>(b & 0x7f) + 1, kBlockBytes);
    }
  });
}

ReadBandwidthProbe::~ReadBandwidthProbe() { std::free(buffer_); }

std::vector<std::string> ReadBandwidthProbe::Methods() {
  std::vector<std::string> methods;
  for (const ReadMethod& method : kReadMethods) {
    const bool supported =
        method.wide ? __builtin_cpu_supports("avx512f") : __builtin_cpu_supports("avx2");
    if (supported) methods.push_back(method.name);
  }
  return methods;
}

double ReadBandwidthProbe::Pass(const std::string& method) {
  uint64_t (*read)(const char*, int64_t) = nullptr;
  for (const ReadMethod& m : kReadMethods) {
    if (method == m.name) read = m.read;
  }
  if (read == nullptr) return 0.0;
  const double start = NowSeconds();
  // 1 MiB blocks, handed out in contiguous runs of a few per thread.
  ThreadPool::Default().ParallelFor(bytes_ / kBlockBytes, 1, [&](int64_t begin, int64_t end) {
    uint64_t sum = 0;
    for (int64_t b = begin; b < end; ++b) sum += read(buffer_ + b * kBlockBytes, kBlockBytes);
    g_sink += sum;
  });
  return static_cast<double>(bytes_) / (NowSeconds() - start) * 1e-9;
}

std::vector<std::string> FmaIsas() {
  std::vector<std::string> isas;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas.push_back("avx2");
  if (__builtin_cpu_supports("avx512f")) isas.push_back("avx512");
  return isas;
}

double FmaPass(const std::string& isa, double seconds) {
  ThreadPool& pool = ThreadPool::Default();
  const bool wide = isa == "avx512";
  const int lanes = wide ? 16 : 8, chains = wide ? 16 : 12;
  // Rounds of short tasks (~1 ms each), several per thread so that every
  // thread stays busy to the end of a round, until `seconds` have passed.
  const int64_t iters = wide ? 1 << 16 : 1 << 17;
  const int64_t tasks_per_round = 8 * pool.num_threads();
  int64_t tasks = 0;
  const double start = NowSeconds();
  double elapsed = 0;
  do {
    pool.ParallelFor(tasks_per_round, 1, [&](int64_t begin, int64_t end) {
      float sum = 0;
      for (int64_t t = begin; t < end; ++t) sum += wide ? FmaAvx512(iters) : FmaAvx2(iters);
      g_sink += static_cast<uint64_t>(sum);
    });
    tasks += tasks_per_round;
    elapsed = NowSeconds() - start;
  } while (elapsed < seconds);
  return 2.0 * lanes * chains * static_cast<double>(iters) * static_cast<double>(tasks) / elapsed *
         1e-9;
}

Roofline MeasureRoofline(ReadBandwidthProbe& probe, int reps) {
  Roofline roofline;
  roofline.threads = ThreadPool::Default().num_threads();
  roofline.buffer_bytes = probe.bytes();
  // Methods take turns within each repetition, so that a noisy moment does
  // not fall on one of them only.
  const std::vector<std::string> methods = ReadBandwidthProbe::Methods();
  std::vector<std::vector<double>> rates(methods.size());
  for (int rep = -1; rep < reps; ++rep) {  // Repetition -1 warms up.
    for (size_t m = 0; m < methods.size(); ++m) {
      const double rate = probe.Pass(methods[m]);
      if (rep >= 0) rates[m].push_back(rate);
    }
  }
  for (size_t m = 0; m < methods.size(); ++m) {
    roofline.bandwidth_gb_per_s.push_back({methods[m], Median(rates[m])});
    if (roofline.bandwidth_gb_per_s.back().value > roofline.bandwidth_gb_per_s_best) {
      roofline.bandwidth_gb_per_s_best = roofline.bandwidth_gb_per_s.back().value;
      roofline.best_bandwidth_method = methods[m];
    }
  }
  const std::vector<std::string> isas = FmaIsas();
  std::vector<std::vector<double>> flops(isas.size());
  for (int rep = -1; rep < reps; ++rep) {
    for (size_t i = 0; i < isas.size(); ++i) {
      const double rate = FmaPass(isas[i], rep < 0 ? 0.05 : 0.1);
      if (rep >= 0) flops[i].push_back(rate);
    }
  }
  for (size_t i = 0; i < isas.size(); ++i) {
    roofline.fma_gflop_per_s.push_back({isas[i], Median(flops[i])});
    if (roofline.fma_gflop_per_s.back().value > roofline.fma_gflop_per_s_best) {
      roofline.fma_gflop_per_s_best = roofline.fma_gflop_per_s.back().value;
      roofline.best_fma_isa = isas[i];
    }
  }
  return roofline;
}

}  // namespace dsv2::bench
