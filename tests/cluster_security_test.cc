// Attacks on a disaggregated cluster of real processes on loopback (every
// plane with TLS, as deploy/local/cluster.sh runs it), written as a hostile
// caller would try them: the control plane, worker RPCs and the data plane
// are reached without credentials, with the wrong ones and with garbage.
// Every attack must get a precise refusal, and the cluster must go on
// serving the same outputs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/rpc/tls.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/cluster_process.h"
#include "tests/generation_test_util.h"

namespace dsv2 {
namespace {

using ::dsv2::testutil::Cluster;
using ::dsv2::testutil::Credentials;
using ::dsv2::testutil::FindWorker;
using ::dsv2::testutil::Greedy;
using ::dsv2::testutil::ReadStream;
using ::dsv2::testutil::StreamResult;
using ::dsv2::testutil::WaitFor;
using namespace std::chrono_literals;

constexpr char kTinyV2[] = "tests/data/tiny-v2";

const testutil::ClusterBinaries kBinaries = {
    .controller = DSV2_CONTROLLER,
    .expert = DSV2_EXPERT,
    .attention = DSV2_ATTENTION,
    .router = DSV2_ROUTER,
};

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + 10s);
  return context;
}

// A controller call as `credentials`.
class ControllerAs {
 public:
  ControllerAs(const std::string& address, Credentials credentials)
      : stub_(internal::Controller::NewStub(grpc::CreateChannel(address, credentials))) {}

  grpc::Status Register(const std::string& id, internal::Role role, const std::string& address) {
    internal::RegisterRequest request;
    request.mutable_worker()->set_worker_id(id);
    request.mutable_worker()->set_role(role);
    request.mutable_worker()->set_grpc_address(address);
    request.mutable_worker()->set_data_address("ucx://203.0.113.9:4000");
    request.mutable_worker()->set_peer_id(424242);
    internal::RegisterResponse response;
    return stub_->Register(Context().get(), request, &response);
  }
  grpc::Status Drain(const std::string& id) {
    internal::DrainRequest request;
    request.set_worker_id(id);
    internal::DrainResponse response;
    return stub_->Drain(Context().get(), request, &response);
  }
  grpc::Status Heartbeat(const std::string& id) {
    internal::HeartbeatRequest request;
    request.set_worker_id(id);
    internal::HeartbeatResponse response;
    return stub_->Heartbeat(Context().get(), request, &response);
  }
  grpc::Status GetMap(internal::ClusterMap* map) {
    return stub_->GetClusterMap(Context().get(), {}, map);
  }
  grpc::Status ReportSuspect(const std::string& id) {
    internal::ReportSuspectRequest request;
    request.set_worker_id(id);
    request.set_reason("a test says so");
    internal::ReportSuspectResponse response;
    return stub_->ReportSuspect(Context().get(), request, &response);
  }

 private:
  std::unique_ptr<internal::Controller::Stub> stub_;
};

void ExpectRefused(const grpc::Status& status, grpc::StatusCode code, const std::string& text,
                   const std::string& what) {
  EXPECT_EQ(status.error_code(), code) << what << ": " << status.error_message();
  EXPECT_NE(status.error_message().find(text), std::string::npos)
      << what << ": " << status.error_message();
}

