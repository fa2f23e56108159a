#include "services/controller/controller_service.h"

#include <openssl/rand.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/base/logging.h"
#include "common/cluster/cluster_map_proto.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

constexpr std::initializer_list<Role> kWorkers = {Role::kAttention, Role::kExpert};
constexpr std::initializer_list<Role> kMembers = {Role::kRouter, Role::kAttention, Role::kExpert,
                                                  Role::kOperator};

// A worker may speak only for itself: on a TLS cluster the caller's
// certificate must name `worker_id` (and `role`, when given).
absl::Status CheckSelf(const Caller& caller, const std::string& worker_id,
                       std::optional<Role> role, const char* method) {
  if (!caller.identity) return absl::OkStatus();  // Open policy.
  if (caller.identity->id != worker_id || (role && caller.identity->role != *role)) {
    return absl::PermissionDeniedError(absl::StrCat(
        method, " for ", role ? RoleName(*role) : "worker", " '", worker_id.substr(0, 128),
        "' needs that worker's certificate; the caller is ", caller.principal));
  }
  return absl::OkStatus();
}
// 32 random bytes: the data plane's key for this controller's epoch.
std::string NewDataPlaneKey() {
  std::string key(32, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size()));
  return key;
}

}  // namespace

ControllerService::ControllerService(ModelConfig config, ControllerOptions options)
    : lease_(options.lease),
      suspect_time_(options.suspect_time),
      policy_(std::move(options.policy)),
      data_plane_key_(policy_.open() || !options.seal_data_plane ? "" : NewDataPlaneKey()),
      epoch_(static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()))),
      clock_(options.clock != nullptr ? std::move(options.clock)
                                      : Clock(&ClusterState::Clock::now)),
      warm_at_(clock_() + options.warmup),
      state_(std::move(config), options.replicas, options.lease, epoch_),
      warm_(options.warmup <= std::chrono::milliseconds(0)) {
  expirer_ = std::thread([this] { ExpireLoop(); });
}

ControllerService::~ControllerService() {
  Shutdown();
  expirer_.join();
}

void ControllerService::Shutdown() {
  MutexLock lock(&mutex_);
  stop_ = true;
}

void ControllerService::ExpireLoop() {
  MutexLock lock(&mutex_);
  while (!stop_) {
    // Often enough that a lapsed lease shows in the map within a small part
    // of the lease (health follows the map).
    absl::Duration wait =
        absl::FromChrono(std::clamp<std::chrono::milliseconds>(lease_ / 8, 10ms, 50ms));
    if (!warm_) {
      wait = std::min(wait, absl::FromChrono(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                warm_at_ - clock_())));
    }
    mutex_.AwaitWithTimeout(absl::Condition(&stop_), wait);
    if (stop_) break;
    const ClusterState::Clock::time_point now = clock_();
    if (!warm_ && now >= warm_at_) {
      warm_ = true;
      DSV2_LOG(INFO) << "warm-up over: publishing cluster map version " << state_.map().version
                     << " (" << state_.map().workers.size() << " workers)";
    }
    if (state_.ExpireLeases(now)) {
      DSV2_LOG(WARNING) << "lease lapsed; cluster map version " << state_.map().version;
    }
  }
}

