// dsv2.internal.Controller over a ClusterState: registration, leases, the
// watched cluster map and drain. A background thread expires leases.
//
// Thread safety: gRPC calls it from many threads; one mutex guards the state.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/cluster/cluster_state.h"
#include "dsv2/internal/control.grpc.pb.h"

namespace dsv2 {

class ControllerService final : public internal::Controller::Service {
 public:
  ControllerService(ModelConfig config, int64_t replicas, std::chrono::milliseconds lease);
  ~ControllerService() override;  // Stops the lease thread and ends watches.

  grpc::Status Register(grpc::ServerContext* context, const internal::RegisterRequest* request,
                        internal::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const internal::HeartbeatRequest* request,
                         internal::HeartbeatResponse* response) override;
  grpc::Status GetClusterMap(grpc::ServerContext* context,
                             const internal::GetClusterMapRequest* request,
                             internal::ClusterMap* response) override;
  grpc::Status WatchClusterMap(grpc::ServerContext* context,
                               const internal::WatchRequest* request,
                               grpc::ServerWriter<internal::ClusterMap>* writer) override;
  grpc::Status Drain(grpc::ServerContext* context, const internal::DrainRequest* request,
                     internal::DrainResponse* response) override;

  // Ends every watch stream (before the server shuts down).
  void Shutdown();

 private:
  void ExpireLoop();

  const std::chrono::milliseconds lease_;
  std::mutex mutex_;
  std::condition_variable changed_;  // Map version changed, or shutting down.
  ClusterState state_;               // Guarded by mutex_.
  bool stop_ = false;                // Guarded by mutex_.
  std::thread expirer_;
};

// The wire form of a cluster map.
internal::ClusterMap ToProto(const ClusterMap& map);

}  // namespace dsv2
