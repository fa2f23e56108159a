// Identities, tokens and access policies, over real gRPC servers with TLS on
// loopback (ports chosen by the OS) and certificates made by
// deploy/tls/make-certs.sh.
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "common/base/test_util.h"
#include "common/rpc/access.h"
#include "common/rpc/api_tokens.h"
#include "common/rpc/grpc_options.h"
#include "common/rpc/identity.h"
#include "common/rpc/tls.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/test_certs.h"

namespace dsv2 {
namespace {

using testutil::TestCerts;

// ----------------------------------------------------------------------------
// Identities

TEST(IdentityTest, ParsesSpiffeIds) {
  absl::StatusOr<Identity> id = ParseSpiffeId("spiffe://dsv2/expert/expert-2");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->role, Role::kExpert);
  EXPECT_EQ(id->id, "expert-2");
  EXPECT_EQ(id->SpiffeId(), "spiffe://dsv2/expert/expert-2");
  EXPECT_EQ(ParseSpiffeId("spiffe://dsv2/operator/ops@site").value().role, Role::kOperator);
}

TEST(IdentityTest, RejectsWhatIsNotAClusterIdentity) {
  for (const char* bad :
       {"", "https://dsv2/expert/e1", "spiffe://other/expert/e1", "spiffe://dsv2/expert",
        "spiffe://dsv2/wizard/e1", "spiffe://dsv2/expert/", "spiffe://dsv2/expert/a/b",
        "spiffe://dsv2/expert/has space", "spiffe://dsv2/router/\xff"}) {
    EXPECT_EQ(ParseSpiffeId(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(ParseSpiffeId("spiffe://dsv2/expert/" + std::string(129, 'a')).ok());
}

// ----------------------------------------------------------------------------
// Tokens

TEST(ApiTokensTest, ParsesNamesAndTokens) {
  auto tokens = ApiTokens::Parse(
      "# comment\n\nalice 0123456789abcdef0123\n  bob\tBBBBBBBBBBBBBBBBBBBB  \n"
      "alice second-token-of-alice\n",
      "tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->size(), 3u);
  EXPECT_EQ(tokens->at(Sha256("BBBBBBBBBBBBBBBBBBBB")), "bob");
}

TEST(ApiTokensTest, NamesTheLineThatIsWrong) {
  struct Case {
    const char* text;
    const char* message;
  } cases[] = {
      {"alice\n", "tokens:1: expected `NAME TOKEN`"},
      {"# ok\nalice short\n", "tokens:2: the token must be 16 to 512"},
      {"al/ice 0123456789abcdef0123\n", "tokens:1: the name must be"},
      {"a 0123456789abcdef0123\nb 0123456789abcdef0123\n", "tokens:2: this token is listed twice"},
      {"a 0123456789abcdef0123 extra\n", "tokens:1: expected"},
  };
  for (const Case& c : cases) {
    auto tokens = ApiTokens::Parse(c.text, "tokens");
    ASSERT_FALSE(tokens.ok()) << c.text;
    EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(tokens.status().message(), c.message)) << tokens.status();
  }
}

TEST(ApiTokensTest, ReloadsWhenTheFileChangesAndKeepsTheOldOnABadChange) {
  const std::string dir = testutil::NewTestDir("tokens");
  const std::string path = dir + "/tokens";
  std::ofstream(path) << "alice aaaaaaaaaaaaaaaaaaaaaaaa\n";
  auto tokens = ApiTokens::Load(path, absl::ZeroDuration());
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ((*tokens)->Lookup("aaaaaaaaaaaaaaaaaaaaaaaa"), "alice");
  EXPECT_EQ((*tokens)->Lookup("bbbbbbbbbbbbbbbbbbbbbbbb"), std::nullopt);

  // Rotation: a new file replaces the old one (rename, as operators do).
  std::ofstream(path + ".new") << "bob bbbbbbbbbbbbbbbbbbbbbbbb\n";
  std::filesystem::rename(path + ".new", path);
  EXPECT_EQ((*tokens)->Lookup("bbbbbbbbbbbbbbbbbbbbbbbb"), "bob");
  EXPECT_EQ((*tokens)->Lookup("aaaaaaaaaaaaaaaaaaaaaaaa"), std::nullopt) << "revoked";
  EXPECT_EQ((*tokens)->reloads(), 1);

  // A broken file does not lock everyone out.
  std::ofstream(path + ".new") << "this is not a token file at all\n";
  std::filesystem::rename(path + ".new", path);
  EXPECT_EQ((*tokens)->Lookup("bbbbbbbbbbbbbbbbbbbbbbbb"), "bob");
  EXPECT_EQ((*tokens)->reloads(), 1);
}

TEST(ApiTokensTest, RefusesFilesThatAreNotRegular) {
  const std::string dir = testutil::NewTestDir("tokens_fifo");
  ASSERT_EQ(mkfifo((dir + "/fifo").c_str(), 0600), 0);
  auto tokens = ApiTokens::Load(dir + "/fifo");
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(tokens.status().message(), "not a file")) << tokens.status();
  EXPECT_FALSE(ApiTokens::Load(dir + "/missing").ok());
}

// ----------------------------------------------------------------------------
// Certificates

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = std::make_unique<TestCerts>(testutil::NewTestDir("certs"));
    ASSERT_TRUE(certs_->Make("router", "router-1"));
    ASSERT_TRUE(certs_->Make("expert", "expert-1"));
    ASSERT_TRUE(certs_->Make("attention", "attention-1"));
  }
  std::unique_ptr<TestCerts> certs_;
};

TEST_F(TlsTest, ChecksCertificatesAtStartUp) {
  absl::StatusOr<CertificateInfo> info = CheckTlsFiles(certs_->Files("router-1"));
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_TRUE(info->identity.has_value());
  EXPECT_EQ(info->identity->SpiffeId(), "spiffe://dsv2/router/router-1");
  EXPECT_EQ(info->names, (std::vector<std::string>{"localhost", "127.0.0.1"}));

  TlsFiles mismatched = certs_->Files("router-1");
  mismatched.key = certs_->Key("expert-1");
  EXPECT_TRUE(absl::StrContains(CheckTlsFiles(mismatched).status().message(),
                                "does not belong to certificate"));

  ASSERT_TRUE(certs_->Make("router", "old", "ENDDATE=20200101000000Z"));
  EXPECT_TRUE(
      absl::StrContains(CheckTlsFiles(certs_->Files("old")).status().message(), "expired at 2020"));

  TestCerts other(testutil::NewTestDir("other_ca"));
  ASSERT_TRUE(other.Make("router", "stranger"));
  TlsFiles foreign = other.Files("stranger");
  foreign.ca = certs_->ca();
  EXPECT_TRUE(
      absl::StrContains(CheckTlsFiles(foreign).status().message(), "does not verify against CA"));

  TlsFiles garbage = certs_->Files("router-1");
  garbage.cert = certs_->ca() + ".missing";
  EXPECT_EQ(CheckTlsFiles(garbage).status().code(), absl::StatusCode::kInvalidArgument);
  std::ofstream(certs_->dir() + "/junk.pem") << "-----BEGIN CERTIFICATE-----\nAAAA\n";
  garbage.cert = certs_->dir() + "/junk.pem";
  EXPECT_TRUE(
      absl::StrContains(CheckTlsFiles(garbage).status().message(), "no PEM certificate"));
}

// GetModelInfo answers with the caller's principal in model_path; the
// method requires the router role on a cluster plane.
class WhoAmI final : public v1::Generation::Service {
 public:
  explicit WhoAmI(AccessPolicy policy) : policy_(std::move(policy)) {}
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* response) override {
    absl::StatusOr<Caller> caller = policy_.Authorize(*context, {Role::kRouter}, "GetModelInfo");
    if (!caller.ok()) {
      return grpc::Status(static_cast<grpc::StatusCode>(caller.status().code()),
                          std::string(caller.status().message()));
    }
    response->set_model_path(caller->principal);
    return grpc::Status::OK;
  }

