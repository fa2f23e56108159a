// The worker and router side of the control plane (dsv2.internal.Controller):
// registration and lease renewal for a worker, and the watched cluster map
// for everyone.
//
//   ControlClientOptions options{.controller = "ctl:50050", .self = info};
//   auto client = ControlClient::Start(options, config, [&](const ClusterMap& map) {
//     ApplyMap(map);  // Each newer map, in order, from the client's thread.
//   });
//   client->WaitForMap([&](const ClusterMap& m) { return m.complete; }, absl::Seconds(10));
//
// It rides out controller restarts on its own: a heartbeat answered
// NOT_FOUND (a new controller, or a lapsed lease) makes it register again,
// an unreachable controller is retried every retry_interval, and the watch
// stream reconnects and resumes from the map it holds — a new controller's
// maps carry a new epoch, so they are taken whatever their version. The last
// map is kept while the controller is away, so serving goes on.
//
// Thread safety: every method is thread-safe. on_map runs on the client's
// watch thread, one map at a time; it must not call Stop or destroy the
// client (Stop joins that thread).
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/cluster/cluster_state.h"
#include "common/model/config.h"
#include "dsv2/internal/control.grpc.pb.h"
#include "grpcpp/security/credentials.h"

namespace dsv2 {

struct ControlClientOptions {
  std::string controller;          // host:port of dsv2-controller.
  std::optional<WorkerInfo> self;  // Register and heartbeat as this worker; nullopt: watch only.
  // The cluster plane's credentials (RpcSecurity::ClusterChannelCredentials);
  // null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Wait between attempts while the controller is unreachable; the channel
  // also reconnects at most 5 intervals apart.
  absl::Duration retry_interval = absl::Milliseconds(200);
};

class ControlClient {
 public:
  using MapCallback = std::function<void(const ClusterMap&)>;

  // Starts the background threads: (with `self`) Register, retried until
  // the controller answers, then Heartbeat every lease/3 (the lease from
  // RegisterResponse), registering again when a heartbeat is answered
  // NOT_FOUND; and a WatchClusterMap stream, reconnected after errors, that
  // calls on_map (may be null) for each newer map. Maps that fail FromProto
  // against `config` are logged and skipped.
  static std::unique_ptr<ControlClient> Start(ControlClientOptions options, ModelConfig config,
                                              MapCallback on_map);
  ~ControlClient();  // Stop().
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // The last map received (kept while the controller is away); nullopt
  // before the first.
  std::optional<ClusterMap> map() const;
  // Waits until the last map satisfies `pred` (called with the client's
  // lock held: it must not call the client); false at timeout or Stop.
  bool WaitForMap(const std::function<bool(const ClusterMap&)>& pred, absl::Duration timeout);
  // Asks the controller to drain `self`. From then on the client drains
  // again after every later registration, whether this call succeeded or
  // not (a restarted controller does not remember; one restarting now did
  // not hear). FailedPrecondition without `self`; the controller's error
  // (e.g. UNAVAILABLE while it restarts) otherwise.
  absl::Status Drain();
  // Tells the controller that expert worker `worker_id` did not answer in
  // time (ControllerService::ReportSuspect). Returns at once: the report is
  // sent from a thread of the client's, at most once a second per worker and
  // 64 waiting; a failed report is logged, not retried.
  void ReportSuspect(const std::string& worker_id, const std::string& reason);
  // Ends the threads promptly, cancelling calls in flight. Idempotent.
  void Stop();

  struct Stats {
    int64_t registrations = 0;       // Successful Register calls.
    int64_t heartbeat_failures = 0;  // Heartbeats refused or not answered.
    int64_t maps_received = 0;       // Newer maps taken (on_map calls).
    int64_t suspects_reported = 0;   // ReportSuspect calls answered OK.
  };
  Stats stats() const;

 private:
  ControlClient(ControlClientOptions options, ModelConfig config, MapCallback on_map);

  void MemberLoop();
  void WatchLoop();
  void ReportLoop();
  // Registers self; then drains again if Drain succeeded before. Returns the
  // lease, or the call's error.
  grpc::Status RegisterSelf(absl::Duration* lease);
  // Runs `call` with a fresh context that Stop cancels; CANCELLED once stopping.
  grpc::Status Call(absl::Duration timeout,
                    const std::function<grpc::Status(grpc::ClientContext*)>& call);
  bool Stopping() const;
  // Waits until `deadline` or Stop; false when stopping.
  bool SleepUntil(absl::Time deadline);

  const ControlClientOptions options_;
  const ModelConfig config_;
  const MapCallback on_map_;
  std::unique_ptr<internal::Controller::Stub> stub_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;  // A new map, or stopping.
  bool stop_ = false;
  std::vector<grpc::ClientContext*> in_flight_;  // Calls Stop cancels.
  std::optional<ClusterMap> map_;
  bool drained_ = false;
  Stats stats_;
  // Suspect reports to send (worker id, reason), and when each worker was
  // last reported.
  std::deque<std::pair<std::string, std::string>> reports_;
  std::map<std::string, absl::Time> reported_at_;

  std::mutex join_mutex_;  // Serializes Stop's joins.
  std::thread member_;
  std::thread watcher_;
  std::thread reporter_;
};

// A random nonzero data-plane peer id for WorkerInfo::peer_id.
uint32_t RandomPeerId();

}  // namespace dsv2
