#include "server/metrics/metrics_flags.h"

#include <fstream>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"

ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics at ADDRESS/metrics (host:port; port 0 lets the OS choose). "
          "Empty: no metrics server (docs/observability.md).");
ABSL_FLAG(bool, metrics_tls, true,
          "Serve /metrics over HTTPS with this process's certificate when it has one (the "
          "cluster's --tls_cert/--tls_key; dsv2-standalone's API certificate), asking scrapers "
          "for a certificate of --tls_ca. false: plain HTTP (keep it on loopback or a network "
          "only the scraper reaches).");
ABSL_FLAG(std::string, metrics_port_file, "",
          "Write the bound metrics port to this file once serving metrics.");
ABSL_FLAG(int64_t, metrics_expert_series_limit, 4096,
          "Export dsv2:moe_expert_tokens_total (tokens per routed expert per MoE layer) while "
          "MoE layers x routed experts is at most this: 1664 series for DeepSeek-V2-Lite, 9440 "
          "for DeepSeek-V2 (off by default). 0: never. The per-layer imbalance is always "
          "exported.");

namespace dsv2 {

int64_t ExpertSeriesLimitFromFlags() { return absl::GetFlag(FLAGS_metrics_expert_series_limit); }

absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetricsServerFromFlags(
    const std::string& program, std::shared_ptr<MetricsRegistry> registry,
    std::optional<TlsFiles> tls) {
  const std::string listen = absl::GetFlag(FLAGS_metrics_listen);
  if (listen.empty()) return nullptr;
  if (!absl::GetFlag(FLAGS_metrics_tls)) tls.reset();
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start({.listen = listen, .tls = std::move(tls)}, std::move(registry));
  if (!server.ok()) {
    return absl::Status(server.status().code(),
                        absl::StrCat("--metrics_listen: ", server.status().message()));
  }
  const std::string port_file = absl::GetFlag(FLAGS_metrics_port_file);
  if (!port_file.empty()) {
    // Written whole under another name and renamed, so a reader never sees
    // a partial port.
    const std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << (*server)->port() << "\n";
    if (std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("--metrics_port_file: cannot write ", port_file));
    }
  }
  DSV2_LOG(INFO) << program << ": metrics at " << (*server)->url();
  return server;
}

}  // namespace dsv2
