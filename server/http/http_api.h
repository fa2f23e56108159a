// The OpenAI-compatible HTTP API of a serving process (dsv2-standalone,
// dsv2-router) from its --http_* flags: an HttpServer with the
// OpenAiFrontend's routes, on the same TLS files, tokens and client CA as
// the process's gRPC API (RpcSecurity), calling the process's own gRPC
// server in-process.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<HttpApi> http, HttpApi::FromFlags({...}));
//   // once the gRPC server runs:
//   if (http) RETURN_IF_ERROR(http->Start(server->InProcessChannel(grpc::ChannelArguments())));
//   ...   // after the gRPC server has shut down:
//   if (http) http->Stop();
//
// Flags: --http_listen (default 127.0.0.1:8000, vLLM's port, on loopback;
// empty: no HTTP API), --http_port_file, --http_max_body_mib,
// --http_max_connections, --http_read_timeout_s, --http_idle_timeout_s,
// --served_model_name. Plaintext on an address that is not loopback needs
// --api_insecure, as for gRPC.
//
// Thread safety: Start and Stop from one thread.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc/security_flags.h"
#include "grpcpp/grpcpp.h"
#include "server/api/text_frontend.h"
#include "server/http/http_server.h"
#include "server/http/openai_frontend.h"

namespace dsv2 {

struct HttpApiParams {
  std::string model_dir;              // The default --served_model_name.
  const TextFrontend* text = nullptr;  // Token names for logprobs; may be null.
  const RpcSecurity* security = nullptr;
  // A client that does not take a write for this long is cut off (the
  // process's --stream_write_timeout_s).
  absl::Duration write_timeout = absl::Seconds(30);
};

class HttpApi {
 public:
  // From the flags; nullptr (not an error) when --http_listen is empty.
  // InvalidArgument names a bad flag.
  static absl::StatusOr<std::unique_ptr<HttpApi>> FromFlags(const HttpApiParams& params);
  // Whether --http_listen asks for an HTTP API.
  static bool Enabled();

  // Listens, serving through `in_process` (the gRPC server's in-process
  // channel), and writes --http_port_file.
  absl::Status Start(std::shared_ptr<grpc::Channel> in_process);
  void Stop();
  int port() const { return http_ ? http_->port() : 0; }
  // "http(s)://HOST:PORT" once started.
  std::string url() const;
  const std::string& model_name() const { return frontend_options_.model_name; }

 private:
  HttpApi() = default;

  HttpServerOptions server_options_;
  OpenAiFrontendOptions frontend_options_;
  std::string port_file_;
  std::unique_ptr<OpenAiFrontend> frontend_;
  std::unique_ptr<HttpServer> http_;
};

}  // namespace dsv2
