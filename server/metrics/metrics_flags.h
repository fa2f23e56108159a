// The metrics flags every process takes:
//   --metrics_listen     host:port of /metrics (port 0: the OS chooses);
//                        empty (the default): no metrics server
//   --metrics_port_file  write the bound metrics port here (scripts, tests)
//   --metrics_tls        serve /metrics over HTTPS with the process's TLS
//                        files when it has them (default true)
//   --metrics_expert_series_limit
//                        export tokens per routed expert per layer while
//                        layers × experts is at most this (default 4096)
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/rpc/tls.h"
#include "server/metrics/metrics_server.h"

namespace dsv2 {

// --metrics_expert_series_limit.
int64_t ExpertSeriesLimitFromFlags();

// Starts the metrics server the flags ask for and logs its address
// ("PROGRAM: metrics at https://127.0.0.1:PORT/metrics"); null when
// --metrics_listen is empty. `tls` is the process's (RpcSecurity::
// MetricsTlsFiles); --metrics_tls=false serves plain HTTP regardless. An
// error names the flag.
absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetricsServerFromFlags(
    const std::string& program, std::shared_ptr<MetricsRegistry> registry,
    std::optional<TlsFiles> tls);

}  // namespace dsv2
