#include "tools/dsv2/connection.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/rpc/tls.h"

namespace dsv2::cli {

std::vector<FlagSpec> ConnectionFlags() {
  return {
      {"addr", true, "server address (default 127.0.0.1:50051)"},
      {"tls", false, "use TLS, trusting the system's root certificates"},
      {"tls-ca", true, "use TLS, trusting this CA (PEM) for the server's certificate"},
      {"tls-cert", true, "client certificate (PEM) for mTLS"},
      {"tls-key", true, "its private key (PEM)"},
      {"token", true, "bearer token (or the DSV2_API_TOKEN environment variable)"},
      {"token-file", true, "read the bearer token from this file"},
  };
}

absl::StatusOr<Connection> Connect(const Args& args) {
  Connection connection;
  connection.address = args.Get("addr").value_or("127.0.0.1:50051");
  TlsFiles files{.cert = args.Get("tls-cert").value_or(""),
                 .key = args.Get("tls-key").value_or(""),
                 .ca = args.Get("tls-ca").value_or("")};
  const bool tls = args.Has("tls") || !files.ca.empty() || files.has_identity();
  if (tls) {
    absl::StatusOr<CertificateInfo> checked = CheckTlsFiles(files);
    if (!checked.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-ca/--tls-cert/--tls-key: ", checked.status().message()));
    }
  }
  connection.channel = grpc::CreateChannel(
      connection.address, tls ? ChannelTlsCredentials(files) : grpc::InsecureChannelCredentials());
  if (std::optional<std::string> path = args.Get("token-file")) {
    std::ifstream in(*path);
    if (!in) return absl::InvalidArgumentError(absl::StrCat("--token-file ", *path, ": unreadable"));
    std::ostringstream text;
    text << in.rdbuf();
    connection.token = std::string(absl::StripAsciiWhitespace(text.str()));
  } else if (std::optional<std::string> token = args.Get("token")) {
    connection.token = *token;
  } else if (const char* env = std::getenv("DSV2_API_TOKEN"); env != nullptr) {
    connection.token = env;
  }
  return connection;
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext(
    std::chrono::milliseconds timeout) const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + timeout);
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
  return context;
}

}  // namespace dsv2::cli
