#include "common/cluster/cluster_map_proto.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/rpc/identity.h"

namespace dsv2 {
namespace {

constexpr size_t kMaxGrpcAddressBytes = 256;
constexpr size_t kMaxDataAddressBytes = 4096;

internal::WorkerState ToProto(WorkerState state) {
  switch (state) {
    case WorkerState::kAlive:
      return internal::WORKER_STATE_ALIVE;
    case WorkerState::kDraining:
      return internal::WORKER_STATE_DRAINING;
    case WorkerState::kDead:
      return internal::WORKER_STATE_DEAD;
  }
  return internal::WORKER_STATE_UNSPECIFIED;
}

absl::StatusOr<WorkerState> FromProto(internal::WorkerState state, const std::string& id) {
  switch (state) {
    case internal::WORKER_STATE_ALIVE:
      return WorkerState::kAlive;
    case internal::WORKER_STATE_DRAINING:
      return WorkerState::kDraining;
    case internal::WORKER_STATE_DEAD:
      return WorkerState::kDead;
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("worker ", id, " has no valid state (", static_cast<int>(state), ")"));
}

}  // namespace

internal::WorkerInfo ToProto(const WorkerInfo& info) {
  internal::WorkerInfo out;
  out.set_worker_id(info.id);
  out.set_role(info.role == WorkerRole::kExpert ? internal::ROLE_EXPERT : internal::ROLE_ATTENTION);
  out.set_grpc_address(info.grpc_address);
  out.set_data_address(info.data_address);
  out.set_capacity(static_cast<uint64_t>(info.capacity));
  out.set_peer_id(info.peer_id);
  return out;
}

absl::StatusOr<WorkerInfo> FromProto(const internal::WorkerInfo& info) {
  WorkerInfo out;
  switch (info.role()) {
    case internal::ROLE_ATTENTION:
      out.role = WorkerRole::kAttention;
      break;
    case internal::ROLE_EXPERT:
      out.role = WorkerRole::kExpert;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("worker ", info.worker_id(), ": role must be attention or expert"));
  }
  if (!IsValidWorkerId(info.worker_id())) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker_id '", info.worker_id().substr(0, 128),
                     "' must be 1 to 128 bytes of [A-Za-z0-9._@:-]"));
  }
  if (info.grpc_address().size() > kMaxGrpcAddressBytes ||
      info.data_address().size() > kMaxDataAddressBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker ", info.worker_id(), ": grpc_address and data_address may have at most ",
        kMaxGrpcAddressBytes, " and ", kMaxDataAddressBytes, " bytes"));
  }
  out.id = info.worker_id();
  out.grpc_address = info.grpc_address();
  out.data_address = info.data_address();
  out.capacity = static_cast<int64_t>(info.capacity());
  out.peer_id = info.peer_id();
  return out;
}

internal::ClusterMap ToProto(const ClusterMap& map) {
  internal::ClusterMap out;
  out.set_epoch(map.epoch);
  out.set_version(map.version);
  out.set_complete(map.complete);
  out.set_data_plane_key(map.data_plane_key);
  for (const ClusterMap::Worker& w : map.workers) {
    internal::Worker* worker = out.add_workers();
    *worker->mutable_info() = ToProto(w.info);
    worker->set_state(ToProto(w.state));
    worker->set_suspect(w.suspect);
  }
  for (const std::string& id : map.expert_workers) out.add_expert_slots(id);
  for (int64_t u = 0; u < map.placement.num_units; ++u) {
    internal::PlacementUnit* unit = out.add_placement();
    unit->set_expert_begin(map.placement.unit_begin[u]);
    unit->set_expert_end(map.placement.unit_begin[u + 1]);
    for (int32_t w : map.placement.unit_workers[u]) unit->add_worker_ids(map.expert_workers[w]);
  }
  return out;
}

