#include "common/rpc/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace dsv2 {

std::string OpenSslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown error";
  char buffer[256];
  ERR_error_string_n(code, buffer, sizeof(buffer));
  return buffer;
}

namespace {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": cannot be read"));
  std::ostringstream contents;
  contents << in.rdbuf();
  std::string text = contents.str();
  if (text.size() > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": larger than 1 MiB"));
  }
  return text;
}

struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

// Every certificate in a PEM file, in order.
absl::StatusOr<std::vector<X509Ptr>> ReadCertificates(const std::string& path, const char* what) {
  absl::StatusOr<std::string> pem = ReadSmallFile(path, what);
  if (!pem.ok()) return pem.status();
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())), BIO_free);
  std::vector<X509Ptr> certs;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    certs.emplace_back(cert);
  }
  ERR_clear_error();  // The end of the file reads as an error.
  if (certs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, ": no PEM certificate in it"));
  }
  return certs;
}

absl::Time AsnTime(const ASN1_TIME* time) {
  tm t{};
  if (ASN1_TIME_to_tm(time, &t) != 1) return absl::InfinitePast();
  return absl::FromTM(t, absl::UTCTimeZone());
}

std::string ShowTime(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone());
}

void ReadNames(X509* cert, CertificateInfo* info) {
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type == GEN_URI) {
      const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
      absl::StatusOr<Identity> identity = ParseSpiffeId(
          std::string_view(reinterpret_cast<const char*>(uri->data), uri->length));
      if (identity.ok() && !info->identity) info->identity = *identity;
    } else if (name->type == GEN_DNS) {
      const ASN1_IA5STRING* dns = name->d.dNSName;
      info->names.emplace_back(reinterpret_cast<const char*>(dns->data), dns->length);
    } else if (name->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* ip = name->d.iPAddress;
      char text[64] = {};
      if (ip->length == 4) {
        snprintf(text, sizeof(text), "%d.%d.%d.%d", ip->data[0], ip->data[1], ip->data[2],
                 ip->data[3]);
        info->names.emplace_back(text);
      } else {
        info->names.emplace_back("IPv6 address");
      }
    }
  }
  GENERAL_NAMES_free(names);
}

}  // namespace

absl::StatusOr<CertificateInfo> CheckTlsFiles(const TlsFiles& files) {
  CertificateInfo info;
  std::vector<X509Ptr> chain;
  if (files.has_identity()) {
    if (files.key.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("certificate ", files.cert, " is given without its private key"));
    }
    absl::StatusOr<std::vector<X509Ptr>> certs = ReadCertificates(files.cert, "certificate");
    if (!certs.ok()) return certs.status();
    chain = *std::move(certs);
    X509* leaf = chain.front().get();
    absl::StatusOr<std::string> key_pem = ReadSmallFile(files.key, "private key");
    if (!key_pem.ok()) return key_pem.status();
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(key_pem->data(), static_cast<int>(key_pem->size())), BIO_free);
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
        PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
    if (key == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("private key ", files.key, ": not a PEM private key (", OpenSslError(), ")"));
    }
    if (X509_check_private_key(leaf, key.get()) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(absl::StrCat("private key ", files.key,
                                                     " does not belong to certificate ", files.cert));
    }
    char subject[512] = {};
    X509_NAME_oneline(X509_get_subject_name(leaf), subject, sizeof(subject));
    info.subject = subject;
    info.not_after = AsnTime(X509_get0_notAfter(leaf));
    const absl::Time not_before = AsnTime(X509_get0_notBefore(leaf));
    const absl::Time now = absl::Now();
    if (now > info.not_after) {
      return absl::InvalidArgumentError(absl::StrCat("certificate ", files.cert, " expired at ",
                                                     ShowTime(info.not_after)));
    }
    if (now < not_before) {
      return absl::InvalidArgumentError(absl::StrCat(
          "certificate ", files.cert, " is not valid before ", ShowTime(not_before)));
    }
    ReadNames(leaf, &info);
  } else if (!files.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("private key ", files.key, " is given without a certificate"));
  }
  if (!files.ca.empty()) {
    absl::StatusOr<std::vector<X509Ptr>> cas = ReadCertificates(files.ca, "CA bundle");
    if (!cas.ok()) return cas.status();
    if (!chain.empty()) {
      std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store(X509_STORE_new(),
                                                                    X509_STORE_free);
      for (X509Ptr& ca : *cas) X509_STORE_add_cert(store.get(), ca.get());
      STACK_OF(X509)* intermediates = sk_X509_new_null();
      for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(intermediates, chain[i].get());
      std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> ctx(X509_STORE_CTX_new(),
                                                                          X509_STORE_CTX_free);
      X509_STORE_CTX_init(ctx.get(), store.get(), chain.front().get(), intermediates);
      const bool verified = X509_verify_cert(ctx.get()) == 1;
      const int error = X509_STORE_CTX_get_error(ctx.get());
      sk_X509_free(intermediates);
      ERR_clear_error();
      if (!verified) {
        return absl::InvalidArgumentError(absl::StrCat("certificate ", files.cert,
                                                       " does not verify against CA ", files.ca,
                                                       ": ", X509_verify_cert_error_string(error)));
      }
    }
  }
  return info;
}

