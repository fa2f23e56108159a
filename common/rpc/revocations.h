// Certificate revocation, checked on every call: the certificate revocation
// lists of a directory (PEM, as deploy/tls/make-certs.sh revoke writes
// them), reread when the directory changes.
//
// TLS handshakes check the same directory (TlsFiles::crl_dir), but OpenSSL
// caches a CRL once read and connections outlive a revocation; AccessPolicy
// asks IsRevoked of the peer certificate of each call, so a revoked
// certificate is refused from its next call on, on connections already open
// too.
//
// Thread safety: thread-safe.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/base/mutex.h"

namespace dsv2 {

class Revocations {
 public:
  // Lists are read now and again when the directory's files change,
  // checked at most every `check_interval`.
  explicit Revocations(std::string crl_dir, absl::Duration check_interval = absl::Seconds(1));

  // Whether a CRL in the directory revokes the certificate `pem` (its issuer
  // and serial number). A certificate that does not parse counts as revoked.
  bool IsRevoked(absl::string_view pem);

  size_t size();  // Revoked serial numbers known.

 private:
  // (issuer name DER, serial number hex)
  using Entry = std::pair<std::string, std::string>;
  void MaybeReload() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::string dir_;
  const absl::Duration check_interval_;
  Mutex mutex_;
  std::set<Entry> revoked_ ABSL_GUARDED_BY(mutex_);
  std::string stamp_ ABSL_GUARDED_BY(mutex_);  // Names, sizes and mtimes of the files read.
  absl::Time next_check_ ABSL_GUARDED_BY(mutex_) = absl::InfinitePast();
};

}  // namespace dsv2