 private:
  AccessPolicy policy_;
};

class Server {
 public:
  Server(AccessPolicy policy, std::shared_ptr<grpc::ServerCredentials> credentials)
      : service_(std::move(policy)) {
    grpc::ServerBuilder builder;
    ConfigureServer(&builder);
    builder.AddListeningPort("127.0.0.1:0", std::move(credentials), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~Server() { server_->Shutdown(); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::shared_ptr<grpc::Channel> InProcessChannel() {
    return server_->InProcessChannel(grpc::ChannelArguments());
  }

 private:
  WhoAmI service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// Calls GetModelInfo on `channel`, naming `forwarded` in kPrincipalMetadata
// if set; returns the principal or the status.
grpc::Status CallOn(const std::shared_ptr<grpc::Channel>& channel, std::string* principal,
                    const std::string& token, const std::string& forwarded) {
  auto stub = v1::Generation::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  if (!forwarded.empty()) context.AddMetadata(kPrincipalMetadata, forwarded);
  v1::ModelInfo info;
  grpc::Status status = stub->GetModelInfo(&context, {}, &info);
  if (principal != nullptr) *principal = info.model_path();
  return status;
}

// Calls GetModelInfo; returns the principal or the status.
grpc::Status Call(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds,
                  std::string* principal = nullptr, const std::string& token = "") {
  auto stub = v1::Generation::NewStub(NewClusterChannel(address, std::move(creds)));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  v1::ModelInfo info;
  grpc::Status status = stub->GetModelInfo(&context, {}, &info);
  if (principal != nullptr) *principal = info.model_path();
  return status;
}

TEST_F(TlsTest, ClusterPlaneAuthenticatesEveryCallAndChecksItsRole) {
  TlsFiles server_files = certs_->Files("attention-1");
  Server server(AccessPolicy::Cluster(),
                ServerTlsCredentials(server_files, ClientCerts::kVerifyIfSent));

  std::string principal;
  grpc::Status ok = Call(server.address(), ChannelTlsCredentials(certs_->Files("router-1")),
                         &principal);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(principal, "spiffe://dsv2/router/router-1");

  // A certificate of the cluster, but not a router's.
  grpc::Status denied = Call(server.address(), ChannelTlsCredentials(certs_->Files("expert-1")));
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(denied.error_message(),
            "GetModelInfo is for router identities; the caller is spiffe://dsv2/expert/expert-1");

  // TLS without a client certificate.
  TlsFiles anonymous{.ca = certs_->ca()};
  grpc::Status unauthenticated = Call(server.address(), ChannelTlsCredentials(anonymous));
  EXPECT_EQ(unauthenticated.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(absl::StrContains(unauthenticated.error_message(), "present a certificate"));

  // Plaintext to a TLS port, and a certificate of another CA: no connection.
  EXPECT_EQ(Call(server.address(), grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  TestCerts other(testutil::NewTestDir("rogue_ca"));
  ASSERT_TRUE(other.Make("router", "router-1"));
  TlsFiles rogue = other.Files("router-1");
  rogue.ca = certs_->ca();  // It trusts the server, the server does not trust it.
  EXPECT_EQ(Call(server.address(), ChannelTlsCredentials(rogue)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, ClientsCheckTheServerNameAndCa) {
  // A server whose certificate names another host.
  ASSERT_TRUE(certs_->Make("attention", "elsewhere", "", "DNS:attention-7.example"));
  Server server(AccessPolicy::Cluster(),
                ServerTlsCredentials(certs_->Files("elsewhere"), ClientCerts::kVerifyIfSent));
  EXPECT_EQ(Call(server.address(), ChannelTlsCredentials(certs_->Files("router-1"))).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, RevokedCertificatesAreRefusedFromTheirNextCall) {
  ASSERT_TRUE(certs_->Make("router", "router-2"));
  ASSERT_TRUE(certs_->Make("router", "router-3"));
  ASSERT_TRUE(certs_->Revoke("router-3"));  // Before the server starts: refused at the handshake.
  TlsFiles server_files = certs_->Files("attention-1");
  server_files.crl_dir = certs_->crl_dir();
  auto revocations = std::make_shared<Revocations>(certs_->crl_dir(), absl::ZeroDuration());
  Server server(AccessPolicy::Cluster(revocations),
                ServerTlsCredentials(server_files, ClientCerts::kVerifyIfSent));
  EXPECT_EQ(Call(server.address(), ChannelTlsCredentials(certs_->Files("router-3"))).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  // Revoked while connected: the next call on the same channel is refused.
  auto stub = v1::Generation::NewStub(
      NewClusterChannel(server.address(), ChannelTlsCredentials(certs_->Files("router-2"))));
  auto call = [&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ModelInfo info;
    return stub->GetModelInfo(&context, {}, &info);
  };
  ASSERT_TRUE(call().ok());
  ASSERT_TRUE(certs_->Revoke("router-2"));
  const grpc::Status revoked = call();
  EXPECT_EQ(revoked.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(revoked.error_message(),
            "the certificate of spiffe://dsv2/router/router-2 is revoked");
  EXPECT_EQ(revocations->size(), 2u);
  EXPECT_TRUE(Call(server.address(), ChannelTlsCredentials(certs_->Files("router-1"))).ok());
}

TEST_F(TlsTest, PublicApiTakesTokensOrClientCertificates) {
  const std::string tokens_path = certs_->dir() + "/tokens";
  std::ofstream(tokens_path) << "alice aaaaaaaaaaaaaaaaaaaaaaaa\n";
  auto tokens = ApiTokens::Load(tokens_path);
  ASSERT_TRUE(tokens.ok());
  TlsFiles server_files = certs_->Files("router-1");  // Its CA also signs client certs.
  Server server(AccessPolicy::Public(std::shared_ptr<ApiTokens>(*std::move(tokens)), true),
                ServerTlsCredentials(server_files, ClientCerts::kVerifyIfSent));
  TlsFiles client{.ca = certs_->ca()};

  std::string principal;
  ASSERT_TRUE(
      Call(server.address(), ChannelTlsCredentials(client), &principal, "aaaaaaaaaaaaaaaaaaaaaaaa")
          .ok());
  EXPECT_EQ(principal, "token:alice");
  grpc::Status missing = Call(server.address(), ChannelTlsCredentials(client));
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(missing.error_message(),
            "send a client certificate or `authorization: Bearer <token>`");
  grpc::Status wrong =
      Call(server.address(), ChannelTlsCredentials(client), nullptr, "bbbbbbbbbbbbbbbbbbbbbbbb");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong.error_message(), "the bearer token is not valid");

  // A client certificate is an identity of its own (no role check on the
  // public API).
  ASSERT_TRUE(Call(server.address(), ChannelTlsCredentials(certs_->Files("expert-1")), &principal)
                  .ok());
  EXPECT_EQ(principal, "cert:spiffe://dsv2/expert/expert-1");
}

// The HTTP API authenticates its clients itself and calls the gRPC server
// in-process with the principal in metadata: that is trusted from the
// in-process channel only, never from a network caller, with or without TLS.
TEST_F(TlsTest, OnlyInProcessCallersNameTheirPrincipal) {
  const std::string tokens_path = certs_->dir() + "/tokens";
  std::ofstream(tokens_path) << "alice aaaaaaaaaaaaaaaaaaaaaaaa\n";
  auto tokens = ApiTokens::Load(tokens_path);
  ASSERT_TRUE(tokens.ok());
  const auto policy = AccessPolicy::Public(std::shared_ptr<ApiTokens>(*std::move(tokens)), true);
  for (const bool tls : {false, true}) {
    SCOPED_TRACE(tls ? "TLS" : "plaintext");
    Server server(policy, tls ? ServerTlsCredentials(certs_->Files("router-1"),
                                                     ClientCerts::kVerifyIfSent)
                              : grpc::InsecureServerCredentials());
    auto network = NewClusterChannel(server.address(),
                                     tls ? ChannelTlsCredentials(TlsFiles{.ca = certs_->ca()})
                                         : grpc::InsecureChannelCredentials());
    std::string principal;
    // A network caller naming a principal is not believed.
    EXPECT_EQ(CallOn(network, &principal, "", "token:alice").error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    ASSERT_TRUE(CallOn(network, &principal, "aaaaaaaaaaaaaaaaaaaaaaaa", "token:mallory").ok());
    EXPECT_EQ(principal, "token:alice");
    // The in-process channel is this process: its principal is believed.
    ASSERT_TRUE(CallOn(server.InProcessChannel(), &principal, "", "token:bob").ok());
    EXPECT_EQ(principal, "token:bob");
    ASSERT_TRUE(CallOn(server.InProcessChannel(), &principal, "", "").ok());
    EXPECT_EQ(principal, "");
  }
  // On a cluster plane the in-process channel gets no such trust.
  Server cluster(AccessPolicy::Cluster(), grpc::InsecureServerCredentials());
  EXPECT_EQ(CallOn(cluster.InProcessChannel(), nullptr, "", "spiffe://dsv2/router/r").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

// What another protocol's front end presents is judged like a gRPC call.
TEST_F(TlsTest, PresentedCredentialsAreJudgedLikeCalls) {
  const std::string tokens_path = certs_->dir() + "/tokens";
  std::ofstream(tokens_path) << "alice aaaaaaaaaaaaaaaaaaaaaaaa\n";
  auto loaded = ApiTokens::Load(tokens_path);
  ASSERT_TRUE(loaded.ok());
  std::shared_ptr<ApiTokens> tokens(*std::move(loaded));
  const std::string token = "aaaaaaaaaaaaaaaaaaaaaaaa";

  const AccessPolicy tokens_only = AccessPolicy::Public(tokens, false);
  EXPECT_EQ(tokens_only.Authenticate(PresentedCredentials{.bearer_token = token})->principal,
            "token:alice");
  EXPECT_EQ(tokens_only.Authenticate(PresentedCredentials{}).status().message(),
            "send `authorization: Bearer <token>`");
  EXPECT_EQ(tokens_only.Authenticate(PresentedCredentials{.bearer_token = "nope-nope-nope-nope"})
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);
  // A certificate counts only where client certificates are asked for.
  const PresentedCredentials with_certificate{.certificate_name = "spiffe://dsv2/expert/expert-1"};
  EXPECT_FALSE(tokens_only.Authenticate(with_certificate).ok());
  const AccessPolicy both = AccessPolicy::Public(tokens, true);
  absl::StatusOr<Caller> caller = both.Authenticate(with_certificate);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_EQ(caller->principal, "cert:spiffe://dsv2/expert/expert-1");
  ASSERT_TRUE(caller->identity.has_value());
  EXPECT_EQ(caller->identity->role, Role::kExpert);
  EXPECT_EQ(AccessPolicy::Open().Authenticate(PresentedCredentials{})->principal, "");
  EXPECT_EQ(AccessPolicy::Cluster().Authenticate(with_certificate).status().code(),
            absl::StatusCode::kUnauthenticated);

  EXPECT_EQ(ParseBearer("Bearer abc "), std::optional<std::string_view>("abc"));
  EXPECT_EQ(ParseBearer("bEaReR abc"), std::optional<std::string_view>("abc"));
  EXPECT_EQ(ParseBearer("Basic abc"), std::nullopt);
  EXPECT_EQ(ParseBearer("Bearer"), std::nullopt);
}

TEST_F(TlsTest, CertificatePrincipalNamesAreGrpcs) {
  const std::string path = certs_->Cert("expert-1");
  std::unique_ptr<FILE, decltype(&fclose)> file(fopen(path.c_str(), "r"), fclose);
  ASSERT_NE(file, nullptr);
  X509* certificate = PEM_read_X509(file.get(), nullptr, nullptr, nullptr);
  ASSERT_NE(certificate, nullptr);
  EXPECT_EQ(CertificatePrincipalName(certificate),
            std::optional<std::string>("spiffe://dsv2/expert/expert-1"));
  EXPECT_TRUE(absl::StartsWith(CertificatePem(certificate), "-----BEGIN CERTIFICATE-----"));
  X509_free(certificate);
  EXPECT_EQ(CertificatePrincipalName(nullptr), std::nullopt);
}

TEST(GrpcOptionsTest, AServerListensOnExactlyThePortItReports) {
  // gRPC 1.51 binds a clone of a port-0 listener to a second port unless
  // SO_REUSEPORT is off (ConfigureServer turns it off).
  grpc::ServerBuilder builder;
  ConfigureServer(&builder);
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  v1::Generation::Service service;
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  // Count this process's listening TCP sockets (their inodes in /proc/net/tcp{,6}
  // and among our fds).
  std::set<std::string> our_inodes;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(fd.path(), ec).string();
    if (target.starts_with("socket:[")) our_inodes.insert(target.substr(8, target.size() - 9));
  }
  std::set<int> ports;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string sl, local, remote, state, queues, tr, retr, uid, timeout, inode;
      fields >> sl >> local >> remote >> state >> queues >> tr >> retr >> uid >> timeout >> inode;
      if (state != "0A" || !our_inodes.contains(inode)) continue;  // 0A: LISTEN
      ports.insert(std::stoi(local.substr(local.rfind(':') + 1), nullptr, 16));
    }
  }
  EXPECT_EQ(ports, std::set<int>{port});
  server->Shutdown();
}

}  // namespace
}  // namespace dsv2
