// ControlClient against a real controller over gRPC on loopback ports chosen
// by the OS, including controller restarts on the same port.
#include "common/cluster/control_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include "absl/base/thread_annotations.h"
#include "common/base/mutex.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "services/controller/controller_service.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

constexpr auto kLease = 300ms;
// Short, so a client finds a restarted controller well within its warm-up.
constexpr absl::Duration kRetry = absl::Milliseconds(20);
constexpr absl::Duration kWait = absl::Seconds(10);  // Only reached when failing.

ModelConfig TinyConfig() {
  absl::StatusOr<ModelConfig> config = LoadModelConfig("tests/data/tiny-v2/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.value_or(ModelConfig{});  // 16 experts in 4 groups.
}

// A controller serving on 127.0.0.1:`port` (0: the OS chooses).
class Controller {
 public:
  static std::unique_ptr<Controller> Start(int port, std::chrono::milliseconds warmup) {
    auto controller = std::unique_ptr<Controller>(new Controller());
    controller->service_ = std::make_unique<ControllerService>(
        TinyConfig(), ControllerOptions{.lease = kLease, .warmup = warmup});
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(),
                             &controller->port_);
    builder.RegisterService(controller->service_.get());
    controller->server_ = builder.BuildAndStart();
    EXPECT_NE(controller->server_, nullptr);
    EXPECT_NE(controller->port_, 0);
    return controller;
  }
  ~Controller() {
    service_->Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + 1s);
    server_.reset();  // Before the service it calls.
  }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  uint64_t epoch() const { return service_->epoch(); }

 private:
  Controller() = default;
  std::unique_ptr<ControllerService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

WorkerInfo Expert(const std::string& id, uint32_t peer) {
  return {id, WorkerRole::kExpert, id + ":1", "ucx://" + id, 0, peer};
}

// Is `id` in the map with `state`?
bool Has(const ClusterMap& map, const std::string& id, WorkerState state = WorkerState::kAlive) {
  const ClusterMap::Worker* worker = map.Find(id);
  return worker != nullptr && worker->state == state;
}

// Every map a client's callback was given, in order.
class Recorder {
 public:
  ControlClient::MapCallback callback() {
    return [this](const ClusterMap& map) {
      MutexLock lock(&mutex_);
      maps_.push_back(map);
    };
  }
  std::vector<ClusterMap> maps() const ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    return maps_;
  }

 private:
  mutable Mutex mutex_;
  std::vector<ClusterMap> maps_ ABSL_GUARDED_BY(mutex_);
};

std::unique_ptr<ControlClient> StartWorker(const std::string& controller, const std::string& id,
                                           uint32_t peer, Recorder* recorder = nullptr) {
  return ControlClient::Start(
      {.controller = controller, .self = Expert(id, peer), .retry_interval = kRetry}, TinyConfig(),
      recorder ? recorder->callback() : nullptr);
}

TEST(ControlClientTest, RegistersRenewsAndReceivesTheMap) {
  auto controller = Controller::Start(0, 0ms);
  Recorder recorder;
  auto client = StartWorker(controller->address(), "e1", 11, &recorder);
  ASSERT_TRUE(
      client->WaitForMap([](const ClusterMap& m) { return m.complete && Has(m, "e1"); }, kWait));
  const ClusterMap first = *client->map();
  EXPECT_EQ(first.epoch, controller->epoch());
  EXPECT_EQ(first.expert_workers, (std::vector<std::string>{"e1"}));
  EXPECT_EQ(first.Find("e1")->info.peer_id, 11u);
  EXPECT_EQ(first.placement.ExpertsOf(0).size(), 16u);
  // Past two leases the worker is still alive: it renews on its own. Seven
  // heartbeats, a third of a lease apart, span more than two leases, and a
  // lapsed lease would have failed one and changed the map.
  ASSERT_TRUE(client->WaitForStats(
      [](const ControlClient::Stats& s) { return s.heartbeats >= 7 || s.heartbeat_failures > 0; },
      kWait));
  const ClusterMap later = *client->map();
  EXPECT_TRUE(Has(later, "e1"));
  EXPECT_EQ(later.version, first.version);
  const ControlClient::Stats stats = client->stats();
  EXPECT_EQ(stats.registrations, 1);
  EXPECT_EQ(stats.heartbeat_failures, 0);
  // Each newer map reached the callback once, in order.
  const std::vector<ClusterMap> maps = recorder.maps();
  ASSERT_FALSE(maps.empty());
  EXPECT_EQ(static_cast<int64_t>(maps.size()), stats.maps_received);
  EXPECT_EQ(maps.back().version, first.version);
  for (size_t i = 1; i < maps.size(); ++i) EXPECT_GT(maps[i].version, maps[i - 1].version);
}

