// The controller's view of the cluster: registered workers with leases, and
// the versioned cluster map they are served from — every worker with its
// state, and the expert placement over the expert *slots*.
//
// Slots: the placement is computed over an ordered list of expert slots, one
// per expert worker that is not draining, with min(R, slots) replicas. A
// worker whose lease lapses keeps its slot, so the placement does not move:
// its units are served only by their other live replicas (with R = 1 they
// have none and the map is incomplete until it comes back). The placement
// moves only when membership really changes: a drained worker's slot is
// removed, and a new worker appends a slot — unless some slot belongs to a
// dead worker, in which case the new worker takes over the first such slot
// (and the dead entry leaves the map), serving exactly the dead one's units.
// A worker that registers again under its id keeps its slot.
//
// The controller keeps no state of its own: this is rebuilt from workers'
// registrations after a restart (workers re-register when a heartbeat is
// refused), and workers keep serving on the last map meanwhile. The map's
// version grows with every change and its epoch names the controller's
// lifetime, so watchers apply a map only when it is newer than the one they
// hold (another epoch, or a greater version).
//
// Time is passed in, so leases are tested without sleeping.
// Thread safety: none; the controller service serializes calls.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
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
  // Its data-plane sender id (the id its Transport stamps into frames),
  // chosen by the worker at random; nonzero, unique among workers not dead.
  uint32_t peer_id = 0;

  friend bool operator==(const WorkerInfo&, const WorkerInfo&) = default;
};

struct ClusterMap {
  uint64_t epoch = 0;  // The controller's start time (µs since the Unix epoch).
  uint64_t version = 0;
  struct Worker {
    WorkerInfo info;
    WorkerState state = WorkerState::kAlive;
    // ALIVE but reported hung: it serves no unit (see Suspect).
    bool suspect = false;

    friend bool operator==(const Worker&, const Worker&) = default;
  };
  std::vector<Worker> workers;  // Sorted by id.
  // The expert slots by index: the worker list the placement indexes
  // (placement.unit_workers[u] and worker_units[w] refer to it). Its workers
  // are ALIVE or DEAD (a dead one's units are served by their other
  // replicas); draining workers have no slot. Empty, with an empty
  // placement, while there is no expert worker.
  std::vector<std::string> expert_workers;
  ExpertPlacement placement;
  // There is a slot and every unit has at least one ALIVE worker that is
  // not suspect.
  bool complete = false;
  // The data plane's key of this epoch, as the controller sent it to this
  // worker (empty: none; routers never get it). Not part of ClusterState.
  std::string data_plane_key;

  // Is this map newer than (epoch, version)? A map of another epoch (a
  // restarted controller) always is.
  bool NewerThan(uint64_t known_epoch, uint64_t known_version) const {
    return epoch != known_epoch || version > known_version;
  }
  // The entry of worker `id`, or null.
  const Worker* Find(const std::string& id) const;
  // Why the map is not complete, for a NOT_SERVING report: no expert
  // worker, or the first unit without a live worker (its experts and the
  // state of each holder) and how many others lack one. Empty when it is
  // complete.
  std::string WhyIncomplete() const;
};

class ClusterState {
 public:
  using Clock = std::chrono::steady_clock;

  // `epoch` is stamped into every map (see ClusterMap::epoch).
  ClusterState(ModelConfig config, int64_t replicas, Clock::duration lease, uint64_t epoch = 0);

  // Registers (or re-registers) a worker as ALIVE; its lease starts now. A
  // worker that registers again with other addresses replaces its old entry.
  // InvalidArgument for a missing id, grpc_address, peer_id or (experts)
  // data_address; AlreadyExists when another worker that is not dead holds
  // the same peer_id. `slot_hint` (expert workers; -1: none) is the slot the
  // worker held under a previous controller: a new slot is inserted among
  // the hinted ones in hint order, so after a restart the slots — and the
  // placement — come back as they were.
  absl::Status Register(const WorkerInfo& info, Clock::time_point now, int64_t slot_hint = -1);
  // Renews a lease. NotFound for an unknown or dead worker: it must register.
  absl::Status Heartbeat(const std::string& id, Clock::time_point now);
  // Takes a worker out of the placement (its slot is removed) while it
  // finishes its work; it stays listed as DRAINING. NotFound unless it lives.
  absl::Status Drain(const std::string& id);
  // Marks an ALIVE expert worker suspect until `until`: an attention
  // worker's dispatches to it did not complete in time. Its units count as
  // served by their other replicas only. Cleared when it registers again or
  // `until` passes (ExpireLeases). NotFound for an unknown worker;
  // InvalidArgument for an attention worker; nothing for a dead one.
  absl::Status Suspect(const std::string& id, Clock::time_point until);
  // Marks workers whose lease lapsed before `now` dead and ends suspicions
  // that expired; true if anything changed.
  bool ExpireLeases(Clock::time_point now);

  const ClusterMap& map() const { return map_; }

  // Events since construction, for metrics.
  struct Counters {
    int64_t lease_expiries = 0;  // Workers marked dead because their lease lapsed.
    int64_t suspect_marks = 0;   // Workers marked suspect (a repeated report is not counted).
  };
  const Counters& counters() const { return counters_; }

 private:
  struct Entry {
    WorkerInfo info;
    WorkerState state = WorkerState::kAlive;
    Clock::time_point lease_end;
    int64_t slot_hint = -1;
    std::optional<Clock::time_point> suspect_until;  // Set while suspect.
  };
  // Gives expert worker `id` a slot: the first one of a dead worker (whose
  // entry is removed); else, with a hint, a new one before the first slot
  // of a greater (or no) hint; else a new one at the end.
  void AssignSlot(const std::string& id, int64_t slot_hint);
  void RemoveSlot(const std::string& id);
  // Rebuilds the map from the entries and slots and bumps its version.
  void Publish();

  ModelConfig config_;
  int64_t replicas_;
  Clock::duration lease_;
  std::map<std::string, Entry> workers_;
  std::vector<std::string> slots_;  // Expert worker ids by slot index.
  ClusterMap map_;
  Counters counters_;
};

}  // namespace dsv2
