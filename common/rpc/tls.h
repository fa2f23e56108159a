// TLS for every gRPC plane: server and channel credentials from PEM files,
// reloaded when the files change (certificate rotation), with revocation
// lists, and a start-up check that turns a bad file into one clear line
// instead of failed handshakes later.
//
//   TlsFiles files{.cert = "expert-1.pem", .key = "expert-1.key", .ca = "ca.pem"};
//   ASSIGN_OR_RETURN(CertificateInfo info, CheckTlsFiles(files));   // at start-up
//   builder.AddListeningPort(addr, ServerTlsCredentials(files, ClientCerts::kVerifyIfSent));
//   auto channel = grpc::CreateCustomChannel(addr, ChannelTlsCredentials(files), args);
//
// Files are re-read every `reload_interval` by gRPC's file watcher: replace
// them (atomically, e.g. rename) to rotate certificates or the CA without a
// restart; connections made after the change use the new ones. A CRL
// directory (`crl_dir`, hashed names as `openssl rehash` makes them) revokes
// certificates; it is read when connections are made.
//
// Thread safety: free functions; the credentials they return are thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc/identity.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

struct x509_st;  // OpenSSL's X509.

namespace dsv2 {

struct TlsFiles {
  std::string cert;     // This process's certificate chain (PEM); empty: none.
  std::string key;      // Its private key (PEM).
  std::string ca;       // CA bundle that peers' certificates must chain to.
  std::string crl_dir;  // Revocation lists; empty: none.
  absl::Duration reload_interval = absl::Seconds(10);

  bool has_identity() const { return !cert.empty(); }
};

// The thread's last OpenSSL error as text (and clears it), for messages.
std::string OpenSslError();

// What a certificate says, for logs and checks.
struct CertificateInfo {
  std::string subject;
  std::optional<Identity> identity;  // Its dsv2 SPIFFE id, if it has one.
  std::vector<std::string> names;    // DNS and IP subject alternative names.
  absl::Time not_after;
};

// Reads `files.cert` and `files.key` (if set) and `files.ca` (if set) and
// checks: PEM that parses, the key matches the certificate, the certificate
// is valid now and chains to the CA. InvalidArgument names the file and the
// problem (e.g. "expert-1.pem: certificate expired at 2026-01-01 00:00:00").
absl::StatusOr<CertificateInfo> CheckTlsFiles(const TlsFiles& files);

enum class ClientCerts {
  kNone,          // Do not ask clients for a certificate.
  kVerifyIfSent,  // Ask; verify one that is sent against files.ca; allow none.
  kRequire,       // A client without a valid certificate fails the handshake.
};

// TLS server credentials (needs files.cert and files.key; files.ca unless
// kNone).
std::shared_ptr<grpc::ServerCredentials> ServerTlsCredentials(const TlsFiles& files,
                                                              ClientCerts client_certs);

// The principal name of a verified client certificate, as gRPC names the
// peer of a TLS call (AccessPolicy): its SPIFFE id when its one URI subject
// alternative name is a spiffe:// URI, else its subject's common name;
// nullopt when it has neither. For front ends that terminate TLS
// themselves (the HTTP API).
std::optional<std::string> CertificatePrincipalName(x509_st* certificate);
// `certificate` as PEM.
std::string CertificatePem(x509_st* certificate);

// TLS channel credentials: the server must chain to files.ca and match the
// target's host name; files.cert/key, if set, are presented as this
// process's identity.
std::shared_ptr<grpc::ChannelCredentials> ChannelTlsCredentials(const TlsFiles& files);

}  // namespace dsv2
