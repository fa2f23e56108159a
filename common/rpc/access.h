// Who may call a gRPC server: authentication of every call and the role
// checks of each method.
//
// Three kinds of plane:
//   Open()      plaintext (--insecure): every caller is anonymous and allowed.
//   Cluster()   mTLS between the cluster's processes: a caller must present a
//               certificate of the cluster CA whose SPIFFE id names its role
//               and id (common/rpc/identity.h); each method allows roles.
//   Public(...) the generation API: bearer tokens (ApiTokens) and/or client
//               certificates; anonymous callers only when neither is set.
//
//   ASSIGN_OR_RETURN(Caller caller, policy.Authorize(*context, {Role::kRouter}, "GetLoad"));
//
// Failures: UNAUTHENTICATED when the call carries no acceptable credentials
// (no certificate, no or an unknown token), PERMISSION_DENIED when it does
// but its role may not call the method. Messages name what is missing,
// never a secret.
//
// Front ends of another protocol (the HTTP API, server/http) authenticate
// their own clients with the same policy (Authenticate(PresentedCredentials))
// and then call the process's gRPC server through its in-process channel
// (grpc::Server::InProcessChannel), naming the principal in
// kPrincipalMetadata. A call that came through the in-process channel is
// this process, never a network peer (IsInProcessCall), so on a Public or
// Open plane it is taken as the principal it names; the same metadata from
// a network caller is ignored.
//
// Thread safety: thread-safe.
#pragma once

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/rpc/api_tokens.h"
#include "common/rpc/identity.h"
#include "common/rpc/revocations.h"
#include "grpcpp/server_context.h"

namespace dsv2 {

// Metadata naming the principal a call is made for: sent by a router to
// attention workers (trusted from router identities only,
// GenerationServiceOptions::trust_forwarded_principal) and by in-process
// front ends (trusted from the in-process channel only).
inline constexpr char kPrincipalMetadata[] = "dsv2-principal";

// An authenticated caller.
struct Caller {
  // Whose requests these are, e.g. for Abort: "spiffe://dsv2/router/r1",
  // "token:alice", "cert:<SPIFFE id or subject>", or "" (anonymous).
  std::string principal;
  std::optional<Identity> identity;  // From a cluster certificate.
};

// What a client presented to a front end that is not gRPC (the HTTP API),
// independent of the protocol.
struct PresentedCredentials {
  // The token of an `Authorization: Bearer TOKEN` header, if any.
  std::optional<std::string_view> bearer_token;
  // The client certificate the connection verified against the client CA,
  // if one was sent: its principal name (CertificatePrincipalName) and PEM
  // (for revocation).
  std::optional<std::string> certificate_name;
  std::string certificate_pem;
};

class AccessPolicy {
 public:
  static AccessPolicy Open();
  // `revocations` (may be null) refuse revoked certificates on every call.
  static AccessPolicy Cluster(std::shared_ptr<Revocations> revocations = nullptr);
  // `tokens` (may be null) authenticate bearer tokens; with `client_certs`,
  // a verified client certificate authenticates its holder.
  static AccessPolicy Public(std::shared_ptr<ApiTokens> tokens, bool client_certs,
                             std::shared_ptr<Revocations> revocations = nullptr);

  // Who is calling; UNAUTHENTICATED if nobody acceptable. On a Public or
  // Open plane, a call through the in-process channel is the principal of
  // its kPrincipalMetadata ("" without).
  absl::StatusOr<Caller> Authenticate(const grpc::ServerContextBase& context) const;
  // The same for a client of another protocol, by what it presented; on a
  // Cluster plane always UNAUTHENTICATED (it is gRPC and mTLS only).
  absl::StatusOr<Caller> Authenticate(const PresentedCredentials& presented) const;
  // Authenticate, then (on a cluster plane) require one of `roles`;
  // `method` names the call in the message.
  absl::StatusOr<Caller> Authorize(const grpc::ServerContextBase& context,
                                   std::initializer_list<Role> roles,
                                   std::string_view method) const;

  bool open() const { return kind_ == Kind::kOpen; }

 private:
  enum class Kind { kOpen, kCluster, kPublic };
  AccessPolicy(Kind kind, std::shared_ptr<ApiTokens> tokens, bool client_certs,
               std::shared_ptr<Revocations> revocations)
      : kind_(kind),
        tokens_(std::move(tokens)),
        client_certs_(client_certs),
        revocations_(std::move(revocations)) {}
  // Whether the call's peer certificate is revoked.
  bool Revoked(const grpc::AuthContext& auth) const;
  bool RevokedPem(std::string_view pem) const;

  Kind kind_;
  std::shared_ptr<ApiTokens> tokens_;
  bool client_certs_ = false;
  std::shared_ptr<Revocations> revocations_;
};

// The bearer token of `authorization` metadata ("Bearer TOKEN"), if any.
std::optional<std::string_view> BearerToken(const grpc::ServerContextBase& context);
// The token of an authorization value "Bearer TOKEN" (the scheme in any
// case), if it is one.
std::optional<std::string_view> ParseBearer(std::string_view authorization);

// Whether the call came through the server's in-process channel
// (grpc::Server::InProcessChannel) rather than a network connection. Every
// network connection of gRPC 1.51 passes a security connector (insecure,
// TLS, ...) that records its `transport_security_type` in the call's auth
// context and has an address as its peer; the in-process transport has
// neither.
bool IsInProcessCall(const grpc::ServerContextBase& context);

}  // namespace dsv2