grpc::Status ControllerService::Register(grpc::ServerContext* context,
                                         const internal::RegisterRequest* request,
                                         internal::RegisterResponse* response) {
  absl::StatusOr<Caller> caller = policy_.Authorize(*context, kWorkers, "Register");
  if (!caller.ok()) return ToGrpc(caller.status());
  absl::StatusOr<WorkerInfo> info = FromProto(request->worker());
  if (!info.ok()) return ToGrpc(info.status());
  const Role role = info->role == WorkerRole::kAttention ? Role::kAttention : Role::kExpert;
  if (absl::Status s = CheckSelf(*caller, info->id, role, "Register"); !s.ok()) return ToGrpc(s);
  MutexLock lock(&mutex_);
  if (absl::Status status = state_.Register(*info, clock_(),
                                           static_cast<int64_t>(request->slot_hint()) - 1);
      !status.ok()) {
    return ToGrpc(status);
  }
  DSV2_LOG(INFO) << "registered " << info->id << " at " << info->grpc_address << " (peer id "
                 << info->peer_id << "); cluster map version " << state_.map().version;
  response->set_lease_ms(static_cast<uint32_t>(lease_.count()));
  response->set_map_version(state_.map().version);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Heartbeat(grpc::ServerContext* context,
                                          const internal::HeartbeatRequest* request,
                                          internal::HeartbeatResponse* response) {
  absl::StatusOr<Caller> caller = policy_.Authorize(*context, kWorkers, "Heartbeat");
  if (!caller.ok()) return ToGrpc(caller.status());
  if (absl::Status s = CheckSelf(*caller, request->worker_id(), std::nullopt, "Heartbeat");
      !s.ok()) {
    return ToGrpc(s);
  }
  MutexLock lock(&mutex_);
  if (absl::Status status = state_.Heartbeat(request->worker_id(), clock_());
      !status.ok()) {
    return ToGrpc(status);
  }
  response->set_map_version(state_.map().version);
  return grpc::Status::OK;
}

grpc::Status ControllerService::GetClusterMap(grpc::ServerContext* context,
                                              const internal::GetClusterMapRequest*,
                                              internal::ClusterMap* response) {
  absl::StatusOr<Caller> caller = policy_.Authorize(*context, kMembers, "GetClusterMap");
  if (!caller.ok()) return ToGrpc(caller.status());
  MutexLock lock(&mutex_);
  if (!warm_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "controller warming up");
  *response = MapFor(*caller);
  return grpc::Status::OK;
}

internal::ClusterMap ControllerService::MapFor(const Caller& caller) const {
  internal::ClusterMap map = ToProto(state_.map());
  if (caller.identity && (caller.identity->role == Role::kAttention ||
                          caller.identity->role == Role::kExpert)) {
    map.set_data_plane_key(data_plane_key_);
  }
  return map;
}

grpc::Status ControllerService::WatchClusterMap(grpc::ServerContext* context,
                                                const internal::WatchRequest* request,
                                                grpc::ServerWriter<internal::ClusterMap>* writer) {
  absl::StatusOr<Caller> caller = policy_.Authorize(*context, kMembers, "WatchClusterMap");
  if (!caller.ok()) return ToGrpc(caller.status());
  // The map the watcher holds; a map of another epoch is newer whatever
  // its version (this controller restarted versions at 1).
  uint64_t known_epoch = request->known_epoch();
  uint64_t known_version = request->known_version();
  const auto newer = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return warm_ && state_.map().NewerThan(known_epoch, known_version);
  };
  const auto woken = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stop_ || newer(); };
  mutex_.Lock();
  while (!stop_ && !context->IsCancelled()) {
    if (newer()) {
      const internal::ClusterMap map = MapFor(*caller);
      known_epoch = map.epoch();
      known_version = map.version();
      // Never held across the write: a slow watcher must not stall the
      // controller.
      mutex_.Unlock();
      if (!writer->Write(map)) return grpc::Status::OK;  // The watcher went away.
      mutex_.Lock();
      continue;
    }
    // Woken by a newer map (the warm-up's end included) and Shutdown; the
    // timeout notices cancelled watchers.
    mutex_.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(100));
  }
  mutex_.Unlock();
  return grpc::Status::OK;
}

grpc::Status ControllerService::Drain(grpc::ServerContext* context,
                                      const internal::DrainRequest* request,
                                      internal::DrainResponse*) {
  absl::StatusOr<Caller> caller =
      policy_.Authorize(*context, {Role::kAttention, Role::kExpert, Role::kOperator}, "Drain");
  if (!caller.ok()) return ToGrpc(caller.status());
  if (caller->identity && caller->identity->role != Role::kOperator) {
    if (absl::Status s = CheckSelf(*caller, request->worker_id(), std::nullopt, "Drain"); !s.ok()) {
      return ToGrpc(s);
    }
  }
  MutexLock lock(&mutex_);
  if (absl::Status status = state_.Drain(request->worker_id()); !status.ok()) return ToGrpc(status);
  DSV2_LOG(INFO) << "draining " << request->worker_id() << "; cluster map version "
                 << state_.map().version;
  return grpc::Status::OK;
}

grpc::Status ControllerService::ReportSuspect(grpc::ServerContext* context,
                                              const internal::ReportSuspectRequest* request,
                                              internal::ReportSuspectResponse*) {
  absl::StatusOr<Caller> caller = policy_.Authorize(*context, {Role::kAttention}, "ReportSuspect");
  if (!caller.ok()) return ToGrpc(caller.status());
  if (request->reason().size() > 1024) {
    return ToGrpc(absl::InvalidArgumentError("reason is longer than 1024 bytes"));
  }
  MutexLock lock(&mutex_);
  const uint64_t version = state_.map().version;
  if (absl::Status status = state_.Suspect(request->worker_id(), clock_() + suspect_time_);
      !status.ok()) {
    return ToGrpc(status);
  }
  if (state_.map().version != version) {
    DSV2_LOG(WARNING) << "expert worker " << request->worker_id() << " reported hung by "
                      << (caller->principal.empty() ? "an attention worker" : caller->principal)
                      << " (" << request->reason() << "); suspect for " << suspect_time_.count()
                      << " ms; cluster map version " << state_.map().version;
  }
  return grpc::Status::OK;
}

ControllerService::Stats ControllerService::stats() const {
  MutexLock lock(&mutex_);
  return {state_.map(), state_.counters(), warm_};
}

}  // namespace dsv2