absl::StatusOr<ClusterMap> FromProto(const internal::ClusterMap& map, const ModelConfig& config) {
  ClusterMap out;
  out.epoch = map.epoch();
  out.version = map.version();
  out.complete = map.complete();
  if (!map.data_plane_key().empty() && map.data_plane_key().size() != 32) {
    return absl::InvalidArgumentError(absl::StrCat("the data-plane key has ",
                                                   map.data_plane_key().size(),
                                                   " bytes, not 32"));
  }
  out.data_plane_key = map.data_plane_key();
  std::map<std::string, const ClusterMap::Worker*> by_id;
  for (const internal::Worker& w : map.workers()) {
    ClusterMap::Worker worker;
    ASSIGN_OR_RETURN(worker.info, FromProto(w.info()));
    ASSIGN_OR_RETURN(worker.state, FromProto(w.state(), w.info().worker_id()));
    worker.suspect = w.suspect();
    out.workers.push_back(std::move(worker));
  }
  std::sort(out.workers.begin(), out.workers.end(),
            [](const ClusterMap::Worker& a, const ClusterMap::Worker& b) {
              return a.info.id < b.info.id;
            });
  for (const ClusterMap::Worker& worker : out.workers) {
    if (!by_id.emplace(worker.info.id, &worker).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster map lists worker ", worker.info.id, " twice"));
    }
  }

  const int units = map.placement_size();
  if (units == 0) {
    if (map.complete()) {
      return absl::InvalidArgumentError("cluster map is marked complete but has no placement");
    }
    return out;
  }
  ExpertPlacement& p = out.placement;
  p.num_units = units;
  p.unit_workers.resize(units);
  uint32_t next_begin = 0;
  for (int u = 0; u < units; ++u) {
    const internal::PlacementUnit& unit = map.placement(u);
    if (unit.expert_begin() != next_begin || unit.expert_end() <= unit.expert_begin()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "placement unit ", u, " holds experts [", unit.expert_begin(), ", ", unit.expert_end(),
          "); expected a non-empty range starting at expert ", next_begin));
    }
    if (unit.expert_end() > static_cast<uint64_t>(config.n_routed_experts)) {
      return absl::InvalidArgumentError(absl::StrCat("placement unit ", u, " ends at expert ",
                                                     unit.expert_end(), "; the model has ",
                                                     config.n_routed_experts, " routed experts"));
    }
    if (unit.worker_ids_size() == 0) {
      return absl::InvalidArgumentError(absl::StrCat("placement unit ", u, " has no worker"));
    }
    for (int a = 0; a < unit.worker_ids_size(); ++a) {
      const std::string& id = unit.worker_ids(a);
      auto it = by_id.find(id);
      if (it == by_id.end()) {
        return absl::InvalidArgumentError(absl::StrCat("placement unit ", u, " names worker ", id,
                                                       ", which the map does not list"));
      }
      if (it->second->info.role != WorkerRole::kExpert ||
          it->second->state == WorkerState::kDraining) {
        return absl::InvalidArgumentError(absl::StrCat("placement unit ", u, " names worker ", id,
                                                       ", which is not a non-draining expert"));
      }
      for (int b = 0; b < a; ++b) {
        if (unit.worker_ids(b) == id) {
          return absl::InvalidArgumentError(
              absl::StrCat("placement unit ", u, " names worker ", id, " twice"));
        }
      }
    }
    p.unit_begin.push_back(static_cast<int32_t>(unit.expert_begin()));
    next_begin = unit.expert_end();
  }
  if (next_begin != static_cast<uint64_t>(config.n_routed_experts)) {
    return absl::InvalidArgumentError(absl::StrCat("placement ends at expert ", next_begin,
                                                   "; the model has ", config.n_routed_experts,
                                                   " routed experts"));
  }
  p.unit_begin.push_back(static_cast<int32_t>(next_begin));

  // The slots, in the controller's order; the units index into them.
  std::map<std::string, int32_t> index;
  for (const std::string& id : map.expert_slots()) {
    auto it = by_id.find(id);
    if (it == by_id.end() || it->second->info.role != WorkerRole::kExpert) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert slot ", index.size(), " names ", id, ", not a listed expert worker"));
    }
    if (!index.emplace(id, static_cast<int32_t>(out.expert_workers.size())).second) {
      return absl::InvalidArgumentError(absl::StrCat("expert worker ", id, " holds two slots"));
    }
    out.expert_workers.push_back(id);
  }
  p.worker_units.resize(out.expert_workers.size());
  for (int u = 0; u < units; ++u) {
    for (const std::string& id : map.placement(u).worker_ids()) {
      auto slot = index.find(id);
      if (slot == index.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("placement unit ", u, " names worker ", id, ", which holds no slot"));
      }
      const int32_t w = slot->second;
      p.unit_workers[u].push_back(w);
      p.worker_units[w].push_back(u);  // Ascending: u grows.
    }
  }

  if (out.complete) {
    for (int u = 0; u < units; ++u) {
      const bool served = std::any_of(
          map.placement(u).worker_ids().begin(), map.placement(u).worker_ids().end(),
          [&](const std::string& id) { return by_id.at(id)->state == WorkerState::kAlive; });
      if (!served) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cluster map is marked complete but placement unit ", u, " has no alive worker"));
      }
    }
  }
  return out;
}

}  // namespace dsv2