TEST(ClusterSecurityTest, NobodyWithoutTheRightCertificateCanChangeTheCluster) {
  Cluster cluster({.binaries = kBinaries, .model = kTinyV2, .attention = 1, .experts = 2});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  const testutil::TestCerts& certs = *cluster.certs();
  const std::string controller = cluster.controller_address();
  const Credentials no_certificate = ChannelTlsCredentials(TlsFiles{.ca = certs.ca()});

  // Plaintext: no connection at all.
  ControllerAs plaintext(controller, grpc::InsecureChannelCredentials());
  EXPECT_EQ(plaintext.Drain("expert-1").error_code(), grpc::StatusCode::UNAVAILABLE);
  // TLS without a certificate: every control RPC is UNAUTHENTICATED.
  ControllerAs anonymous(controller, no_certificate);
  ExpectRefused(anonymous.Drain("expert-1"), grpc::StatusCode::UNAUTHENTICATED,
                "present a certificate", "anonymous Drain");
  ExpectRefused(anonymous.Register("expert-2", internal::ROLE_EXPERT, "127.0.0.1:1"),
                grpc::StatusCode::UNAUTHENTICATED, "present a certificate", "anonymous Register");
  ExpectRefused(anonymous.Heartbeat("expert-1"), grpc::StatusCode::UNAUTHENTICATED,
                "present a certificate", "anonymous Heartbeat");
  internal::ClusterMap map;
  ExpectRefused(anonymous.GetMap(&map), grpc::StatusCode::UNAUTHENTICATED, "present a certificate",
                "anonymous GetClusterMap");

  // A certificate of another CA: no connection.
  testutil::TestCerts rogue(cluster.dir() + "/rogue");
  ASSERT_TRUE(rogue.Make("operator", "mallory"));
  TlsFiles rogue_files = rogue.Files("mallory");
  rogue_files.ca = certs.ca();
  ControllerAs stranger(controller, ChannelTlsCredentials(rogue_files));
  EXPECT_EQ(stranger.Drain("expert-1").error_code(), grpc::StatusCode::UNAVAILABLE);

  // A cluster identity speaking for another: expert-1 may not drain,
  // register or heartbeat as expert-2, nor register as an attention worker;
  // a router may not drain anybody.
  ControllerAs expert1(controller, ChannelTlsCredentials(certs.Files("expert-1")));
  ExpectRefused(expert1.Drain("expert-2"), grpc::StatusCode::PERMISSION_DENIED,
                "needs that worker's certificate; the caller is spiffe://dsv2/expert/expert-1",
                "expert-1 drains expert-2");
  ExpectRefused(expert1.Register("expert-2", internal::ROLE_EXPERT, "127.0.0.1:1"),
                grpc::StatusCode::PERMISSION_DENIED, "needs that worker's certificate",
                "expert-1 registers as expert-2");
  ExpectRefused(expert1.Register("expert-1", internal::ROLE_ATTENTION, "127.0.0.1:1"),
                grpc::StatusCode::PERMISSION_DENIED, "for attention 'expert-1'",
                "expert-1 registers as an attention worker");
  ExpectRefused(expert1.Heartbeat("expert-2"), grpc::StatusCode::PERMISSION_DENIED,
                "needs that worker's certificate", "expert-1 heartbeats for expert-2");
  ControllerAs router(controller, cluster.RouterCredentials());
  ExpectRefused(router.Drain("expert-1"), grpc::StatusCode::PERMISSION_DENIED,
                "Drain is for attention or expert or operator identities", "a router drains");
  // Only attention workers may report an expert worker hung (which takes
  // it out of the routes).
  ExpectRefused(anonymous.ReportSuspect("expert-1"), grpc::StatusCode::UNAUTHENTICATED,
                "present a certificate", "anonymous ReportSuspect");
  ExpectRefused(expert1.ReportSuspect("expert-2"), grpc::StatusCode::PERMISSION_DENIED,
                "ReportSuspect is for attention identities", "an expert reports another");
  ExpectRefused(router.ReportSuspect("expert-1"), grpc::StatusCode::PERMISSION_DENIED,
                "ReportSuspect is for attention identities", "a router reports an expert");

  // A fake expert-3 (a certificate the CA never issued cannot exist; one
  // for a new id is a new worker, not a takeover): nothing above changed
  // the map, and the cluster serves as before.
  ASSERT_TRUE(cluster.GetMap(&map).ok());
  EXPECT_TRUE(map.complete());
  EXPECT_EQ(map.workers_size(), 3) << map.DebugString();
  for (const internal::Worker& w : map.workers()) {
    EXPECT_EQ(w.state(), internal::WORKER_STATE_ALIVE) << w.info().worker_id();
    EXPECT_NE(w.info().data_address(), "ucx://203.0.113.9:4000");
  }
  auto stub = v1::Generation::NewStub(cluster.RouterChannel());
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, Greedy("after-attacks", {0, 4, 5}, 6));
  const StreamResult served = ReadStream(*reader);
  EXPECT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_EQ(served.tokens.size(), 6u);

  // The operator may drain (the legitimate path).
  ControllerAs operator_(controller, cluster.OperatorCredentials());
  EXPECT_TRUE(operator_.Drain("expert-2").ok());
}