TEST(ControlClientTest, RidesOutAControllerRestartOnTheSamePort) {
  auto controller = Controller::Start(0, kLease);
  const int port = controller->port();
  const std::string address = controller->address();
  const uint64_t old_epoch = controller->epoch();
  Recorder recorder;
  auto worker = StartWorker(address, "e1", 11, &recorder);
  auto other = StartWorker(address, "e2", 12);
  ASSERT_TRUE(worker->WaitForMap(
      [](const ClusterMap& m) { return m.complete && Has(m, "e1") && Has(m, "e2"); }, kWait));

  // The controller goes away: the last map stays, and serving on it goes on,
  // however often heartbeats fail and the watch stream breaks.
  controller.reset();
  ASSERT_TRUE(worker->WaitForStats(
      [](const ControlClient::Stats& s) {
        return s.heartbeat_failures >= 3 && s.watch_failures >= 3;
      },
      kWait));
  ASSERT_TRUE(worker->map().has_value());
  EXPECT_EQ(worker->map()->epoch, old_epoch);
  EXPECT_TRUE(worker->map()->complete);
  EXPECT_GT(worker->stats().heartbeat_failures, 0);

  // A new controller on the same port: the clients register again by
  // themselves, and the new epoch's first map already lists both.
  controller = Controller::Start(port, kLease);
  ASSERT_EQ(controller->port(), port);
  const uint64_t new_epoch = controller->epoch();
  ASSERT_NE(new_epoch, old_epoch);
  ASSERT_TRUE(worker->WaitForMap(
      [&](const ClusterMap& m) {
        return m.epoch == new_epoch && m.complete && Has(m, "e1") && Has(m, "e2");
      },
      kWait));
  EXPECT_EQ(worker->stats().registrations, 2);
  EXPECT_EQ(other->stats().registrations, 2);
  // Warm-up: no half-empty map of the new epoch was ever published.
  for (const ClusterMap& map : recorder.maps()) {
    if (map.epoch != new_epoch) continue;
    EXPECT_TRUE(Has(map, "e1") && Has(map, "e2")) << "version " << map.version;
  }
}

TEST(ControlClientTest, WatchOnlyClientFollowsTheCluster) {
  auto controller = Controller::Start(0, 0ms);
  auto router = ControlClient::Start(
      {.controller = controller->address(), .retry_interval = kRetry}, TinyConfig(), nullptr);
  auto worker = StartWorker(controller->address(), "e1", 11);
  ASSERT_TRUE(router->WaitForMap([](const ClusterMap& m) { return Has(m, "e1"); }, kWait));
  EXPECT_EQ(router->stats().registrations, 0);
  EXPECT_EQ(router->Drain().code(), absl::StatusCode::kFailedPrecondition);
  // The worker stops renewing: the router sees it die, and the map
  // incomplete (no replicas).
  worker->Stop();
  ASSERT_TRUE(router->WaitForMap(
      [](const ClusterMap& m) { return Has(m, "e1", WorkerState::kDead) && !m.complete; }, kWait));
  // A replacement registers: it takes the dead worker's slot.
  auto replacement = StartWorker(controller->address(), "e9", 19);
  ASSERT_TRUE(router->WaitForMap([](const ClusterMap& m) { return m.complete; }, kWait));
  EXPECT_EQ(router->map()->expert_workers, (std::vector<std::string>{"e9"}));
  EXPECT_EQ(router->map()->Find("e1"), nullptr);
}