std::optional<std::string> CertificatePrincipalName(X509* certificate) {
  if (certificate == nullptr) return std::nullopt;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate, NID_subject_alt_name, nullptr, nullptr));
  std::vector<std::string> uris;
  if (names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
      if (name->type != GEN_URI) continue;
      const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
      uris.emplace_back(reinterpret_cast<const char*>(uri->data), uri->length);
    }
    GENERAL_NAMES_free(names);
  }
  if (uris.size() == 1 && uris[0].rfind("spiffe://", 0) == 0) return uris[0];
  X509_NAME* subject = X509_get_subject_name(certificate);
  const int index = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
  if (index < 0) return std::nullopt;
  unsigned char* utf8 = nullptr;
  const int length =
      ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index)));
  if (length <= 0) return std::nullopt;
  std::string common_name(reinterpret_cast<const char*>(utf8), length);
  OPENSSL_free(utf8);
  if (common_name.empty()) return std::nullopt;
  return common_name;
}

std::string CertificatePem(X509* certificate) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (certificate == nullptr || PEM_write_bio_X509(bio.get(), certificate) != 1) return "";
  char* data = nullptr;
  const long length = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, length > 0 ? static_cast<size_t>(length) : 0);
}

std::shared_ptr<grpc::ServerCredentials> ServerTlsCredentials(const TlsFiles& files,
                                                              ClientCerts client_certs) {
  const unsigned interval = static_cast<unsigned>(
      std::max<int64_t>(1, absl::ToInt64Seconds(files.reload_interval)));
  const bool verify = client_certs != ClientCerts::kNone;
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, verify ? files.ca : std::string(), interval);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (verify) options.watch_root_certs();
  options.set_cert_request_type(client_certs == ClientCerts::kRequire
                                    ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                : verify ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                                         : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!files.crl_dir.empty()) options.set_crl_directory(files.crl_dir);
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> ChannelTlsCredentials(const TlsFiles& files) {
  const unsigned interval = static_cast<unsigned>(
      std::max<int64_t>(1, absl::ToInt64Seconds(files.reload_interval)));
  grpc::experimental::TlsChannelCredentialsOptions options;
  // Without a CA file the system's roots verify the server.
  if (files.has_identity()) {
    options.set_certificate_provider(
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            files.key, files.cert, files.ca, interval));
    options.watch_identity_key_cert_pairs();
    if (!files.ca.empty()) options.watch_root_certs();
  } else if (!files.ca.empty()) {
    options.set_certificate_provider(
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(files.ca, interval));
    options.watch_root_certs();
  }
  options.set_verify_server_certs(true);
  if (!files.crl_dir.empty()) options.set_crl_directory(files.crl_dir);
  return grpc::experimental::TlsCredentials(options);
}

}  // namespace dsv2
