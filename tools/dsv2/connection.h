// How `dsv2 client` and `dsv2 health` reach a server: its address, TLS
// (the CA that signed the server's certificate, and a client certificate
// for mTLS) and a bearer token.
//
//   --addr HOST:PORT   --tls-ca FILE   [--tls-cert FILE --tls-key FILE]
//   [--token TOKEN | --token-file FILE]       (or the DSV2_API_TOKEN variable)
//
// Without --tls-ca (or --tls-cert) the connection is plaintext; --tls uses
// TLS with the system's roots.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "tools/dsv2/args.h"

namespace dsv2::cli {

std::vector<FlagSpec> ConnectionFlags();

struct Connection {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::string token;  // Empty: none.

  // A context with `timeout` and the token.
  std::unique_ptr<grpc::ClientContext> NewContext(std::chrono::milliseconds timeout) const;
};

// InvalidArgument names a flag that is wrong (e.g. an unreadable file).
absl::StatusOr<Connection> Connect(const Args& args);

}  // namespace dsv2::cli
