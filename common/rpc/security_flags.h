// The TLS and credential flags every process shares, and what they make:
// server and channel credentials and access policies for the cluster plane
// (mTLS between controller, router, attention and expert workers) and the
// public API (router, dsv2-standalone).
//
// Cluster plane: --tls_cert, --tls_key (this process's certificate, whose
// SPIFFE id names its role and id), --tls_ca (the cluster CA), --tls_crl_dir
// (revocations); or --insecure for plaintext, which must be asked for.
// Public API: served with --api_tls_cert/--api_tls_key (default: the cluster
// certificate); --api_client_ca asks clients for certificates of that CA;
// --api_tokens_file accepts bearer tokens; --api_insecure serves it in
// plaintext (behind a TLS-terminating proxy). dsv2-standalone, which has
// no cluster plane, serves its API with --tls_cert/--tls_key, and plaintext
// without them on loopback addresses only unless --insecure.
//
//   ASSIGN_OR_RETURN(RpcSecurity security,
//                    RpcSecurityFromFlags({.role = Role::kRouter, .public_api = true,
//                                          .api_listen = listen}));
//   builder.AddListeningPort(listen, security.ApiServerCredentials());
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/rpc/access.h"
#include "common/rpc/identity.h"
#include "common/rpc/tls.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace dsv2 {

struct SecurityNeeds {
  // The role of this process on the cluster plane; nullopt: no cluster plane
  // (dsv2-standalone).
  std::optional<Role> role;
  bool public_api = false;  // It serves dsv2.v1.Generation to clients.
  std::string api_listen;   // Where (for the plaintext-on-loopback rule).
};

class RpcSecurity {
 public:
  // Cluster plane. Insecure: plaintext, Open policy.
  bool cluster_tls() const { return cluster_tls_; }
  // This process's identity from its certificate (cluster TLS only).
  const std::optional<Identity>& identity() const { return identity_; }
  std::shared_ptr<grpc::ServerCredentials> ClusterServerCredentials() const;
  std::shared_ptr<grpc::ChannelCredentials> ClusterChannelCredentials() const;
  AccessPolicy ClusterPolicy() const;

  // Public API.
  bool api_tls() const { return api_tls_; }
  std::shared_ptr<grpc::ServerCredentials> ApiServerCredentials() const;
  AccessPolicy ApiPolicy() const;
  // The API's TLS files for a front end that terminates TLS itself (the
  // HTTP API): certificate and key, and the client CA when clients are
  // asked for certificates; nullopt when the API is plaintext.
  std::optional<TlsFiles> ApiTlsFiles() const;
  // What /metrics is served with (server/metrics): the cluster's files
  // (scrapers need a certificate of the cluster CA) when the cluster plane
  // has TLS, else the API's (dsv2-standalone), else nullopt (plain HTTP).
  std::optional<TlsFiles> MetricsTlsFiles() const;
  // Whether the API may be served in plaintext on any address
  // (--api_insecure or --insecure), not only on loopback.
  bool api_plaintext_anywhere() const { return api_plaintext_anywhere_; }
  // One line for the start-up log: what protects each plane.
  std::string Describe() const;

 private:
  friend absl::StatusOr<RpcSecurity> RpcSecurityFromFlags(const SecurityNeeds& needs);
  bool needs_role_ = false;
  bool public_api_ = false;
  bool cluster_tls_ = false;
  TlsFiles cluster_;
  std::optional<Identity> identity_;
  bool api_tls_ = false;
  bool api_plaintext_anywhere_ = false;
  TlsFiles api_;  // .ca: the client CA (if any).
  std::shared_ptr<ApiTokens> tokens_;
  std::shared_ptr<Revocations> revocations_;  // From --tls_crl_dir.
};

// Reads the flags, checks every file they name (CheckTlsFiles) and that the
// cluster certificate's identity has `needs.role`. InvalidArgument names the
// flag and the problem.
absl::StatusOr<RpcSecurity> RpcSecurityFromFlags(const SecurityNeeds& needs);

// Whether `host_port`'s host is a loopback address (127.0.0.0/8, ::1,
// localhost).
bool IsLoopbackAddress(const std::string& host_port);

}  // namespace dsv2
