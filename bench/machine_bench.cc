// Measures this machine's memory read bandwidth and fp32 FMA peak, the two
// rooflines the CPU kernels are compared against (see bench/roofline.h).
//
//   machine_bench [--mib 2048] [--reps 7] [--json]
//
// Threads: ThreadPool::Default() (DSV2_NUM_THREADS or all cores).
#include <cstdio>

#include "bench/roofline.h"
#include "bench/stats.h"

int main(int argc, char** argv) {
  using namespace dsv2::bench;
  Flags flags(argc, argv);
  const int reps = static_cast<int>(flags.GetInt("reps", 7, 1, 1000));
  const int64_t buffer_bytes = flags.GetInt("mib", 2048, 1, 1 << 20) << 20;
  if (const std::optional<int> stop =
          flags.StopForUsage("machine_bench", {"mib", "reps", "json"},
                             "usage: machine_bench [--mib N (read buffer, default 2048)] "
                             "[--reps N (default 7)] [--json]\n")) {
    return *stop;
  }
  const int64_t llc = LastLevelCacheBytes();
  ReadBandwidthProbe probe(buffer_bytes);
  const Roofline r = MeasureRoofline(probe, reps);

  if (flags.Has("json")) {
    std::printf("{\"threads\": %d, \"llc_bytes\": %lld, \"buffer_bytes\": %lld, \"reps\": %d, ",
                r.threads, static_cast<long long>(llc), static_cast<long long>(r.buffer_bytes),
                reps);
    std::printf("\"read_gb_per_s\": {");
    for (const auto& m : r.bandwidth_gb_per_s)
      std::printf("\"%s\": %.2f, ", m.name.c_str(), m.value);
    std::printf("\"best\": %.2f}, \"fma_gflop_per_s\": {", r.bandwidth_gb_per_s_best);
    for (const auto& f : r.fma_gflop_per_s) std::printf("\"%s\": %.1f, ", f.name.c_str(), f.value);
    std::printf("\"best\": %.1f}}\n", r.fma_gflop_per_s_best);
    return 0;
  }
  std::printf("threads %d, last-level cache %.0f MiB, read buffer %.0f MiB, medians of %d runs\n",
              r.threads, static_cast<double>(llc) / 1048576.0,
              static_cast<double>(r.buffer_bytes) / 1048576.0, reps);
  std::printf("memory read bandwidth\n");
  for (const auto& m : r.bandwidth_gb_per_s)
    std::printf("  %-22s %8.2f GB/s\n", m.name.c_str(), m.value);
  std::printf("  %-22s %8.2f GB/s\n", "roofline (best)", r.bandwidth_gb_per_s_best);
  std::printf("fp32 FMA throughput (all threads)\n");
  for (const auto& f : r.fma_gflop_per_s)
    std::printf("  %-22s %8.1f GFLOP/s\n", f.name.c_str(), f.value);
  std::printf("  %-22s %8.1f GFLOP/s\n", "roofline (best)", r.fma_gflop_per_s_best);
  return 0;
}
