// An HTTP/1.1 server for the project's HTTP front ends (the OpenAI-compatible
// API, openai_frontend.h). cpp-httplib (Debian's libcpp-httplib 0.11) parses
// requests and writes responses; this class owns the connections, so that
// everything a client can make it hold is bounded:
//
//   - threads: one per open connection, started on demand, at most
//     `max_connections`; a connection beyond them is answered 503 at once
//     (plaintext; closed under TLS) and holds nothing. There is no queue.
//   - time: a request's head and body must arrive within `read_timeout` of
//     its first byte (a client that trickles them, slowloris, is answered 408
//     and closed); a connection waits at most `idle_timeout` for its next
//     request; a write not taken within `write_timeout` closes it.
//   - bytes: a request head of at most 64 KiB, a body of at most
//     `max_body_bytes` (413, before any of it is read when Content-Length
//     says so; chunked bodies are cut off there).
//
// cpp-httplib 0.11 has none of these itself (its reads time out per read
// only, it queues connections without bound, counts no header lines and
// listens with SO_REUSEPORT), so the server overrides its per-connection
// loop: sockets are non-blocking and every wait is a poll() with a deadline
// and the server's stop signal.
//
// TLS (optional): certificate and key from PEM files, reread when they
// change (as gRPC rereads its own, every `reload_interval`); with a CA, a
// client certificate is asked for and verified if sent, and its principal
// name reaches the handler (ClientConnection::certificate()).
//
// Routes may require authentication: the `authenticate` callback runs on
// the request head before its body is read, and a refusal is answered
// (with the connection closed, the body unread) without reading the body.
// Handlers run on the connection's thread and may block; they learn
// whether their client is still there (ClientConnection), so that work for
// a client that left can be cancelled.
//
//   HttpServer server({.listen = "127.0.0.1:0"});
//   server.Route("POST", "/v1/echo", /*authenticated=*/true,
//                [](HttpRequest& request, httplib::Response& response) {...});
//   RETURN_IF_ERROR(server.Start());   // server.port()
//   ...
//   server.Stop();
//
// Thread safety: Route and the callbacks before Start; Start, Stop, port and
// stats from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc/tls.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace dsv2 {

namespace http_internal {
class ServerImpl;
}  // namespace http_internal

struct HttpServerOptions {
  std::string listen;  // host:port ("[::1]:8000" for IPv6); port 0 lets the OS choose.
  // HTTPS with tls->cert and tls->key; with tls->ca, clients are asked for a
  // certificate of that CA (verified if sent). Plaintext without.
  std::optional<TlsFiles> tls;
  int max_connections = 512;
  size_t max_body_bytes = 8 << 20;
  absl::Duration read_timeout = absl::Seconds(30);
  absl::Duration idle_timeout = absl::Seconds(5);
  absl::Duration write_timeout = absl::Seconds(30);
  // Requests served on one connection before it is closed.
  int max_requests_per_connection = 1000;
};

// A verified client certificate.
struct ClientCertificate {
  std::string name;  // CertificatePrincipalName
  std::string pem;
};

// The connection a request came on, for its handler.
class ClientConnection {
 public:
  virtual ~ClientConnection() = default;

  enum class Wake { kReady, kClientGone, kTimeout };
  // Waits until `fd` is readable (kReady), the client has closed or reset
  // the connection or the server stops (kClientGone), or `deadline` passes.
  // Reads nothing from the connection.
  virtual Wake WaitReadable(int fd, absl::Time deadline) = 0;
  // Whether the client has closed or reset the connection (or the server
  // stops), now.
  virtual bool Gone() = 0;
  // The client certificate the TLS handshake verified, if any.
  virtual const std::optional<ClientCertificate>& certificate() const = 0;
  // The peer's address, "ip:port".
  virtual std::string peer() const = 0;
};

struct HttpRequest {
  const httplib::Request& http;
  std::string body;       // Read whole, within max_body_bytes.
  std::string principal;  // What `authenticate` returned (authenticated routes).
  ClientConnection& connection;
};

class HttpServer {
 public:
  using Handler = std::function<void(HttpRequest& request, httplib::Response& response)>;
  // Who is calling, from the request head and the connection; a non-OK
  // status refuses the request (ErrorBody answers it).
  using Authenticate = std::function<absl::StatusOr<std::string>(const httplib::Request& head,
                                                                 const ClientConnection&)>;
  // Fills `response` (status already set) with a body for an error of the
  // server's own — 400 unparsable, 404 no route, 405, 408, 413, 503 busy —
  // or of `authenticate`; `message` says what happened.
  using ErrorBody = std::function<void(int status, const std::string& message,
                                       httplib::Response& response)>;

  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();  // Stop().
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // `method` is GET or POST; `path` is matched exactly.
  void Route(const std::string& method, const std::string& path, bool authenticated,
             Handler handler);
  void SetAuthenticate(Authenticate authenticate);
  void SetErrorBody(ErrorBody error_body);

  // Binds and serves on a thread of its own. InvalidArgument for a bad
  // address or TLS file, Unavailable when the address cannot be bound.
  absl::Status Start();
  int port() const { return port_; }
  // Stops accepting, wakes every connection (handlers see their client
  // gone) and waits for their threads. Idempotent.
  void Stop();

  struct Stats {
    int64_t connections = 0;         // Accepted and given a thread.
    int64_t open = 0;                // Open now.
    int64_t refused_busy = 0;        // Answered 503: every thread busy.
    int64_t read_timeouts = 0;       // Requests whose head or body came too slowly.
    int64_t tls_failures = 0;        // Handshakes that failed.
    int64_t threads = 0;             // Connection threads started (at most max_connections).
  };
  Stats stats() const;

 private:
  const HttpServerOptions options_;
  std::unique_ptr<http_internal::ServerImpl> impl_;
  std::thread listener_;
  std::atomic<bool> listening_done_{false};
  int port_ = 0;
  bool started_ = false;
  std::atomic<bool> stopped_{false};
};

}  // namespace dsv2
