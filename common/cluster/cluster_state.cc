#include "common/cluster/cluster_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dsv2 {

const ClusterMap::Worker* ClusterMap::Find(const std::string& id) const {
  for (const Worker& worker : workers) {
    if (worker.info.id == id) return &worker;
  }
  return nullptr;
}

std::string ClusterMap::WhyIncomplete() const {
  if (complete) return "";
  if (placement.num_units == 0) return "no expert worker has joined the cluster";
  std::string first;
  int64_t unserved = 0;
  for (int64_t u = 0; u < placement.num_units; ++u) {
    std::vector<std::string> holders;
    bool served = false;
    for (int32_t w : placement.unit_workers[u]) {
      const Worker* holder = Find(expert_workers[w]);
      const bool alive = holder != nullptr && holder->state == WorkerState::kAlive;
      served = served || (alive && !holder->suspect);
      holders.push_back(absl::StrCat(expert_workers[w], " ",
                                     holder == nullptr ? "unknown"
                                     : holder->suspect ? "suspect (hung)"
                                     : alive           ? "alive"
                                                       : "dead"));
    }
    if (served) continue;
    if (unserved++ == 0) {
      first = absl::StrCat("experts ", placement.unit_begin[u], "..", placement.unit_begin[u + 1] - 1,
                           " have no live expert worker (", absl::StrJoin(holders, ", "), ")");
    }
  }
  if (unserved > 1) absl::StrAppend(&first, "; ", unserved - 1, " more unit(s) neither");
  return first;
}

ClusterState::ClusterState(ModelConfig config, int64_t replicas, Clock::duration lease,
                           uint64_t epoch)
    : config_(std::move(config)), replicas_(replicas), lease_(lease) {
  map_.epoch = epoch;
}

absl::Status ClusterState::Register(const WorkerInfo& info, Clock::time_point now,
                                    int64_t slot_hint) {
  if (info.id.empty()) return absl::InvalidArgumentError("worker id must not be empty");
  if (info.grpc_address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("worker ", info.id, " has no grpc_address"));
  }
  if (info.role == WorkerRole::kExpert && info.data_address.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert worker ", info.id, " has no data_address"));
  }
  // Every worker sends on the data plane (attention workers dispatch), and
  // receivers admit senders by this id.
  if (info.peer_id == 0) {
    return absl::InvalidArgumentError(absl::StrCat("worker ", info.id, " has no peer_id"));
  }
  for (const auto& [id, entry] : workers_) {
    if (id != info.id && entry.state != WorkerState::kDead && entry.info.peer_id == info.peer_id) {
      return absl::AlreadyExistsError(absl::StrCat("peer_id ", info.peer_id, " of worker ", info.id,
                                                   " is held by worker ", id));
    }
  }
  auto it = workers_.find(info.id);
  if (it != workers_.end() && it->second.state == WorkerState::kAlive && it->second.info == info) {
    // A retried registration: nothing changed, so no new map version.
    it->second.lease_end = now + lease_;
    return absl::OkStatus();
  }
  const bool has_slot = std::find(slots_.begin(), slots_.end(), info.id) != slots_.end();
  if (info.role == WorkerRole::kExpert) {
    if (!has_slot) AssignSlot(info.id, slot_hint);
  } else if (has_slot) {
    RemoveSlot(info.id);  // An expert worker came back as an attention worker.
  }
  workers_[info.id] = Entry{info, WorkerState::kAlive, now + lease_, slot_hint};
  Publish();
  return absl::OkStatus();
}

void ClusterState::AssignSlot(const std::string& id, int64_t slot_hint) {
  for (std::string& slot : slots_) {
    auto dead = workers_.find(slot);
    if (dead != workers_.end() && dead->second.state == WorkerState::kDead) {
      // The newcomer serves the dead worker's units; the placement stays.
      workers_.erase(dead);
      slot = id;
      return;
    }
  }
  auto at = slots_.end();
  if (slot_hint >= 0) {
    at = std::find_if(slots_.begin(), slots_.end(), [&](const std::string& slot) {
      const int64_t hint = workers_.at(slot).slot_hint;
      return hint < 0 || hint > slot_hint;
    });
  }
  slots_.insert(at, id);
}

void ClusterState::RemoveSlot(const std::string& id) {
  slots_.erase(std::remove(slots_.begin(), slots_.end(), id), slots_.end());
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
    RemoveSlot(id);
    Publish();
  }
  return absl::OkStatus();
}

absl::Status ClusterState::Suspect(const std::string& id, Clock::time_point until) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return absl::NotFoundError(absl::StrCat("no worker ", id));
  Entry& entry = it->second;
  if (entry.info.role != WorkerRole::kExpert) {
    return absl::InvalidArgumentError(absl::StrCat(id, " is not an expert worker"));
  }
  if (entry.state != WorkerState::kAlive) return absl::OkStatus();
  const bool was = entry.suspect_until.has_value();
  entry.suspect_until = std::max(until, entry.suspect_until.value_or(until));
  if (!was) {
    ++counters_.suspect_marks;
    Publish();
  }
  return absl::OkStatus();
}

bool ClusterState::ExpireLeases(Clock::time_point now) {
  bool changed = false;
  for (auto& [id, entry] : workers_) {
    if (entry.state != WorkerState::kDead && entry.lease_end < now) {
      entry.state = WorkerState::kDead;  // An expert keeps its slot.
      entry.suspect_until.reset();
      ++counters_.lease_expiries;
      changed = true;
    }
    if (entry.suspect_until && *entry.suspect_until <= now) {
      entry.suspect_until.reset();
      changed = true;
    }
  }
  if (changed) Publish();
  return changed;
}

void ClusterState::Publish() {
  ClusterMap next;
  next.epoch = map_.epoch;
  next.version = map_.version + 1;
  for (const auto& [id, entry] : workers_) {
    next.workers.push_back({entry.info, entry.state, entry.suspect_until.has_value()});
  }
  next.expert_workers = slots_;
  const auto slots = static_cast<int64_t>(slots_.size());
  if (slots > 0) {
    // With fewer slots than replicas, each unit gets every slot.
    absl::StatusOr<ExpertPlacement> placement =
        PlaceExperts(config_, slots, std::min(replicas_, slots));
    if (placement.ok()) next.placement = *std::move(placement);
  }
  next.complete = next.placement.num_units > 0;
  for (const std::vector<int32_t>& holders : next.placement.unit_workers) {
    const bool served = std::any_of(holders.begin(), holders.end(), [&](int32_t w) {
      const Entry& holder = workers_.at(slots_[w]);
      return holder.state == WorkerState::kAlive && !holder.suspect_until;
    });
    next.complete = next.complete && served;
  }
  map_ = std::move(next);
}

}  // namespace dsv2