TEST(ClusterSecurityTest, AttentionWorkersServeRoutersOnly) {
  Cluster cluster({.binaries = kBinaries, .model = kTinyV2, .attention = 1, .experts = 2});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  const testutil::TestCerts& certs = *cluster.certs();
  const std::string attention = cluster.attention(0).address();
  struct Caller {
    std::string name;
    Credentials credentials;
    grpc::StatusCode code;
    std::string message;
  } callers[] = {
      {"plaintext", grpc::InsecureChannelCredentials(), grpc::StatusCode::UNAVAILABLE, ""},
      {"no certificate", ChannelTlsCredentials(TlsFiles{.ca = certs.ca()}),
       grpc::StatusCode::UNAUTHENTICATED, "present a certificate"},
      {"an expert worker", ChannelTlsCredentials(certs.Files("expert-1")),
       grpc::StatusCode::PERMISSION_DENIED,
       "is for router identities; the caller is spiffe://dsv2/expert/expert-1"},
      {"an operator", cluster.OperatorCredentials(), grpc::StatusCode::PERMISSION_DENIED,
       "is for router identities"},
  };
  for (const Caller& c : callers) {
    auto channel = grpc::CreateChannel(attention, c.credentials);
    internal::Load load;
    auto load_stub = internal::AttentionWorker::NewStub(channel);
    ExpectRefused(load_stub->GetLoad(Context().get(), {}, &load), c.code, c.message,
                  c.name + " GetLoad");
    auto stub = v1::Generation::NewStub(channel);
    auto context = Context();
    auto reader = stub->Generate(context.get(), Greedy("direct", {0, 4}, 4));
    const StreamResult r = ReadStream(*reader);
    ExpectRefused(r.status, c.code, c.message, c.name + " Generate");
    EXPECT_TRUE(r.tokens.empty());
    v1::AbortRequest abort;
    abort.set_request_id("anything");
    v1::AbortResponse aborted;
    ExpectRefused(stub->Abort(Context().get(), abort, &aborted), c.code, c.message,
                  c.name + " Abort");
  }
  // A router identity is served.
  internal::Load load;
  EXPECT_TRUE(cluster.Load(cluster.attention(0), &load).ok());
  EXPECT_TRUE(load.serving());
}

// The TCP sockets process `pid` listens on, as "IP:PORT" (IPv6: "[v6]:PORT").
std::set<std::string> ListeningSockets(pid_t pid) {
  std::set<std::string> inodes;
  std::error_code ec;
  for (const auto& fd :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code ignored;
    const std::string target = std::filesystem::read_symlink(fd.path(), ignored).string();
    if (target.starts_with("socket:[")) inodes.insert(target.substr(8, target.size() - 9));
  }
  std::set<std::string> listening;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string sl, local, remote, state, queues, tr, retr, uid, timeout, inode;
      fields >> sl >> local >> remote >> state >> queues >> tr >> retr >> uid >> timeout >> inode;
      if (state != "0A" || !inodes.contains(inode)) continue;
      const std::string hex_ip = local.substr(0, local.find(':'));
      const int port = std::stoi(local.substr(local.find(':') + 1), nullptr, 16);
      if (hex_ip.size() == 8) {
        const uint32_t ip = static_cast<uint32_t>(std::stoul(hex_ip, nullptr, 16));
        listening.insert(absl::StrCat(ip & 0xff, ".", (ip >> 8) & 0xff, ".", (ip >> 16) & 0xff,
                                      ".", ip >> 24, ":", port));
      } else if (hex_ip == "0000000000000000FFFF00000100007F") {  // ::ffff:127.0.0.1
        listening.insert(absl::StrCat("127.0.0.1:", port));
      } else {
        listening.insert(absl::StrCat("[", hex_ip, "]:", port));
      }
    }
  }
  return listening;
}

