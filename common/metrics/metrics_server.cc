#include "common/metrics/metrics_server.h"

#include <exception>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"

namespace dsv2 {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, std::shared_ptr<MetricsRegistry> registry) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", listen, "' is not host:port"));
  }
  std::string host = listen.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  // civetweb options (docs: civetweb's UserManual.md). Keep-alive off: a
  // scrape is one request, and an idle kept-alive connection would hold one
  // of the few threads.
  std::vector<std::string> options = {
      "listening_ports", absl::StrCat(host, ":", port),
      "num_threads", absl::StrCat(kThreads),
      "request_timeout_ms", absl::StrCat(kRequestTimeoutMs),
      "max_request_size", absl::StrCat(kMaxRequestBytes),
      "enable_keep_alive", "no",
  };
  auto server = std::unique_ptr<MetricsServer>(new MetricsServer());
  server->registry_ = registry;
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(std::move(options));
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  server->exposer_->RegisterCollectable(registry);
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty() || ports[0] <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen));
  }
  server->port_ = ports[0];
  server->address_ = absl::StrCat(host, ":", server->port_);
  return server;
}

MetricsServer::~MetricsServer() = default;

}  // namespace dsv2
