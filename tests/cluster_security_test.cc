// Attacks on a disaggregated cluster of real processes on loopback (every
// plane with TLS, as deploy/local/cluster.sh runs it), written as a hostile
// caller would try them: the control plane, worker RPCs and the data plane
// are reached without credentials, with the wrong ones and with garbage.
// Every attack must get a precise refusal, and the cluster must go on
// serving the same outputs.
#include <signal.h>

#include <chrono>
#include <string>
#include <vector>

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

}  // namespace
}  // namespace dsv2
