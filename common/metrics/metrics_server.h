// Serves a MetricsRegistry at /metrics over plain HTTP (Prometheus's text
// exposition format), on its own port, with prometheus-cpp's pull exposer
// (civetweb). The server is bounded so that whoever can reach the port
// cannot take more than a fixed share of the process: a fixed pool of
// kThreads connection threads (more connections wait in the listen queue),
// a request must arrive whole within kRequestTimeoutMs (a slow sender is
// cut off), request headers are at most kMaxRequestBytes, and only GET
// /metrics is answered (404 otherwise). docs/observability.md.
//
// Usage:
//   ASSIGN_OR_RETURN(auto server, MetricsServer::Start("127.0.0.1:0", registry));
//   server->port();   // the bound port
//
// Thread safety: port() and address() may be called from any thread.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/metrics/metrics_registry.h"

namespace prometheus {
class Exposer;
}

namespace dsv2 {

class MetricsServer {
 public:
  static constexpr int kThreads = 4;
  static constexpr int kRequestTimeoutMs = 2000;
  static constexpr int kMaxRequestBytes = 8192;

  // Listens on `listen` (host:port; an IPv4 address or "localhost", port 0
  // lets the OS choose). InvalidArgument for a malformed address,
  // Unavailable when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen, std::shared_ptr<MetricsRegistry> registry);
  ~MetricsServer();  // Stops serving; returns when no scrape runs.

  int port() const { return port_; }
  // host:port as bound, e.g. "127.0.0.1:43521".
  const std::string& address() const { return address_; }

 private:
  MetricsServer() = default;
  std::shared_ptr<MetricsRegistry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::string address_;
};

}  // namespace dsv2
