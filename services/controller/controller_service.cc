#include "services/controller/controller_service.h"

#include "common/base/logging.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

internal::WorkerState ToProto(WorkerState state) {
  switch (state) {
    case WorkerState::kAlive: return internal::WORKER_STATE_ALIVE;
    case WorkerState::kDraining: return internal::WORKER_STATE_DRAINING;
    case WorkerState::kDead: return internal::WORKER_STATE_DEAD;
  }
  return internal::WORKER_STATE_UNSPECIFIED;
}

}  // namespace

internal::ClusterMap ToProto(const ClusterMap& map) {
  internal::ClusterMap out;
  out.set_version(map.version);
  out.set_complete(map.complete);
  for (const ClusterMap::Worker& w : map.workers) {
    internal::Worker* worker = out.add_workers();
    internal::WorkerInfo* info = worker->mutable_info();
    info->set_worker_id(w.info.id);
    info->set_role(w.info.role == WorkerRole::kExpert ? internal::ROLE_EXPERT
                                                      : internal::ROLE_ATTENTION);
    info->set_grpc_address(w.info.grpc_address);
    info->set_data_address(w.info.data_address);
    info->set_capacity(static_cast<uint64_t>(w.info.capacity));
    worker->set_state(ToProto(w.state));
  }
  if (map.complete) {
    for (int64_t u = 0; u < map.placement.num_units; ++u) {
      internal::PlacementUnit* unit = out.add_placement();
      unit->set_expert_begin(map.placement.unit_begin[u]);
      unit->set_expert_end(map.placement.unit_begin[u + 1]);
      for (int32_t w : map.placement.unit_workers[u]) unit->add_worker_ids(map.expert_workers[w]);
    }
  }
  return out;
}

ControllerService::ControllerService(ModelConfig config, int64_t replicas,
                                     std::chrono::milliseconds lease)
    : lease_(lease), state_(std::move(config), replicas, lease) {
  expirer_ = std::thread([this] { ExpireLoop(); });
}

ControllerService::~ControllerService() {
  Shutdown();
  expirer_.join();
}

void ControllerService::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
}

void ControllerService::ExpireLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    changed_.wait_for(lock, std::max<std::chrono::milliseconds>(lease_ / 4, 10ms));
    if (stop_) break;
    if (state_.ExpireLeases(ClusterState::Clock::now())) {
      DSV2_LOG(WARNING) << "lease lapsed; cluster map version " << state_.map().version;
      changed_.notify_all();
    }
  }
}

grpc::Status ControllerService::Register(grpc::ServerContext*,
                                         const internal::RegisterRequest* request,
                                         internal::RegisterResponse* response) {
  const internal::WorkerInfo& w = request->worker();
  if (w.role() != internal::ROLE_ATTENTION && w.role() != internal::ROLE_EXPERT) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "role must be attention or expert");
  }
  const WorkerInfo info{w.worker_id(),
                        w.role() == internal::ROLE_EXPERT ? WorkerRole::kExpert
                                                          : WorkerRole::kAttention,
                        w.grpc_address(), w.data_address(), static_cast<int64_t>(w.capacity())};
  std::lock_guard<std::mutex> lock(mutex_);
  if (absl::Status status = state_.Register(info, ClusterState::Clock::now()); !status.ok()) {
    return ToGrpc(status);
  }
  DSV2_LOG(INFO) << "registered " << info.id << " at " << info.grpc_address
                 << "; cluster map version " << state_.map().version;
  response->set_lease_ms(static_cast<uint32_t>(lease_.count()));
  response->set_map_version(state_.map().version);
  changed_.notify_all();
  return grpc::Status::OK;
}

grpc::Status ControllerService::Heartbeat(grpc::ServerContext*,
                                          const internal::HeartbeatRequest* request,
                                          internal::HeartbeatResponse* response) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (absl::Status status = state_.Heartbeat(request->worker_id(), ClusterState::Clock::now());
      !status.ok()) {
    return ToGrpc(status);
  }
  response->set_map_version(state_.map().version);
  return grpc::Status::OK;
}

grpc::Status ControllerService::GetClusterMap(grpc::ServerContext*,
                                              const internal::GetClusterMapRequest*,
                                              internal::ClusterMap* response) {
  std::lock_guard<std::mutex> lock(mutex_);
  *response = ToProto(state_.map());
  return grpc::Status::OK;
}

grpc::Status ControllerService::WatchClusterMap(grpc::ServerContext* context,
                                                const internal::WatchRequest* request,
                                                grpc::ServerWriter<internal::ClusterMap>* writer) {
  uint64_t sent = request->known_version();
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_ && !context->IsCancelled()) {
    if (state_.map().version > sent) {
      const internal::ClusterMap map = ToProto(state_.map());
      sent = map.version();
      lock.unlock();
      if (!writer->Write(map)) return grpc::Status::OK;  // The watcher went away.
      lock.lock();
      continue;
    }
    // Woken by changes; the timeout notices cancelled watchers.
    changed_.wait_for(lock, 100ms);
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::Drain(grpc::ServerContext*, const internal::DrainRequest* request,
                                      internal::DrainResponse*) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (absl::Status status = state_.Drain(request->worker_id()); !status.ok()) return ToGrpc(status);
  DSV2_LOG(INFO) << "draining " << request->worker_id() << "; cluster map version "
                 << state_.map().version;
  changed_.notify_all();
  return grpc::Status::OK;
}

}  // namespace dsv2
