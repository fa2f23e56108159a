#include "common/rpc/revocations.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/base/logging.h"

namespace dsv2 {
namespace {

std::string NameDer(const X509_NAME* name) {
  unsigned char* der = nullptr;
  const int length = i2d_X509_NAME(name, &der);
  if (length <= 0) return "";
  std::string out(reinterpret_cast<char*>(der), length);
  OPENSSL_free(der);
  return out;
}

std::string SerialHex(const ASN1_INTEGER* serial) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(serial, nullptr);
  if (bn == nullptr) return "";
  char* hex = BN_bn2hex(bn);
  std::string out = hex != nullptr ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

}  // namespace

Revocations::Revocations(std::string crl_dir, absl::Duration check_interval)
    : dir_(std::move(crl_dir)), check_interval_(check_interval) {
  MutexLock lock(&mutex_);
  MaybeReload();
}

void Revocations::MaybeReload() {
  const absl::Time now = absl::Now();
  if (now < next_check_) return;
  next_check_ = now + check_interval_;
  // Regular files only (the hashed names are links to them), each once.
  std::set<std::string> files;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    std::error_code ignored;
    const std::filesystem::path target = std::filesystem::canonical(entry.path(), ignored);
    if (!ignored && std::filesystem::is_regular_file(target, ignored)) files.insert(target);
  }
  std::string stamp;
  for (const std::string& file : files) {
    struct stat st {};
    if (stat(file.c_str(), &st) == 0) {
      absl::StrAppend(&stamp, file, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec, ";");
    }
  }
  if (stamp == stamp_) return;
  std::set<Entry> revoked;
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    const std::string pem = text.str();
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
    while (X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
      const std::string issuer = NameDer(X509_CRL_get_issuer(crl));
      STACK_OF(X509_REVOKED)* entries = X509_CRL_get_REVOKED(crl);
      for (int i = 0; i < sk_X509_REVOKED_num(entries); ++i) {
        revoked.emplace(issuer,
                        SerialHex(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(entries, i))));
      }
      X509_CRL_free(crl);
    }
    ERR_clear_error();
  }
  if (revoked.size() != revoked_.size()) {
    DSV2_LOG(INFO) << "revocation lists in " << dir_ << ": " << revoked.size()
                   << " revoked certificate(s)";
  }
  revoked_ = std::move(revoked);
  stamp_ = std::move(stamp);
}

bool Revocations::IsRevoked(absl::string_view pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), X509_free);
  ERR_clear_error();
  if (cert == nullptr) return true;
  Entry entry{NameDer(X509_get_issuer_name(cert.get())),
              SerialHex(X509_get0_serialNumber(cert.get()))};
  MutexLock lock(&mutex_);
  MaybeReload();
  return revoked_.contains(entry);
}

size_t Revocations::size() {
  MutexLock lock(&mutex_);
  MaybeReload();
  return revoked_.size();
}

}  // namespace dsv2
