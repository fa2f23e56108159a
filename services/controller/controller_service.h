// dsv2.internal.Controller over a ClusterState: registration, leases, the
// watched cluster map and drain. A background thread expires leases.
//
// Its maps carry its epoch (its start time in µs since the Unix epoch), so
// watchers tell them from an earlier controller's. For `warmup` after start
// it publishes nothing (GetClusterMap answers UNAVAILABLE, watch streams
// wait) while Register, Heartbeat and Drain work: live workers learn of the
// restart from a refused heartbeat and register again, so the first map
// published is the whole cluster rather than whoever came back first.
//
// Who may call what (with a Cluster AccessPolicy; an Open one allows all):
// Register and Heartbeat only the worker itself — the certificate's role and
// id must be the request's; Drain the worker itself or an operator;
// ReportSuspect attention workers;
// GetClusterMap and WatchClusterMap any identity of the cluster. Others get
// PERMISSION_DENIED naming the rule. On a TLS cluster it draws a data-plane
// key for its epoch and sends it, with the map, to attention and expert
// workers only, unless told not to seal (ControllerOptions::seal_data_plane).
//
// Leases, suspicions and the warm-up are measured on `clock` (default
// steady_clock::now), which tests replace to move time by hand.
//
// Thread safety: gRPC calls it from many threads; one mutex guards the state.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "common/base/mutex.h"
#include "common/cluster/cluster_state.h"
#include "common/rpc/access.h"
#include "dsv2/internal/control.grpc.pb.h"

namespace dsv2 {

struct ControllerOptions {
  using Clock = std::function<ClusterState::Clock::time_point()>;

  int64_t replicas = 1;  // Expert workers holding each routing group (or slice).
  std::chrono::milliseconds lease{750};
  std::chrono::milliseconds warmup{0};
  // How long an expert worker reported hung serves no unit.
  std::chrono::milliseconds suspect_time{5000};
  AccessPolicy policy = AccessPolicy::Open();
  // With a Cluster policy: draw a data-plane key, so workers seal every
  // frame. False leaves frames in plaintext (an Open policy always does).
  bool seal_data_plane = true;
  Clock clock;  // Null: ClusterState::Clock::now.
};

class ControllerService final : public internal::Controller::Service {
 public:
  using Clock = ControllerOptions::Clock;

  ControllerService(ModelConfig config, ControllerOptions options);
  ~ControllerService() override;  // Stops the lease thread and ends watches.

  grpc::Status Register(grpc::ServerContext* context, const internal::RegisterRequest* request,
                        internal::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const internal::HeartbeatRequest* request,
                         internal::HeartbeatResponse* response) override;
  grpc::Status GetClusterMap(grpc::ServerContext* context,
                             const internal::GetClusterMapRequest* request,
                             internal::ClusterMap* response) override;
  grpc::Status WatchClusterMap(grpc::ServerContext* context, const internal::WatchRequest* request,
                               grpc::ServerWriter<internal::ClusterMap>* writer) override;
  grpc::Status Drain(grpc::ServerContext* context, const internal::DrainRequest* request,
                     internal::DrainResponse* response) override;
  // Attention workers only. The expert worker is suspect for
  // `suspect_time` (ClusterState::Suspect).
  grpc::Status ReportSuspect(grpc::ServerContext* context,
                             const internal::ReportSuspectRequest* request,
                             internal::ReportSuspectResponse* response) override;

  // Ends every watch stream (before the server shuts down).
  void Shutdown() ABSL_LOCKS_EXCLUDED(mutex_);

  uint64_t epoch() const { return epoch_; }

  // For metrics: the current map (during the warm-up, the one to be
  // published), the state's counters and whether the warm-up is over.
  struct Stats {
    ClusterMap map;
    ClusterState::Counters counters;
    bool warm = false;
  };
  Stats stats() const ABSL_LOCKS_EXCLUDED(mutex_);

 private:
  // Expires leases, and ends the warm-up.
  void ExpireLoop() ABSL_LOCKS_EXCLUDED(mutex_);
  // The wire map for `caller`: with the data-plane key for workers only.
  internal::ClusterMap MapFor(const Caller& caller) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::chrono::milliseconds lease_;
  const std::chrono::milliseconds suspect_time_;
  const AccessPolicy policy_;
  // This epoch's data-plane key (32 random bytes) on a TLS cluster; empty in
  // plaintext, where frames are not sealed.
  const std::string data_plane_key_;
  const uint64_t epoch_;
  const Clock clock_;
  const ClusterState::Clock::time_point warm_at_;  // When the warm-up ends.
  // Watch streams and the lease thread wait on it for a newer map, the end
  // of the warm-up or Shutdown.
  mutable Mutex mutex_;
  ClusterState state_ ABSL_GUARDED_BY(mutex_);
  bool warm_ ABSL_GUARDED_BY(mutex_) = false;
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread expirer_;
};

}  // namespace dsv2
