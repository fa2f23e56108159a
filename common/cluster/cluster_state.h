// The controller's view of the cluster: registered workers with leases, and
// the versioned cluster map they are served from — every worker with its
// state, and the expert placement over the live expert workers.
//
// The controller keeps no state of its own: this is rebuilt from workers'
// registrations after a restart (workers re-register when a heartbeat is
// refused), and workers keep serving on the last map meanwhile. The map's
// version grows with every change, so watchers apply a map only when it is
// newer than the one they hold.
//
// Time is passed in, so leases are tested without sleeping.
// Thread safety: none; the controller service serializes calls.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/cluster/expert_placement.h"
#include "common/model/config.h"

namespace dsv2 {

enum class WorkerRole { kAttention, kExpert };
enum class WorkerState { kAlive, kDraining, kDead };

struct WorkerInfo {
  std::string id;  // Chosen by the worker (e.g. host:port); stable across restarts.
  WorkerRole role = WorkerRole::kAttention;
  std::string grpc_address;
  std::string data_address;  // Its data-plane (Transport) address.
  int64_t capacity = 0;      // KV tokens (attention) or 0.
};

struct ClusterMap {
  uint64_t version = 0;
  struct Worker {
    WorkerInfo info;
    WorkerState state = WorkerState::kAlive;
  };
  std::vector<Worker> workers;  // Sorted by id.
  // Placement over the live (not draining, not dead) expert workers, by
  // index into `expert_workers`; empty when there are too few of them.
  std::vector<std::string> expert_workers;
  ExpertPlacement placement;
  bool complete = false;  // Every expert has a live worker.
};

class ClusterState {
 public:
  using Clock = std::chrono::steady_clock;

  ClusterState(ModelConfig config, int64_t replicas, Clock::duration lease)
      : config_(std::move(config)), replicas_(replicas), lease_(lease) {}

  // Registers (or re-registers) a worker; its lease starts now. A worker
  // that registers again with other addresses replaces its old entry.
  absl::Status Register(const WorkerInfo& info, Clock::time_point now);
  // Renews a lease. NotFound for an unknown or dead worker: it must register.
  absl::Status Heartbeat(const std::string& id, Clock::time_point now);
  // Takes a worker out of the placement while it finishes its work.
  absl::Status Drain(const std::string& id);
  // Marks workers whose lease lapsed before `now` dead; true if any was.
  bool ExpireLeases(Clock::time_point now);

  const ClusterMap& map() const { return map_; }

 private:
  struct Entry {
    WorkerInfo info;
    WorkerState state = WorkerState::kAlive;
    Clock::time_point lease_end;
  };
  // Rebuilds the map from the entries and bumps its version.
  void Publish();

  ModelConfig config_;
  int64_t replicas_;
  Clock::duration lease_;
  std::map<std::string, Entry> workers_;
  ClusterMap map_;
};

}  // namespace dsv2
