// The two ceilings of this machine that the CPU kernels are measured against.
// A benchmark measures them in the same process as its own figures, ideally
// interleaved with them (the machine is shared and noisy, so a figure and
// its roofline should come from the same moment):
//
//  - memory read bandwidth: every ThreadPool::Default() thread streams its
//    part of a buffer far larger than the last-level cache with vector loads
//    into several independent accumulators (so that neither the load issue
//    rate nor a dependency chain limits it), as one or several concurrent
//    sequential streams per thread (several keep more misses in flight);
//    the best style is the roofline;
//  - fp32 FMA throughput: every thread runs independent chains of fused
//    multiply-adds in registers, at AVX2 and AVX-512 width.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsv2::bench {

// A buffer of `bytes` (rounded to whole MiB), filled with non-zero data by
// the threads that will read it, on huge pages where the kernel allows.
class ReadBandwidthProbe {
 public:
  explicit ReadBandwidthProbe(int64_t bytes);
  ~ReadBandwidthProbe();
  ReadBandwidthProbe(const ReadBandwidthProbe&) = delete;
  ReadBandwidthProbe& operator=(const ReadBandwidthProbe&) = delete;

  int64_t bytes() const { return bytes_; }

  // The load styles this CPU can run: AVX-512 or AVX2 loads, each thread
  // reading its blocks as 1, 4, 8 or 16 concurrent sequential streams
  // ("avx512-8streams", ...).
  static std::vector<std::string> Methods();

  // One pass over the whole buffer by every thread; GB/s (1e9 bytes/s).
  double Pass(const std::string& method);

 private:
  char* buffer_ = nullptr;
  int64_t bytes_ = 0;
};

// The FMA widths this CPU can run: "avx2", "avx512".
std::vector<std::string> FmaIsas();

// One run of independent FMA chains of `isa` on every thread, lasting about
// `seconds`; GFLOP/s (a fused multiply-add counts 2 flops per lane).
double FmaPass(const std::string& isa, double seconds);

// Medians over `reps` passes (after one warm-up pass) of each method / ISA.
struct NamedFigure {
  std::string name;
  double value = 0;
};
struct Roofline {
  int threads = 0;
  int64_t buffer_bytes = 0;
  std::vector<NamedFigure> bandwidth_gb_per_s;  // Per method.
  std::vector<NamedFigure> fma_gflop_per_s;     // Per ISA.
  std::string best_bandwidth_method;
  double bandwidth_gb_per_s_best = 0;  // The best method's median: the roofline.
  std::string best_fma_isa;
  double fma_gflop_per_s_best = 0;  // The best ISA's median: the roofline.
};
Roofline MeasureRoofline(ReadBandwidthProbe& probe, int reps);

// The last-level cache size in bytes, all instances together, from sysfs
// (sysconf where sysfs has none; 0 if unknown).
int64_t LastLevelCacheBytes();

}  // namespace dsv2::bench
