#include "common/cluster/cluster_state.h"

#include "absl/strings/str_cat.h"

namespace dsv2 {

absl::Status ClusterState::Register(const WorkerInfo& info, Clock::time_point now) {
  if (info.id.empty()) return absl::InvalidArgumentError("worker id must not be empty");
  if (info.grpc_address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("worker ", info.id, " has no grpc_address"));
  }
  if (info.role == WorkerRole::kExpert && info.data_address.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert worker ", info.id, " has no data_address"));
  }
  workers_[info.id] = Entry{info, WorkerState::kAlive, now + lease_};
  Publish();
  return absl::OkStatus();
}

absl::Status ClusterState::Heartbeat(const std::string& id, Clock::time_point now) {
  auto it = workers_.find(id);
  if (it == workers_.end() || it->second.state == WorkerState::kDead) {
    return absl::NotFoundError(absl::StrCat("worker ", id, " is not registered; register again"));
  }
  it->second.lease_end = now + lease_;
  return absl::OkStatus();
}

absl::Status ClusterState::Drain(const std::string& id) {
  auto it = workers_.find(id);
  if (it == workers_.end() || it->second.state == WorkerState::kDead) {
    return absl::NotFoundError(absl::StrCat("no live worker ", id));
  }
  if (it->second.state != WorkerState::kDraining) {
    it->second.state = WorkerState::kDraining;
    Publish();
  }
  return absl::OkStatus();
}

bool ClusterState::ExpireLeases(Clock::time_point now) {
  bool changed = false;
  for (auto& [id, entry] : workers_) {
    if (entry.state != WorkerState::kDead && entry.lease_end < now) {
      entry.state = WorkerState::kDead;
      changed = true;
    }
  }
  if (changed) Publish();
  return changed;
}

void ClusterState::Publish() {
  ClusterMap next;
  next.version = map_.version + 1;
  for (const auto& [id, entry] : workers_) {
    next.workers.push_back({entry.info, entry.state});
    if (entry.info.role == WorkerRole::kExpert && entry.state == WorkerState::kAlive) {
      next.expert_workers.push_back(id);
    }
  }
  const int64_t live = static_cast<int64_t>(next.expert_workers.size());
  // With fewer live workers than replicas, each unit gets every live worker.
  absl::StatusOr<ExpertPlacement> placement =
      live > 0 ? PlaceExperts(config_, live, std::min(replicas_, live))
               : absl::StatusOr<ExpertPlacement>(absl::UnavailableError("no expert workers"));
  if (placement.ok()) {
    next.placement = *std::move(placement);
    next.complete = true;
  }
  map_ = std::move(next);
}

}  // namespace dsv2
