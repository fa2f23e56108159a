#include "common/rpc/access.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpc/grpc_security_constants.h"

namespace dsv2 {
namespace {

std::string RoleList(std::initializer_list<Role> roles) {
  return absl::StrJoin(roles, " or ",
                       [](std::string* out, Role r) { absl::StrAppend(out, RoleName(r)); });
}

// The verified client certificate's name for a principal: its SPIFFE id,
// else its subject common name.
std::optional<std::string> CertificatePrincipal(const grpc::AuthContext& context) {
  if (!context.IsPeerAuthenticated() || !IsTlsConnection(context)) return std::nullopt;
  for (const char* property : {GRPC_PEER_SPIFFE_ID_PROPERTY_NAME, GRPC_X509_CN_PROPERTY_NAME}) {
    for (const grpc::string_ref& value : context.FindPropertyValues(property)) {
      if (!value.empty()) return std::string(value.data(), value.size());
    }
  }
  return std::nullopt;
}

}  // namespace

AccessPolicy AccessPolicy::Open() { return AccessPolicy(Kind::kOpen, nullptr, false, nullptr); }
AccessPolicy AccessPolicy::Cluster(std::shared_ptr<Revocations> revocations) {
  return AccessPolicy(Kind::kCluster, nullptr, true, std::move(revocations));
}
AccessPolicy AccessPolicy::Public(std::shared_ptr<ApiTokens> tokens, bool client_certs,
                                  std::shared_ptr<Revocations> revocations) {
  return AccessPolicy(Kind::kPublic, std::move(tokens), client_certs, std::move(revocations));
}

bool AccessPolicy::Revoked(const grpc::AuthContext& auth) const {
  if (revocations_ == nullptr) return false;
  for (const grpc::string_ref& pem : auth.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME)) {
    return RevokedPem(std::string_view(pem.data(), pem.size()));
  }
  return false;
}

bool AccessPolicy::RevokedPem(std::string_view pem) const {
  return revocations_ != nullptr && revocations_->IsRevoked(absl::string_view(pem.data(), pem.size()));
}

std::optional<std::string_view> ParseBearer(std::string_view authorization) {
  const absl::string_view value(authorization.data(), authorization.size());
  if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
    return std::nullopt;
  }
  const absl::string_view token = absl::StripAsciiWhitespace(value.substr(7));
  return std::string_view(token.data(), token.size());
}

std::optional<std::string_view> BearerToken(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) return std::nullopt;
  return ParseBearer(std::string_view(it->second.data(), it->second.size()));
}

bool IsInProcessCall(const grpc::ServerContextBase& context) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth != nullptr &&
      !auth->FindPropertyValues(GRPC_TRANSPORT_SECURITY_TYPE_PROPERTY_NAME).empty()) {
    return false;
  }
  const std::string peer = context.peer();
  return !absl::StartsWith(peer, "ipv4:") && !absl::StartsWith(peer, "ipv6:") &&
         !absl::StartsWith(peer, "unix:") && !absl::StartsWith(peer, "unix-abstract:") &&
         !absl::StartsWith(peer, "vsock:");
}

absl::StatusOr<Caller> AccessPolicy::Authenticate(const grpc::ServerContextBase& context) const {
  if (kind_ != Kind::kCluster && IsInProcessCall(context)) {
    // A front end of this process that authenticated its own client.
    const auto& metadata = context.client_metadata();
    const auto it = metadata.find(kPrincipalMetadata);
    if (it == metadata.end()) return Caller{};
    return Caller{std::string(it->second.data(), it->second.size()), std::nullopt};
  }
  if (kind_ == Kind::kOpen) return Caller{};
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (kind_ == Kind::kCluster) {
    std::optional<Identity> identity = auth ? PeerIdentity(*auth) : std::nullopt;
    if (!identity) {
      return absl::UnauthenticatedError(
          "this is a cluster port: present a certificate of the cluster CA with a "
          "spiffe://dsv2/<role>/<id> identity");
    }
    if (Revoked(*auth)) {
      return absl::UnauthenticatedError(
          absl::StrCat("the certificate of ", identity->SpiffeId(), " is revoked"));
    }
    return Caller{identity->SpiffeId(), identity};
  }
  // Public: a client certificate, then a bearer token.
  PresentedCredentials presented{.bearer_token = BearerToken(context)};
  if (client_certs_ && auth) {
    if (std::optional<std::string> name = CertificatePrincipal(*auth)) {
      presented.certificate_name = *name;
      for (const grpc::string_ref& pem :
           auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME)) {
        presented.certificate_pem.assign(pem.data(), pem.size());
        break;
      }
    }
  }
  return Authenticate(presented);
}

absl::StatusOr<Caller> AccessPolicy::Authenticate(const PresentedCredentials& presented) const {
  if (kind_ == Kind::kOpen) return Caller{};
  if (kind_ == Kind::kCluster) {
    return absl::UnauthenticatedError("this is a cluster port: it serves gRPC with mTLS only");
  }
  if (client_certs_ && presented.certificate_name) {
    const std::string& name = *presented.certificate_name;
    if (RevokedPem(presented.certificate_pem)) {
      return absl::UnauthenticatedError(absl::StrCat("the certificate of ", name, " is revoked"));
    }
    std::optional<Identity> identity;
    if (absl::StatusOr<Identity> parsed = ParseSpiffeId(name); parsed.ok()) identity = *parsed;
    return Caller{absl::StrCat("cert:", name), identity};
  }
  if (tokens_ != nullptr) {
    const std::optional<std::string_view> token = presented.bearer_token;
    if (!token) {
      return absl::UnauthenticatedError(
          client_certs_ ? "send a client certificate or `authorization: Bearer <token>`"
                        : "send `authorization: Bearer <token>`");
    }
    std::optional<std::string> name = tokens_->Lookup(*token);
    if (!name) return absl::UnauthenticatedError("the bearer token is not valid");
    return Caller{absl::StrCat("token:", *name), std::nullopt};
  }
  if (client_certs_) return absl::UnauthenticatedError("send a client certificate");
  return Caller{};  // Neither tokens nor certificates: anonymous.
}

absl::StatusOr<Caller> AccessPolicy::Authorize(const grpc::ServerContextBase& context,
                                               std::initializer_list<Role> roles,
                                               std::string_view method) const {
  absl::StatusOr<Caller> caller = Authenticate(context);
  if (!caller.ok() || kind_ != Kind::kCluster) return caller;
  for (Role role : roles) {
    if (caller->identity->role == role) return caller;
  }
  return absl::PermissionDeniedError(absl::StrCat(std::string(method), " is for ", RoleList(roles),
                                                  " identities; the caller is ",
                                                  caller->principal));
}

}  // namespace dsv2
