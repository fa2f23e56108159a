// The controller over real gRPC on a loopback port chosen by the OS.
#include "services/controller/controller_service.h"

#include <thread>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

class ControllerTest : public ::testing::Test {
 protected:
  void Start(std::chrono::milliseconds lease) {
    auto config = LoadModelConfig("tests/data/tiny-v2/config.json");  // 16 experts, 4 groups.
    ASSERT_TRUE(config.ok());
    service_ = std::make_unique<ControllerService>(*config, 1, lease);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    stub_ = internal::Controller::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (service_) service_->Shutdown();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  grpc::Status Register(const std::string& id, internal::Role role) {
    grpc::ClientContext context;
    internal::RegisterRequest request;
    request.mutable_worker()->set_worker_id(id);
    request.mutable_worker()->set_role(role);
    request.mutable_worker()->set_grpc_address(id + ":1");
    request.mutable_worker()->set_data_address("ucx://" + id);
    internal::RegisterResponse response;
    return stub_->Register(&context, request, &response);
  }
  grpc::Status Heartbeat(const std::string& id) {
    grpc::ClientContext context;
    internal::HeartbeatRequest request;
    request.set_worker_id(id);
    internal::HeartbeatResponse response;
    return stub_->Heartbeat(&context, request, &response);
  }

  std::unique_ptr<ControllerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<internal::Controller::Stub> stub_;
};

TEST_F(ControllerTest, WatchersSeeRegistrationLapseAndReRegistration) {
  Start(300ms);
  grpc::ClientContext watch_context;
  watch_context.set_deadline(std::chrono::system_clock::now() + 30s);
  auto watch = stub_->WatchClusterMap(&watch_context, internal::WatchRequest());
  ASSERT_TRUE(Register("e1", internal::ROLE_EXPERT).ok());
  ASSERT_TRUE(Register("e2", internal::ROLE_EXPERT).ok());
  ASSERT_TRUE(Register("a1", internal::ROLE_ATTENTION).ok());
  internal::ClusterMap map;
  // Read maps until all three are in one (intermediate versions may merge).
  do {
    ASSERT_TRUE(watch->Read(&map));
  } while (map.workers_size() < 3);
  EXPECT_TRUE(map.complete());
  ASSERT_EQ(map.placement_size(), 4);  // Four routing groups.
  EXPECT_EQ(map.placement(1).expert_begin(), 4u);
  EXPECT_EQ(map.placement(1).expert_end(), 8u);
  EXPECT_EQ(map.placement(1).worker_ids(0), "e2");
  const uint64_t registered = map.version();

  // Only e1 keeps renewing, at a worker's cadence: the others' leases lapse.
  std::jthread renewer([&](std::stop_token stop) {
    while (!stop.stop_requested()) {
      EXPECT_TRUE(Heartbeat("e1").ok());
      std::this_thread::sleep_for(50ms);
    }
  });
  bool e2_dead = false;
  while (!e2_dead) {
    ASSERT_TRUE(watch->Read(&map));
    for (const auto& w : map.workers()) {
      e2_dead |= w.info().worker_id() == "e2" && w.state() == internal::WORKER_STATE_DEAD;
    }
  }
  renewer.request_stop();
  EXPECT_TRUE(map.complete());
  EXPECT_GT(map.version(), registered);
  for (const auto& unit : map.placement()) EXPECT_EQ(unit.worker_ids(0), "e1");
  // A dead worker's heartbeat is refused: it registers again and returns.
  EXPECT_EQ(Heartbeat("e2").error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(Register("e2", internal::ROLE_EXPERT).ok());
  grpc::ClientContext get_context;
  internal::ClusterMap now;
  ASSERT_TRUE(stub_->GetClusterMap(&get_context, {}, &now).ok());
  EXPECT_EQ(now.placement(1).worker_ids(0), "e2");
  watch_context.TryCancel();
}

TEST_F(ControllerTest, DrainAndInvalidRegistrations) {
  Start(10s);
  ASSERT_TRUE(Register("e1", internal::ROLE_EXPERT).ok());
  ASSERT_TRUE(Register("e2", internal::ROLE_EXPERT).ok());
  {
    grpc::ClientContext context;
    internal::DrainRequest request;
    request.set_worker_id("e1");
    internal::DrainResponse response;
    ASSERT_TRUE(stub_->Drain(&context, request, &response).ok());
  }
  grpc::ClientContext context;
  internal::ClusterMap map;
  ASSERT_TRUE(stub_->GetClusterMap(&context, {}, &map).ok());
  for (const auto& unit : map.placement()) EXPECT_EQ(unit.worker_ids(0), "e2");
  EXPECT_EQ(Register("", internal::ROLE_EXPERT).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Register("x", internal::ROLE_UNSPECIFIED).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext drain_context;
  internal::DrainRequest unknown;
  unknown.set_worker_id("nobody");
  internal::DrainResponse response;
  EXPECT_EQ(stub_->Drain(&drain_context, unknown, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace dsv2
