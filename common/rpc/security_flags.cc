#include "common/rpc/security_flags.h"

#include <filesystem>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

ABSL_FLAG(std::string, tls_cert, "",
          "This process's certificate (PEM), from the cluster CA, with a "
          "spiffe://dsv2/<role>/<id> identity (deploy/tls/make-certs.sh makes one).");
ABSL_FLAG(std::string, tls_key, "", "The private key of --tls_cert (PEM).");
ABSL_FLAG(std::string, tls_ca, "", "The cluster CA (PEM): peers must present certificates of it.");
ABSL_FLAG(std::string, tls_crl_dir, "",
          "Directory of certificate revocation lists (hashed names, `openssl rehash`).");
ABSL_FLAG(bool, insecure, false,
          "Run without TLS: anyone who reaches a port can call it. Cluster processes refuse to "
          "start in plaintext unless this is set.");
ABSL_FLAG(std::string, api_tls_cert, "",
          "Certificate of the public API (PEM); default --tls_cert.");
ABSL_FLAG(std::string, api_tls_key, "", "The private key of --api_tls_cert.");
ABSL_FLAG(std::string, api_client_ca, "",
          "Ask API clients for a certificate of this CA (mTLS); it authenticates them.");
ABSL_FLAG(std::string, api_tokens_file, "",
          "Bearer tokens of the public API, `NAME TOKEN` per line; reread when it changes.");
ABSL_FLAG(bool, api_insecure, false,
          "Serve the public API in plaintext (e.g. behind a TLS-terminating proxy).");

namespace dsv2 {
namespace {

absl::Status FlagError(const std::string& flags, const absl::Status& status) {
  return absl::InvalidArgumentError(absl::StrCat(flags, ": ", status.message()));
}

}  // namespace

bool IsLoopbackAddress(const std::string& host_port) {
  std::string host = host_port.substr(0, host_port.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || host.starts_with("127.");
}

absl::StatusOr<RpcSecurity> RpcSecurityFromFlags(const SecurityNeeds& needs) {
  RpcSecurity security;
  security.needs_role_ = needs.role.has_value();
  const TlsFiles own{.cert = absl::GetFlag(FLAGS_tls_cert),
                     .key = absl::GetFlag(FLAGS_tls_key),
                     .ca = absl::GetFlag(FLAGS_tls_ca),
                     .crl_dir = absl::GetFlag(FLAGS_tls_crl_dir)};
  const bool insecure = absl::GetFlag(FLAGS_insecure);
  const bool any_tls = !own.cert.empty() || !own.key.empty() || !own.ca.empty();
  if (insecure && any_tls) {
    return absl::InvalidArgumentError("--insecure contradicts --tls_cert/--tls_key/--tls_ca");
  }

  if (needs.role) {
    if (!insecure) {
      if (own.cert.empty() || own.key.empty() || own.ca.empty()) {
        return absl::InvalidArgumentError(
            "the cluster plane needs --tls_cert, --tls_key and --tls_ca "
            "(deploy/tls/make-certs.sh makes them), or --insecure to run it in plaintext");
      }
      absl::StatusOr<CertificateInfo> info = CheckTlsFiles(own);
      if (!info.ok()) return FlagError("--tls_cert/--tls_key/--tls_ca", info.status());
      if (!info->identity) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--tls_cert ", own.cert, " has no spiffe://dsv2/<role>/<id> identity (URI SAN)"));
      }
      if (info->identity->role != *needs.role) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls_cert ", own.cert, " names the role ",
                         RoleName(info->identity->role), " (", info->identity->SpiffeId(),
                         "); this process's role is ", RoleName(*needs.role)));
      }
      security.cluster_tls_ = true;
      security.cluster_ = own;
      security.identity_ = info->identity;
    }
  }

  if (!own.crl_dir.empty()) {
    if (!std::filesystem::is_directory(own.crl_dir)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls_crl_dir ", own.crl_dir, " is not a directory"));
    }
    security.revocations_ = std::make_shared<Revocations>(own.crl_dir);
  }
  security.public_api_ = needs.public_api;
  if (needs.public_api) {
    TlsFiles api{.cert = absl::GetFlag(FLAGS_api_tls_cert),
                 .key = absl::GetFlag(FLAGS_api_tls_key),
                 .ca = absl::GetFlag(FLAGS_api_client_ca)};
    // Revocations apply to client certificates, so only when there are any.
    if (!api.ca.empty()) api.crl_dir = own.crl_dir;
    if (api.cert.empty() != api.key.empty()) {
      return absl::InvalidArgumentError("--api_tls_cert and --api_tls_key go together");
    }
    if (api.cert.empty()) {
      api.cert = own.cert;
      api.key = own.key;
    }
    const bool api_insecure = absl::GetFlag(FLAGS_api_insecure) || insecure;
    security.api_plaintext_anywhere_ = api_insecure;
    if (!api.cert.empty() && !absl::GetFlag(FLAGS_api_insecure)) {
      TlsFiles check = api;
      absl::StatusOr<CertificateInfo> info = CheckTlsFiles(check);
      if (!info.ok()) return FlagError("the public API's certificate", info.status());
      security.api_tls_ = true;
    } else if (!api_insecure && !IsLoopbackAddress(needs.api_listen)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "serving the API in plaintext on ", needs.api_listen,
          ", which is not a loopback address: give a certificate (--tls_cert/--tls_key or "
          "--api_tls_cert/--api_tls_key) or --api_insecure"));
    }
    if (!api.ca.empty()) {
      if (!security.api_tls_) {
        return absl::InvalidArgumentError("--api_client_ca needs the API served with TLS");
      }
      TlsFiles ca_only{.ca = api.ca};
      if (absl::StatusOr<CertificateInfo> s = CheckTlsFiles(ca_only); !s.ok()) {
        return FlagError("--api_client_ca", s.status());
      }
    }
    security.api_ = api;
    if (const std::string path = absl::GetFlag(FLAGS_api_tokens_file); !path.empty()) {
      absl::StatusOr<std::unique_ptr<ApiTokens>> tokens = ApiTokens::Load(path);
      if (!tokens.ok()) return FlagError("--api_tokens_file", tokens.status());
      security.tokens_ = std::shared_ptr<ApiTokens>(*std::move(tokens));
    }
  }
  return security;
}

