// Who is calling: the identity a cluster certificate carries, and the
// principal a call is authorised as.
//
// Every process of a TLS cluster has a certificate from the cluster CA whose
// one URI subject alternative name is a SPIFFE id naming its role and id:
//
//   spiffe://dsv2/<role>/<id>     e.g. spiffe://dsv2/expert/expert-2
//
// (deploy/tls/make-certs.sh issues them; cert-manager can too.) Servers read
// it from the verified peer certificate (gRPC's AuthContext), never from
// anything the caller sends.
//
// Thread safety: values; free functions are thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "grpcpp/security/auth_context.h"

namespace dsv2 {

enum class Role {
  kController,
  kRouter,
  kAttention,
  kExpert,
  // A person or tool allowed to operate the cluster (Drain, inspect the map).
  kOperator,
};

// "controller", "router", "attention", "expert", "operator".
const char* RoleName(Role role);
std::optional<Role> RoleFromName(std::string_view name);

// The SPIFFE trust domain of cluster certificates.
inline constexpr char kTrustDomain[] = "dsv2";

struct Identity {
  Role role = Role::kOperator;
  std::string id;  // The worker id (or the operator's name).

  // spiffe://dsv2/<role>/<id>
  std::string SpiffeId() const;
  bool operator==(const Identity&) const = default;
};

// Parses spiffe://dsv2/<role>/<id>. InvalidArgument names what is wrong: the
// scheme, the trust domain, an unknown role, an id that is empty, longer than
// 128 bytes or not [A-Za-z0-9._@:-].
absl::StatusOr<Identity> ParseSpiffeId(std::string_view uri);

// Whether `id` may name a worker: 1 to 128 bytes of [A-Za-z0-9._@:-].
bool IsValidWorkerId(std::string_view id);

// The cluster identity of a call's peer: the SPIFFE id of its verified
// certificate. nullopt when the connection is not TLS, the peer sent no
// certificate, or the certificate carries no dsv2 SPIFFE id.
std::optional<Identity> PeerIdentity(const grpc::AuthContext& context);

// Whether the call's connection is TLS.
bool IsTlsConnection(const grpc::AuthContext& context);

}  // namespace dsv2