// Connects to `host_port`, sends `bytes`, and closes.
void SendGarbage(const std::string& host_port, const std::string& bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port =
      htons(static_cast<uint16_t>(std::stoi(host_port.substr(host_port.find(':') + 1))));
  inet_pton(AF_INET, host_port.substr(0, host_port.find(':')).c_str(), &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    [[maybe_unused]] ssize_t n = write(fd, bytes.data(), bytes.size());
  }
  close(fd);
}

std::vector<int32_t> GreedyTokens(Cluster& cluster, const std::string& id) {
  auto stub = v1::Generation::NewStub(cluster.RouterChannel());
  auto context = Context();
  auto reader = stub->Generate(context.get(), Greedy(id, {0, 7, 8, 9}, 12));
  const StreamResult r = ReadStream(*reader);
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  return r.tokens;
}

TEST(ClusterSecurityTest, EveryPortListensOnlyWhereAnnouncedAndTakesGarbage) {
  Cluster cluster({.binaries = kBinaries, .model = kTinyV2, .attention = 1, .experts = 2});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  const std::vector<int32_t> before = GreedyTokens(cluster, "before");
  internal::ClusterMap map;
  ASSERT_TRUE(cluster.GetMap(&map).ok());

  // What each process announces: its gRPC port, and for workers the
  // host:port of its data-plane address (ucx://HOST:PORT/...).
  std::vector<std::string> every_port;
  for (testutil::ChildProcess* p : cluster.All()) {
    std::set<std::string> announced = {p->address()};
    if (p == &cluster.router()) {
      announced.insert("127.0.0.1:" + std::to_string(cluster.RouterHttpPort()));
    }
    if (const internal::Worker* w = FindWorker(map, p->name())) {
      const std::string data = w->info().data_address();
      ASSERT_TRUE(data.starts_with("ucx://")) << data;
      announced.insert(data.substr(6, data.find('/', 6) - 6));
    }
    const std::set<std::string> listening = ListeningSockets(p->pid());
    EXPECT_EQ(listening, announced) << p->name();
    every_port.insert(every_port.end(), listening.begin(), listening.end());
  }
  EXPECT_EQ(every_port.size(), 1u + 2u + 2u * 1u + 2u * 2u)
      << "controller, router (gRPC, HTTP), workers";

  // The 16 bytes that aborted UCX 1.13's connection manager, an HTTP/2
  // preface with garbage after it, a TLS ClientHello cut short, and random
  // bytes, to every port.
  std::vector<std::string> attacks = {
      std::string("\xff\xff\xff\xff\xff\xff\xff\xff\x01\x01\x01\x01\x01\x01\x01\x01", 16),
      std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
      std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),
      std::string(100000, '\xa5')};
  std::mt19937 rng(3);
  for (int i = 0; i < 20; ++i) {
    std::string bytes(1 + rng() % 5000, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    attacks.push_back(bytes);
  }
  for (const std::string& port : every_port) {
    for (const std::string& bytes : attacks) SendGarbage(port, bytes);
  }

  // Nobody died, nothing changed, the same tokens come out.
  for (testutil::ChildProcess* p : cluster.All()) EXPECT_TRUE(p->running()) << p->Describe();
  ASSERT_TRUE(cluster.WaitReady());
  EXPECT_EQ(GreedyTokens(cluster, "after"), before);
}

}  // namespace
}  // namespace dsv2