std::shared_ptr<grpc::ServerCredentials> RpcSecurity::ClusterServerCredentials() const {
  if (!cluster_tls_) return grpc::InsecureServerCredentials();
  // Certificates are verified when sent and required per method
  // (AccessPolicy::Cluster), so health checks need none and a caller without
  // one gets UNAUTHENTICATED rather than a failed handshake.
  return ServerTlsCredentials(cluster_, ClientCerts::kVerifyIfSent);
}

std::shared_ptr<grpc::ChannelCredentials> RpcSecurity::ClusterChannelCredentials() const {
  if (!cluster_tls_) return grpc::InsecureChannelCredentials();
  return ChannelTlsCredentials(cluster_);
}

AccessPolicy RpcSecurity::ClusterPolicy() const {
  return cluster_tls_ ? AccessPolicy::Cluster(revocations_) : AccessPolicy::Open();
}

std::shared_ptr<grpc::ServerCredentials> RpcSecurity::ApiServerCredentials() const {
  if (!api_tls_) return grpc::InsecureServerCredentials();
  return ServerTlsCredentials(api_, api_.ca.empty() ? ClientCerts::kNone
                                                     : ClientCerts::kVerifyIfSent);
}

std::optional<TlsFiles> RpcSecurity::ApiTlsFiles() const {
  if (!api_tls_) return std::nullopt;
  return api_;
}

std::optional<TlsFiles> RpcSecurity::MetricsTlsFiles() const {
  if (cluster_tls_) return cluster_;
  return ApiTlsFiles();
}

AccessPolicy RpcSecurity::ApiPolicy() const {
  return AccessPolicy::Public(tokens_, !api_.ca.empty(), revocations_);
}

std::string RpcSecurity::Describe() const {
  std::vector<std::string> parts;
  if (!needs_role_) {
    parts.push_back("no cluster plane");
  } else if (identity_) {
    parts.push_back(absl::StrCat("cluster mTLS as ", identity_->SpiffeId()));
  } else {
    parts.push_back("cluster plane in PLAINTEXT (--insecure)");
  }
  if (!public_api_) return parts.front();
  if (!needs_role_) parts.clear();
  parts.push_back(absl::StrCat(
      "API ", api_tls_ ? "TLS" : "plaintext",
      api_.ca.empty() ? "" : ", client certificates", tokens_ ? ", bearer tokens" : "",
      !tokens_ && api_.ca.empty() ? ", no client authentication" : ""));
  return absl::StrJoin(parts, "; ");
}

}  // namespace dsv2
