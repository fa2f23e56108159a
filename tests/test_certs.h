// Certificates for tests, made by the project's own deploy/tls/make-certs.sh
// (openssl) in a test directory: a cluster CA and one certificate per
// process, each with its spiffe://dsv2/ROLE/ID identity, for 127.0.0.1 and
// localhost.
//
//   TestCerts certs(dir);
//   ASSERT_TRUE(certs.Make("router", "router-1"));
//   TlsFiles files = certs.Files("router-1");   // cert, key, CA
#pragma once

#include <cstdlib>
#include <string>

#include "common/rpc/tls.h"
#include "gtest/gtest.h"

namespace dsv2::testutil {

class TestCerts {
 public:
  // Makes the CA in `dir` (tests run from the repository root).
  explicit TestCerts(std::string dir) : dir_(std::move(dir)) {
    ca_ok_ = Run("ca");
  }

  // Issues ID.pem/ID.key for ROLE; `env` prefixes the command (e.g.
  // "ENDDATE=20200101000000Z").
  ::testing::AssertionResult Make(const std::string& role, const std::string& id,
                                  const std::string& env = "",
                                  const std::string& san = "DNS:localhost,IP:127.0.0.1") {
    if (!ca_ok_) return ::testing::AssertionFailure() << "the test CA could not be made";
    if (!Run("cert " + role + " " + id + " " + san, env)) {
      return ::testing::AssertionFailure() << "make-certs.sh cert " << role << " " << id;
    }
    return ::testing::AssertionSuccess();
  }
  ::testing::AssertionResult Revoke(const std::string& id) {
    if (!Run("revoke " + id)) return ::testing::AssertionFailure() << "revoke " << id;
    return ::testing::AssertionSuccess();
  }

  TlsFiles Files(const std::string& id) const {
    return {.cert = Cert(id), .key = Key(id), .ca = ca(), .reload_interval = absl::Seconds(1)};
  }
  std::string Cert(const std::string& id) const { return dir_ + "/" + id + ".pem"; }
  std::string Key(const std::string& id) const { return dir_ + "/" + id + ".key"; }
  std::string ca() const { return dir_ + "/ca.pem"; }
  std::string crl_dir() const { return dir_ + "/crl"; }
  const std::string& dir() const { return dir_; }

  // Flags that give a process the identity `id` (made with Make).
  std::vector<std::string> Flags(const std::string& id) const {
    return {"--tls_cert=" + Cert(id), "--tls_key=" + Key(id), "--tls_ca=" + ca()};
  }

 private:
  bool Run(const std::string& args, const std::string& env = "") const {
    const std::string command =
        env + " deploy/tls/make-certs.sh '" + dir_ + "' " + args + " >/dev/null";
    return std::system(command.c_str()) == 0;
  }

  std::string dir_;
  bool ca_ok_ = false;
};

}  // namespace dsv2::testutil
