// The controller over real gRPC on a loopback port chosen by the OS, on a
// clock the tests move by hand.
#include "services/controller/controller_service.h"

#include "absl/base/thread_annotations.h"
#include "common/base/mutex.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

// Time that moves only when the test moves it.
class ManualClock {
 public:
  ClusterState::Clock::time_point Now() const ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    return now_;
  }
  void Advance(ClusterState::Clock::duration by) ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    now_ += by;
  }

 private:
  mutable Mutex mutex_;
  ClusterState::Clock::time_point now_ ABSL_GUARDED_BY(mutex_) = ClusterState::Clock::now();
};

class ControllerTest : public ::testing::Test {
 protected:
  void Start(std::chrono::milliseconds lease, std::chrono::milliseconds warmup = 0ms,
             int64_t replicas = 1) {
    auto config = LoadModelConfig("tests/data/tiny-v2/config.json");  // 16 experts, 4 groups.
    ASSERT_TRUE(config.ok());
    service_ = std::make_unique<ControllerService>(
        *config, ControllerOptions{.replicas = replicas,
                                   .lease = lease,
                                   .warmup = warmup,
                                   .clock = [this] { return clock_.Now(); }});
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = internal::Controller::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                              grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (service_) service_->Shutdown();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  grpc::Status Register(const std::string& id, internal::Role role, uint32_t peer_id = 0) {
    grpc::ClientContext context;
    internal::RegisterRequest request;
    request.mutable_worker()->set_worker_id(id);
    request.mutable_worker()->set_role(role);
    request.mutable_worker()->set_grpc_address(id + ":1");
    request.mutable_worker()->set_data_address("ucx://" + id);
    // Distinct test ids get distinct peer ids unless one is given.
    request.mutable_worker()->set_peer_id(
        peer_id != 0 ? peer_id : static_cast<uint32_t>(std::hash<std::string>{}(id)) | 1u);
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
  grpc::Status GetMap(internal::ClusterMap* map) {
    grpc::ClientContext context;
    return stub_->GetClusterMap(&context, {}, map);
  }

  static internal::WorkerState StateOf(const internal::ClusterMap& map, const std::string& id) {
    for (const auto& w : map.workers()) {
      if (w.info().worker_id() == id) return w.state();
    }
    return internal::WORKER_STATE_UNSPECIFIED;
  }

  // Renews `ids` every third of `lease` while `time` passes (on the clock).
  void RenewFor(const std::vector<std::string>& ids, std::chrono::milliseconds lease,
                std::chrono::milliseconds time) {
    for (std::chrono::milliseconds passed{0}; passed < time; passed += lease / 3) {
      clock_.Advance(lease / 3);
      for (const std::string& id : ids) ASSERT_TRUE(Heartbeat(id).ok()) << id;
    }
  }

  ManualClock clock_;  // Outlives the service.
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
  EXPECT_EQ(map.epoch(), service_->epoch());
  EXPECT_TRUE(map.complete());
  ASSERT_EQ(map.placement_size(), 4);  // Four routing groups.
  EXPECT_EQ(map.placement(1).expert_begin(), 4u);
  EXPECT_EQ(map.placement(1).expert_end(), 8u);
  EXPECT_EQ(map.placement(1).worker_ids(0), "e2");
  const uint64_t registered = map.version();

  // Only e1 and a1 keep renewing, at a worker's cadence, for more than a
  // lease: e2's lease lapses, and the lease thread publishes its death.
  RenewFor({"e1", "a1"}, 300ms, 400ms);
  while (StateOf(map, "e2") != internal::WORKER_STATE_DEAD) ASSERT_TRUE(watch->Read(&map));
  EXPECT_GT(map.version(), registered);
  EXPECT_EQ(StateOf(map, "e1"), internal::WORKER_STATE_ALIVE);
  EXPECT_EQ(StateOf(map, "a1"), internal::WORKER_STATE_ALIVE);
  // Without replicas e2's groups have no server: the map says so, and the
  // placement does not move (e2 may come back).
  EXPECT_FALSE(map.complete());
  ASSERT_EQ(map.placement_size(), 4);
  EXPECT_EQ(map.placement(1).worker_ids(0), "e2");
  EXPECT_EQ(map.placement(0).worker_ids(0), "e1");
  // A dead worker's heartbeat is refused: it registers again and serving
  // resumes on the same placement.
  EXPECT_EQ(Heartbeat("e2").error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(Register("e2", internal::ROLE_EXPERT).ok());
  while (!map.complete()) ASSERT_TRUE(watch->Read(&map));
  EXPECT_EQ(StateOf(map, "e2"), internal::WORKER_STATE_ALIVE);
  EXPECT_EQ(map.placement(1).worker_ids(0), "e2");
  watch_context.TryCancel();
}

TEST_F(ControllerTest, ANewWorkerTakesOverADeadWorkersGroups) {
  Start(300ms);
  ASSERT_TRUE(Register("e1", internal::ROLE_EXPERT).ok());
  ASSERT_TRUE(Register("e2", internal::ROLE_EXPERT).ok());
  // e2 stops renewing; e1 keeps going for more than a lease, and the lease
  // thread marks e2 dead.
  RenewFor({"e1"}, 300ms, 400ms);
  grpc::ClientContext watch_context;
  watch_context.set_deadline(std::chrono::system_clock::now() + 30s);
  auto watch = stub_->WatchClusterMap(&watch_context, internal::WatchRequest());
  internal::ClusterMap map;
  do {
    ASSERT_TRUE(watch->Read(&map));
  } while (StateOf(map, "e2") != internal::WORKER_STATE_DEAD);
  watch_context.TryCancel();
  EXPECT_EQ(StateOf(map, "e1"), internal::WORKER_STATE_ALIVE);
  EXPECT_FALSE(map.complete());
  ASSERT_TRUE(Register("e3", internal::ROLE_EXPERT).ok());
  ASSERT_TRUE(GetMap(&map).ok());
  EXPECT_TRUE(map.complete());
  EXPECT_EQ(StateOf(map, "e2"), internal::WORKER_STATE_UNSPECIFIED);  // Gone from the map.
  EXPECT_EQ(map.placement(1).worker_ids(0), "e3");
  EXPECT_EQ(map.placement(3).worker_ids(0), "e3");
  EXPECT_EQ(map.placement(0).worker_ids(0), "e1");
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
  internal::ClusterMap map;
  ASSERT_TRUE(GetMap(&map).ok());
  EXPECT_TRUE(map.complete());
  EXPECT_EQ(StateOf(map, "e1"), internal::WORKER_STATE_DRAINING);
  for (const auto& unit : map.placement()) EXPECT_EQ(unit.worker_ids(0), "e2");
  EXPECT_EQ(Register("", internal::ROLE_EXPERT).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Register("x", internal::ROLE_UNSPECIFIED).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext context;
    internal::RegisterRequest request;
    request.mutable_worker()->set_worker_id("a1");
    request.mutable_worker()->set_role(internal::ROLE_ATTENTION);
    request.mutable_worker()->set_grpc_address("a1:1");
    internal::RegisterResponse response;
    EXPECT_EQ(stub_->Register(&context, request, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);  // No peer_id.
  }
  // e1 is draining, not dead: its peer id is still taken.
  EXPECT_EQ(Register("e3", internal::ROLE_EXPERT,
                     static_cast<uint32_t>(std::hash<std::string>{}("e1")) | 1u)
                .error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  grpc::ClientContext drain_context;
  internal::DrainRequest unknown;
  unknown.set_worker_id("nobody");
  internal::DrainResponse response;
  EXPECT_EQ(stub_->Drain(&drain_context, unknown, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ControllerTest, PublishesNothingDuringWarmUp) {
  Start(10s, 400ms);
  internal::ClusterMap map;
  const grpc::Status early = GetMap(&map);
  EXPECT_EQ(early.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(early.error_message(), "controller warming up");
  // Registration works meanwhile, so the first map has everyone.
  ASSERT_TRUE(Register("e1", internal::ROLE_EXPERT).ok());
  ASSERT_TRUE(Heartbeat("e1").ok());
  ASSERT_TRUE(Register("e2", internal::ROLE_EXPERT).ok());
  grpc::ClientContext watch_context;
  watch_context.set_deadline(std::chrono::system_clock::now() + 30s);
  auto watch = stub_->WatchClusterMap(&watch_context, internal::WatchRequest());
  // Nothing until the warm-up is over on the controller's clock, however
  // long it takes in real time; the first map comes when it is.
  clock_.Advance(399ms);
  EXPECT_EQ(GetMap(&map).error_code(), grpc::StatusCode::UNAVAILABLE);
  clock_.Advance(1ms);
  ASSERT_TRUE(watch->Read(&map));
  EXPECT_EQ(map.workers_size(), 2);
  EXPECT_TRUE(map.complete());
  EXPECT_EQ(map.version(), 2u);
  ASSERT_TRUE(GetMap(&map).ok());
  watch_context.TryCancel();
}

TEST_F(ControllerTest, WatchSendsMapsNewerThanTheEpochAndVersionHeld) {
  Start(10s);
  ASSERT_TRUE(Register("e1", internal::ROLE_EXPERT).ok());
  internal::ClusterMap current;
  ASSERT_TRUE(GetMap(&current).ok());
  ASSERT_EQ(current.version(), 1u);

  // A watcher holding another controller's map (even of a higher version)
  // gets this one at once.
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    internal::WatchRequest request;
    request.set_known_epoch(current.epoch() - 1);
    request.set_known_version(50);
    auto watch = stub_->WatchClusterMap(&context, request);
    internal::ClusterMap map;
    ASSERT_TRUE(watch->Read(&map));
    EXPECT_EQ(map.epoch(), current.epoch());
    EXPECT_EQ(map.version(), 1u);
    context.TryCancel();
  }
  // A watcher holding the current map gets only the next one.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 10s);
  internal::WatchRequest request;
  request.set_known_epoch(current.epoch());
  request.set_known_version(current.version());
  auto watch = stub_->WatchClusterMap(&context, request);
  ASSERT_TRUE(Register("e2", internal::ROLE_EXPERT).ok());
  internal::ClusterMap map;
  ASSERT_TRUE(watch->Read(&map));
  EXPECT_EQ(map.version(), 2u);
  EXPECT_EQ(map.workers_size(), 2);
  context.TryCancel();
}

}  // namespace
}  // namespace dsv2
