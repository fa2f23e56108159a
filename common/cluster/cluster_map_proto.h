// The wire form (dsv2.internal, control.proto) of the cluster map and of a
// worker's registration, both ways.
//
// The wire placement names workers by id; FromProto rebuilds the indexed
// ExpertPlacement from it and validates it against the model, so a process
// never routes on a map that does not cover the model's experts.
#pragma once

#include "absl/status/statusor.h"
#include "common/cluster/cluster_state.h"
#include "common/model/config.h"
#include "dsv2/internal/control.pb.h"

namespace dsv2 {

internal::WorkerInfo ToProto(const WorkerInfo& info);
// InvalidArgument for a role other than attention or expert. The other
// fields are checked by ClusterState::Register.
absl::StatusOr<WorkerInfo> FromProto(const internal::WorkerInfo& info);

// Units list their workers by id (dead ones included; see ClusterMap).
internal::ClusterMap ToProto(const ClusterMap& map);

// Rebuilds the map: `expert_workers` from the wire's expert_slots (the
// controller's slot order, which workers send back as their slot hint), and
// the placement's num_units, unit_begin, unit_workers and worker_units from
// the wire units.
//
// InvalidArgument, naming the unit and the problem, unless: the units are
// contiguous from expert 0 to config.n_routed_experts, each names at least
// one worker and none twice, every worker named is a listed expert worker
// (not draining), no worker is listed twice, and `complete` is true only if
// every unit has an ALIVE worker.
absl::StatusOr<ClusterMap> FromProto(const internal::ClusterMap& map, const ModelConfig& config);

}  // namespace dsv2
