#include "common/rpc/identity.h"

#include <array>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "grpc/grpc_security_constants.h"

namespace dsv2 {
namespace {

constexpr std::array<std::pair<Role, const char*>, 5> kRoleNames = {{
    {Role::kController, "controller"},
    {Role::kRouter, "router"},
    {Role::kAttention, "attention"},
    {Role::kExpert, "expert"},
    {Role::kOperator, "operator"},
}};
constexpr size_t kMaxIdBytes = 128;
constexpr char kScheme[] = "spiffe://";

}  // namespace

const char* RoleName(Role role) {
  for (const auto& [r, name] : kRoleNames) {
    if (r == role) return name;
  }
  return "unknown";
}

std::optional<Role> RoleFromName(std::string_view name) {
  for (const auto& [r, n] : kRoleNames) {
    if (name == n) return r;
  }
  return std::nullopt;
}

std::string Identity::SpiffeId() const {
  return absl::StrCat(kScheme, kTrustDomain, "/", RoleName(role), "/", id);
}

bool IsValidWorkerId(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '@' &&
        c != ':' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<Identity> ParseSpiffeId(std::string_view uri) {
  const std::string shown(uri.substr(0, 200));
  const std::string_view scheme = kScheme;
  if (!uri.starts_with(scheme)) {
    return absl::InvalidArgumentError(absl::StrCat("'", shown, "' is not a spiffe:// URI"));
  }
  std::string_view rest = uri.substr(scheme.size());
  const size_t domain_end = rest.find('/');
  if (domain_end == std::string_view::npos || rest.substr(0, domain_end) != kTrustDomain) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", shown, "' is not in the trust domain '", kTrustDomain, "'"));
  }
  rest.remove_prefix(domain_end + 1);
  const size_t role_end = rest.find('/');
  if (role_end == std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", shown, "' is not spiffe://", kTrustDomain, "/<role>/<id>"));
  }
  const std::optional<Role> role = RoleFromName(rest.substr(0, role_end));
  if (!role) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", shown, "' names an unknown role (controller, router, attention, expert, operator)"));
  }
  const std::string_view id = rest.substr(role_end + 1);
  if (!IsValidWorkerId(id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", shown, "' has an invalid id (1 to ", kMaxIdBytes, " bytes of [A-Za-z0-9._@:-])"));
  }
  return Identity{*role, std::string(id)};
}

bool IsTlsConnection(const grpc::AuthContext& context) {
  for (const grpc::string_ref& value :
       context.FindPropertyValues(GRPC_TRANSPORT_SECURITY_TYPE_PROPERTY_NAME)) {
    // "ssl" from SslCredentials, "tls" from TlsCredentials.
    if (value == GRPC_SSL_TRANSPORT_SECURITY_TYPE || value == "tls") return true;
  }
  return false;
}

std::optional<Identity> PeerIdentity(const grpc::AuthContext& context) {
  if (!context.IsPeerAuthenticated() || !IsTlsConnection(context)) return std::nullopt;
  // gRPC sets peer_spiffe_id only for a certificate with exactly one URI SAN
  // that is a valid SPIFFE id, which is what cluster certificates carry.
  for (const grpc::string_ref& value :
       context.FindPropertyValues(GRPC_PEER_SPIFFE_ID_PROPERTY_NAME)) {
    absl::StatusOr<Identity> identity =
        ParseSpiffeId(std::string_view(value.data(), value.size()));
    if (identity.ok()) return *std::move(identity);
  }
  return std::nullopt;
}

}  // namespace dsv2
