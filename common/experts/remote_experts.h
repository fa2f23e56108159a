// The attention worker's side of the data plane: RoutedExperts computed by
// expert workers.
//
// Per MoE layer, the tokens' routing is regrouped into (token, granule) rows
// (common/model/routed_experts.h); each row goes to one live worker holding
// its granule's placement unit, one dispatch per worker, activations in the
// dispatch dtype. While the dispatches are away the caller's `meanwhile`
// runs (the shared experts). The combine replies' partial sums are added per
// token in granule order — the same numbers LocalRoutedExperts computes,
// given the same rounding of activations and partials to the wire dtypes.
//
// Replicas: a unit on several live workers is sent to one of them, turn by
// turn. A worker whose call fails — unreachable, overloaded, an error frame
// or a malformed reply (a remote problem is never this process's fatal
// error) — is avoided (until the next route or `suspect_time`) and its rows
// are sent again to another replica within the same call; when a unit has
// no worker left, Compute fails UNAVAILABLE naming the unit and the last
// failure — the engine then ends that step's requests.
//
// Slow and hung workers: each attempt has its own deadline,
// `attempt_timeout` or, when that is zero, `attempt_factor` times the
// slowest of the last 64 answers (at least `min_attempt_timeout`). An
// attempt past it is overdue: its rows are sent to another replica where
// one is left (any worker of the unit not failed and not itself overdue in
// this call), and whichever answers first is taken — replicas compute the
// same bits. The overdue attempt is still awaited, so a worker that was
// only slow (a busy machine) costs nothing, and when every replica of a
// unit is overdue the first to answer serves. A worker still silent when
// the call completes is suspect: `on_suspect` reports it (to the
// controller, which takes it out of everybody's routes). Rows with no
// replica to go to wait for their worker up to `timeout`; the call then
// fails UNAVAILABLE naming it; a failure of this process's own (a
// shutdown) is CANCELLED.
//
// Thread safety: Compute may run concurrently (micro-batches); SetRoute may
// be called at any time (calls in flight keep the route they started with).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "common/base/bucket_counts.h"
#include "common/base/mutex.h"
#include "common/cluster/cluster_state.h"
#include "common/experts/expert_load.h"
#include "common/model/routed_experts.h"
#include "common/tensor/dtype.h"
#include "common/transport/transport.h"

namespace dsv2 {

// Where a cluster map places the routed experts: per placement unit, the
// data addresses of the workers holding it and whether each is alive.
struct ExpertRoute {
  ExpertPlacement placement;
  std::vector<std::string> ids;        // By placement worker index.
  std::vector<std::string> addresses;  // By placement worker index.
  std::vector<bool> alive;             // ALIVE and not suspect, by placement worker index.
};

// The route of `map`; nullptr when it has no placement.
std::shared_ptr<const ExpertRoute> RouteFromMap(const ClusterMap& map);

struct RemoteExpertsOptions {
  // Activations on the wire; the reply uses the same. F32 is exact (the
  // numbers of LocalRoutedExperts); BF16 halves the bytes and rounds.
  DType dispatch_dtype = DType::kF32;
  // The longest a MoE layer waits for a worker with no replica to go to.
  absl::Duration timeout = absl::Seconds(5);
  // Per attempt (see above); zero: adaptive.
  absl::Duration attempt_timeout = absl::ZeroDuration();
  absl::Duration min_attempt_timeout = absl::Milliseconds(50);
  double attempt_factor = 4;
  // How long a failed or hung worker is avoided here (the controller's map
  // may take it out for longer).
  absl::Duration suspect_time = absl::Seconds(2);
  // Told of a worker that did not answer in time: its id and why. Runs on
  // the computing thread; must return quickly.
  std::function<void(const std::string& worker_id, const std::string& reason)> on_suspect;
};

// Bucket bounds of RemoteRoutedExperts::Stats: distinct workers (1, 2, ...,
// 8, then coarser) and seconds (100 µs to 5 s).
const std::vector<double>& WorkersPerTokenBounds();
const std::vector<double>& DataPlaneSecondsBounds();

class RemoteRoutedExperts final : public RoutedExperts {
 public:
  // The traffic with one expert worker.
  struct PeerStats {
    transport::PeerTraffic traffic;  // Dispatches sent, combine replies received.
    BucketCounts round_trip{DataPlaneSecondsBounds()};  // Seconds, answered dispatches.
  };

  struct Stats {
    int64_t calls = 0;                 // Compute calls.
    int64_t tokens = 0;                // Tokens routed.
    int64_t token_workers = 0;         // Σ over tokens of distinct workers reached.
    int64_t max_workers_per_token = 0;
    // Distinct workers each routed token reached (count = tokens, sum =
    // token_workers).
    BucketCounts workers_per_token{WorkersPerTokenBounds()};
    // Per Compute call: seconds spent waiting for expert workers after
    // `meanwhile` (the work overlapped with the dispatches) returned.
    BucketCounts wait{DataPlaneSecondsBounds()};
    int64_t dispatches = 0;            // Messages sent (including resends).
    int64_t resends = 0;               // Rows sent again to another replica.
    int64_t failures = 0;              // Compute calls that failed.
    int64_t attempt_timeouts = 0;      // Attempts past their deadline (hung or slow workers).
    std::map<std::string, PeerStats> peers;  // By expert worker id.
  };

  // `transport` must outlive this object.
  RemoteRoutedExperts(const ModelConfig& config, transport::Transport& transport,
                      RemoteExpertsOptions options);

  void SetRoute(std::shared_ptr<const ExpertRoute> route) ABSL_LOCKS_EXCLUDED(mutex_);

  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* weights, float* out,
                       absl::FunctionRef<void()> meanwhile) override;

  Stats stats() const ABSL_LOCKS_EXCLUDED(mutex_);
  // Tokens routed to each expert per layer (what Compute was given).
  const ExpertLoad& load() const { return load_; }

 private:
  // A worker of `unit` alive in `route` and in the latest map, not suspect
  // and not in `avoid` (by placement worker index), turn by turn; -1 when
  // none.
  int32_t PickWorker(const ExpertRoute& route, int32_t unit, uint64_t turn,
                     const std::vector<bool>& avoid) ABSL_LOCKS_EXCLUDED(mutex_);
  void Suspect(const std::string& address) ABSL_LOCKS_EXCLUDED(mutex_);
  // How long one attempt may take from now.
  absl::Duration AttemptTimeout() ABSL_LOCKS_EXCLUDED(mutex_);
  void RecordAnswer(absl::Duration round_trip) ABSL_LOCKS_EXCLUDED(mutex_);

  const int64_t hidden_;
  const int64_t granule_size_;
  transport::Transport& transport_;
  const RemoteExpertsOptions options_;
  // Never held while a dispatch is sent or awaited, nor around on_suspect.
  mutable Mutex mutex_;
  std::shared_ptr<const ExpertRoute> route_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, absl::Time> suspect_until_ ABSL_GUARDED_BY(mutex_);
  uint64_t turn_ ABSL_GUARDED_BY(mutex_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mutex_);
  ExpertLoad load_;
  // The last answers' round trips (a ring), for the adaptive attempt
  // deadline.
  std::array<absl::Duration, 64> round_trips_ ABSL_GUARDED_BY(mutex_) = {};
  size_t round_trip_count_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace dsv2
