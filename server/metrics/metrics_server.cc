#include "server/metrics/metrics_server.h"

#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dsv2 {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    MetricsServerOptions options, std::shared_ptr<MetricsRegistry> registry) {
  const std::string& listen = options.listen;
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", listen, "' is not host:port"));
  }
  std::string host = listen.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  const bool client_certs = options.tls && !options.tls->ca.empty();

  auto server = std::unique_ptr<MetricsServer>(new MetricsServer());
  server->registry_ = registry;
  server->tls_ = options.tls.has_value();
  server->http_ = std::make_unique<HttpServer>(HttpServerOptions{
      .listen = absl::StrCat(host, ":", port),
      .tls = std::move(options.tls),
      .max_connections = kMaxConnections,
      .max_body_bytes = 0,
      .read_timeout = kRequestTimeout,
      .idle_timeout = kRequestTimeout,
      .write_timeout = absl::Seconds(10),
      .max_requests_per_connection = 100,
  });
  server->http_->SetAuthenticate(
      [](const httplib::Request&,
         const ClientConnection& connection) -> absl::StatusOr<std::string> {
        if (!connection.certificate()) {
          return absl::UnauthenticatedError(
              "a client certificate of the cluster CA is required to read metrics");
        }
        return connection.certificate()->name;
      });
  server->http_->SetErrorBody([](int, const std::string& message, httplib::Response& response) {
    response.set_content(message + "\n", "text/plain");
  });
  server->http_->Route("GET", "/metrics", client_certs,
                       [registry](HttpRequest&, httplib::Response& response) {
                         response.set_content(registry->Text(), "text/plain; version=0.0.4");
                       });
  if (absl::Status started = server->http_->Start(); !started.ok()) {
    return absl::Status(started.code(),
                        absl::StrCat("cannot serve metrics on ", listen, ": ", started.message()));
  }
  server->address_ = absl::StrCat(host, ":", server->http_->port());
  return server;
}

std::string MetricsServer::url() const {
  return absl::StrCat(tls_ ? "https://" : "http://", address_, "/metrics");
}

MetricsServer::~MetricsServer() {
  if (http_) http_->Stop();
}

}  // namespace dsv2
