// Serves a MetricsRegistry at /metrics (Prometheus's text exposition
// format) on its own port, over the project's bounded HttpServer
// (server/http/http_server.h), so that whoever can reach the port cannot
// take more than a fixed share of the process: at most kMaxConnections
// connections, each with a thread (a connection beyond them is answered 503
// at once and holds nothing); a request must arrive whole within
// kRequestTimeout (a slow sender is cut off); request heads of at most 64
// KiB and no bodies; only GET /metrics (404 otherwise).
//
// TLS (optional): HTTPS with the given certificate and key; with a CA, a
// scraper must present a certificate of that CA (401 otherwise).
// docs/observability.md.
//
// Usage:
//   ASSIGN_OR_RETURN(auto server, MetricsServer::Start({.listen = "127.0.0.1:0"}, registry));
//   server->port();   // the bound port
//
// Thread safety: port(), address() and url() may be called from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics/metrics_registry.h"
#include "common/rpc/tls.h"
#include "server/http/http_server.h"

namespace dsv2 {

struct MetricsServerOptions {
  // host:port; an IPv4 address or "localhost"; port 0 lets the OS choose.
  std::string listen;
  // HTTPS with tls->cert and tls->key; with tls->ca, scrapers must present
  // a certificate of that CA. nullopt: plain HTTP.
  std::optional<TlsFiles> tls;
};

class MetricsServer {
 public:
  static constexpr int kMaxConnections = 4;
  static constexpr absl::Duration kRequestTimeout = absl::Seconds(2);

  // InvalidArgument for a malformed address or TLS file, Unavailable when
  // the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      MetricsServerOptions options, std::shared_ptr<MetricsRegistry> registry);
  ~MetricsServer();  // Stops serving; returns when no scrape runs.

  int port() const { return http_->port(); }
  // host:port as bound, e.g. "127.0.0.1:43521".
  const std::string& address() const { return address_; }
  // http(s)://address/metrics
  std::string url() const;

 private:
  MetricsServer() = default;
  std::shared_ptr<MetricsRegistry> registry_;
  std::unique_ptr<HttpServer> http_;
  bool tls_ = false;
  std::string address_;
};

}  // namespace dsv2
