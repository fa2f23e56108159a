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

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/base/mutex.h"
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
  bool WaitForMap(const std::function<bool(const ClusterMap&)>& pred, absl::Duration timeout)
      ABSL_LOCKS_EXCLUDED(mutex_);
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
  void ReportSuspect(const std::string& worker_id, const std::string& reason)
      ABSL_LOCKS_EXCLUDED(mutex_);
  // Ends the threads promptly, cancelling calls in flight. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mutex_, join_mutex_);

  struct Stats {
    int64_t registrations = 0;       // Successful Register calls.
    int64_t register_failures = 0;   // Register calls refused or not answered.
    int64_t heartbeats = 0;          // Heartbeats answered OK (the lease renewed).
    int64_t heartbeat_failures = 0;  // Heartbeats refused or not answered.
    int64_t maps_received = 0;       // Newer maps taken (on_map calls).
    int64_t watch_failures = 0;      // Watch streams that ended (each is reopened).
    int64_t suspects_reported = 0;   // ReportSuspect calls answered OK.
    int64_t calls_in_flight = 0;     // Calls to the controller now (the watch included).
  };
  Stats stats() const ABSL_LOCKS_EXCLUDED(mutex_);
  // Waits until the stats satisfy `pred` (called with the client's lock
  // held: it must not call the client); false at timeout or Stop.
  bool WaitForStats(const std::function<bool(const Stats&)>& pred, absl::Duration timeout)
      ABSL_LOCKS_EXCLUDED(mutex_);

 private:
  ControlClient(ControlClientOptions options, ModelConfig config, MapCallback on_map);

  void MemberLoop() ABSL_LOCKS_EXCLUDED(mutex_);
  void WatchLoop() ABSL_LOCKS_EXCLUDED(mutex_);
  void ReportLoop() ABSL_LOCKS_EXCLUDED(mutex_);
  // Registers self; then drains again if Drain succeeded before. Returns the
  // lease, or the call's error.
  grpc::Status RegisterSelf(absl::Duration* lease) ABSL_LOCKS_EXCLUDED(mutex_);
  // Runs `call` with a fresh context that Stop cancels; CANCELLED once
  // stopping. The lock is not held while the call runs.
  grpc::Status Call(absl::Duration timeout,
                    const std::function<grpc::Status(grpc::ClientContext*)>& call)
      ABSL_LOCKS_EXCLUDED(mutex_);
  bool Stopping() const ABSL_LOCKS_EXCLUDED(mutex_);
  // Waits until `deadline` or Stop; false when stopping.
  bool SleepUntil(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mutex_);
  Stats StatsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const ControlClientOptions options_;
  const ModelConfig config_;
  const MapCallback on_map_;
  std::unique_ptr<internal::Controller::Stub> stub_;

  // Waiters (WaitForMap, WaitForStats, the threads between calls) wait on
  // it for their conditions.
  mutable Mutex mutex_;
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<grpc::ClientContext*> in_flight_ ABSL_GUARDED_BY(mutex_);  // Calls Stop cancels.
  std::optional<ClusterMap> map_ ABSL_GUARDED_BY(mutex_);
  bool drained_ ABSL_GUARDED_BY(mutex_) = false;
  Stats stats_ ABSL_GUARDED_BY(mutex_);  // But calls_in_flight: in_flight_.size().
  // Suspect reports to send (worker id, reason), and when each worker was
  // last reported.
  std::deque<std::pair<std::string, std::string>> reports_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, absl::Time> reported_at_ ABSL_GUARDED_BY(mutex_);

  // Serializes Stop's joins. The threads are started by Start before the
  // client is shared, and joined only under it.
  Mutex join_mutex_;
  std::thread member_;
  std::thread watcher_;
  std::thread reporter_;
};

// A random nonzero data-plane peer id for WorkerInfo::peer_id.
uint32_t RandomPeerId();

// The gRPC address a worker registers (WorkerInfo::grpc_address): its
// --advertise flag when set (host:port, or a host, which takes the bound
// port), else the --listen host with the bound port. Behind a wildcard
// listen address (0.0.0.0, Kubernetes) the advertised name is what others
// dial, and what its certificate names. InvalidArgument, naming
// --advertise, for an empty host, a port that is not 1..65535 or a space.
absl::StatusOr<std::string> WorkerGrpcAddress(const std::string& listen, int port,
                                              const std::string& advertise);

}  // namespace dsv2