TEST(ControlClientTest, DrainIsReappliedAfterAControllerRestart) {
  auto controller = Controller::Start(0, 0ms);
  const int port = controller->port();
  auto worker = StartWorker(controller->address(), "e1", 11);
  auto other = StartWorker(controller->address(), "e2", 12);
  ASSERT_TRUE(
      worker->WaitForMap([](const ClusterMap& m) { return m.complete && Has(m, "e1"); }, kWait));
  ASSERT_TRUE(worker->Drain().ok());
  ASSERT_TRUE(worker->WaitForMap(
      [](const ClusterMap& m) {
        return Has(m, "e1", WorkerState::kDraining) &&
               m.expert_workers == std::vector<std::string>{"e2"};
      },
      kWait));
  controller.reset();
  controller = Controller::Start(port, kLease);
  const uint64_t epoch = controller->epoch();
  ASSERT_TRUE(worker->WaitForMap(
      [&](const ClusterMap& m) {
        return m.epoch == epoch && Has(m, "e1", WorkerState::kDraining) && Has(m, "e2");
      },
      kWait));
}

TEST(ControlClientTest, SkipsMapsThatDoNotFitTheModel) {
  auto controller = Controller::Start(0, 0ms);
  auto worker = StartWorker(controller->address(), "e1", 11);
  ASSERT_TRUE(worker->WaitForMap([](const ClusterMap& m) { return m.complete; }, kWait));
  // Started once the map places experts (the empty first map would fit any
  // model), a client of another model gets only maps it must refuse.
  ModelConfig other_model = TinyConfig();
  other_model.n_routed_experts = 32;  // The controller places 16.
  auto mismatched = ControlClient::Start(
      {.controller = controller->address(), .retry_interval = kRetry}, other_model, nullptr);
  EXPECT_FALSE(
      mismatched->WaitForMap([](const ClusterMap&) { return true; }, absl::Milliseconds(300)));
  EXPECT_EQ(mismatched->stats().maps_received, 0);
}

// A port nothing listens on.
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(ControlClientTest, StopIsPromptWhenTheControllerIsUnreachable) {
  // A listener that never accepts: TCP connects, but no call is ever
  // answered, so Register and the watch hang until cancelled.
  const int silent = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(silent, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(silent, 16), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(silent, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string silent_address = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));

  // A closed port refuses Register, which is then retried after a pause; the
  // silent listener keeps Register and the watch in flight.
  const std::string closed_address = "127.0.0.1:" + std::to_string(ClosedPort());
  for (const std::string& address : {closed_address, silent_address}) {
    SCOPED_TRACE(address);
    auto worker = ControlClient::Start({.controller = address, .self = Expert("e1", 11)},
                                       TinyConfig(), nullptr);
    const bool closed = address == closed_address;
    ASSERT_TRUE(worker->WaitForStats(
        [closed](const ControlClient::Stats& s) {
          return closed ? s.register_failures > 0 : s.calls_in_flight == 2;
        },
        kWait));
    EXPECT_EQ(worker->stats().registrations, 0);
    EXPECT_FALSE(worker->map().has_value());
    const auto before = std::chrono::steady_clock::now();
    worker->Stop();
    EXPECT_LT(std::chrono::steady_clock::now() - before, 1s);
    worker->Stop();  // Idempotent.
    // Waiting on a stopped client returns at once.
    EXPECT_FALSE(worker->WaitForMap([](const ClusterMap&) { return true; }, absl::Seconds(5)));
    EXPECT_FALSE(worker->WaitForStats(
        [](const ControlClient::Stats& s) { return s.registrations > 0; }, absl::Seconds(5)));
    EXPECT_LT(std::chrono::steady_clock::now() - before, 1s);
  }
  close(silent);
}

}  // namespace
}  // namespace dsv2
