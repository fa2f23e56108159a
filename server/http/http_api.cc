#include "server/http/http_api.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/process.h"

ABSL_FLAG(std::string, http_listen, "127.0.0.1:8000",
          "Address of the OpenAI-compatible HTTP API (POST /v1/completions, "
          "/v1/chat/completions; GET /v1/models, /health); port 0 lets the OS choose (see "
          "--http_port_file); empty: no HTTP API.");
ABSL_FLAG(std::string, http_port_file, "", "Write the HTTP API's bound port to this file.");
ABSL_FLAG(int64_t, http_max_body_mib, 8, "Largest HTTP request body, in MiB (beyond: 413).");
ABSL_FLAG(int64_t, http_max_connections, 512,
          "HTTP connections open at once, each with a thread; beyond, 503 at once.");
ABSL_FLAG(double, http_read_timeout_s, 30,
          "An HTTP request's head and body must arrive within this many seconds (beyond: 408).");
ABSL_FLAG(double, http_idle_timeout_s, 5,
          "An idle HTTP keep-alive connection is closed after this many seconds.");
ABSL_FLAG(std::string, served_model_name, "",
          "The model's name in the HTTP API (/v1/models; requests' `model`); default: --model "
          "as given.");

namespace dsv2 {

bool HttpApi::Enabled() { return !absl::GetFlag(FLAGS_http_listen).empty(); }

absl::StatusOr<std::unique_ptr<HttpApi>> HttpApi::FromFlags(const HttpApiParams& params) {
  const std::string listen = absl::GetFlag(FLAGS_http_listen);
  if (listen.empty()) return nullptr;
  const int64_t body_mib = absl::GetFlag(FLAGS_http_max_body_mib);
  const int64_t connections = absl::GetFlag(FLAGS_http_max_connections);
  const double read_timeout = absl::GetFlag(FLAGS_http_read_timeout_s);
  const double idle_timeout = absl::GetFlag(FLAGS_http_idle_timeout_s);
  if (body_mib < 1 || body_mib > 1024 || connections < 1 || connections > 65536 ||
      !(read_timeout > 0) || !(idle_timeout > 0)) {
    return absl::InvalidArgumentError(
        "--http_max_body_mib must be in [1, 1024], --http_max_connections in [1, 65536], "
        "--http_read_timeout_s and --http_idle_timeout_s > 0");
  }
  const RpcSecurity& security = *params.security;
  std::optional<TlsFiles> tls = security.ApiTlsFiles();
  if (!tls && !security.api_plaintext_anywhere() && !IsLoopbackAddress(listen)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "serving the HTTP API in plaintext on ", listen,
        ", which is not a loopback address: give a certificate (--tls_cert/--tls_key or "
        "--api_tls_cert/--api_tls_key) or --api_insecure"));
  }
  auto api = std::unique_ptr<HttpApi>(new HttpApi());
  api->server_options_ = HttpServerOptions{
      .listen = listen,
      .tls = tls,
      .max_connections = static_cast<int>(connections),
      .max_body_bytes = static_cast<size_t>(body_mib) << 20,
      .read_timeout = absl::Seconds(read_timeout),
      .idle_timeout = absl::Seconds(idle_timeout),
      .write_timeout = params.write_timeout,
  };
  std::string name = absl::GetFlag(FLAGS_served_model_name);
  if (name.empty()) name = params.model_dir;
  api->frontend_options_ = OpenAiFrontendOptions{
      .model_name = std::move(name), .policy = security.ApiPolicy(), .text = params.text};
  api->port_file_ = absl::GetFlag(FLAGS_http_port_file);
  return api;
}

absl::Status HttpApi::Start(std::shared_ptr<grpc::Channel> in_process) {
  frontend_ = std::make_unique<OpenAiFrontend>(std::move(in_process), frontend_options_);
  http_ = std::make_unique<HttpServer>(server_options_);
  frontend_->Register(http_.get());
  if (absl::Status s = http_->Start(); !s.ok()) return s;
  DSV2_LOG(INFO) << "OpenAI-compatible HTTP API on " << url() << "/v1 (model `"
                 << frontend_options_.model_name << "`)";
  WritePortFile(port_file_, http_->port());
  return absl::OkStatus();
}

void HttpApi::Stop() {
  if (http_) http_->Stop();
}

std::string HttpApi::url() const {
  const std::string& listen = server_options_.listen;
  return absl::StrCat(server_options_.tls ? "https://" : "http://",
                      listen.substr(0, listen.rfind(':')), ":", port());
}

}  // namespace dsv2
