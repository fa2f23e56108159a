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

// An authenticated caller.
struct Caller {
  // Whose requests these are, e.g. for Abort: "spiffe://dsv2/router/r1",
  // "token:alice", "cert:<SPIFFE id or subject>", or "" (anonymous).
  std::string principal;
  std::optional<Identity> identity;  // From a cluster certificate.
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

  // Who is calling; UNAUTHENTICATED if nobody acceptable.
  absl::StatusOr<Caller> Authenticate(const grpc::ServerContextBase& context) const;
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

  Kind kind_;
  std::shared_ptr<ApiTokens> tokens_;
  bool client_certs_ = false;
  std::shared_ptr<Revocations> revocations_;
};

// The bearer token of `authorization` metadata ("Bearer TOKEN"), if any.
std::optional<std::string_view> BearerToken(const grpc::ServerContextBase& context);

}  // namespace dsv2
