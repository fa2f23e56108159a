// The process metrics every Prometheus client library exports, under the
// same names, read from /proc/self at each scrape (Linux):
//   process_cpu_seconds_total      counter  user + system CPU time, seconds
//   process_resident_memory_bytes  gauge    resident set size
//   process_virtual_memory_bytes   gauge    virtual memory size
//   process_open_fds               gauge    open file descriptors
//   process_max_fds                gauge    the soft limit on them
//   process_threads                gauge    threads of the process
//   process_start_time_seconds     gauge    start time, seconds since the Unix epoch
// A figure that cannot be read is left out (never a made-up value).
#pragma once

#include <vector>

#include "prometheus/metric_family.h"

namespace dsv2 {

void CollectProcessMetrics(std::vector<prometheus::MetricFamily>* out);

}  // namespace dsv2
