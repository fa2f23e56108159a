// The NCCL data plane: frames between GPUs of one NCCL communicator with
// ncclSend/ncclRecv. Built only with DSV2_ENABLE_CUDA.
//
// NCCL point-to-point operations must be posted by both sides in matching
// order, and a receive cannot be posted for a message nobody announced. So
// the transport runs in rounds, on one progress thread per rank, all ranks
// in lockstep (as DeepEP exchanges counts before data):
//
//   1. headers   every rank sends every rank (itself included) a block of
//                max_messages_per_round 64-byte slots: the headers of the
//                frames it has queued for that rank (empty slots are zero);
//   2. payloads  each rank posts, in slot order, ncclSend of each payload it
//                announced and ncclRecv of each payload announced to it;
//   3. delivery  requests go to the handler, replies to their calls.
//
// Payloads are staged through device memory (host MessageBuffer -> device
// -> NCCL -> device -> host MessageBuffer), because the rest of the data
// plane hands the transport host buffers today; with GPU expert kernels the
// payload would be produced in device memory and the copies vanish. Idle
// ranks still exchange empty header blocks, slowed by idle_backoff.
//
// Address: "nccl://TAG/RANK", TAG naming the communicator (from its unique
// id), so ranks of other communicators are refused. Call to one's own
// address works (NCCL sends to self), which is how a one-GPU machine tests it.
//
// Failure: NCCL communicators do not survive a member's death. Each round
// must finish within round_timeout; if it does not (a rank died or hung),
// the communicator is aborted, every call in flight fails UNAVAILABLE, and
// so does every later call: the worker must build a new communicator with
// the new cluster map. This is the honest limit of NCCL as a data plane;
// UcxTransport is the one that tolerates peer failure.
//
// Thread safety: as Transport.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/transport/core_transport.h"
#include "common/transport/transport.h"

namespace dsv2::transport {

namespace internal {
class NcclCore;
}  // namespace internal

struct NcclTransportOptions {
  PeerId id = 0;
  int rank = 0;
  int nranks = 1;
  // From NcclTransport::NewUniqueId() on one rank, shared with all (hex).
  std::string unique_id;
  int device = 0;                  // CUDA device of this rank.
  int max_messages_per_round = 8;  // Per peer.
  int handler_threads = 1;
  size_t max_queued_requests = 4096;
  size_t max_calls_in_flight = 4096;
  absl::Duration round_timeout = absl::Seconds(10);
  absl::Duration idle_backoff = absl::Microseconds(50);
};

class NcclTransport final : public internal::CoreTransport<internal::NcclCore> {
 public:
  // A new communicator id (ncclGetUniqueId), hex-encoded for the cluster map.
  static absl::StatusOr<std::string> NewUniqueId();
  // Joins the communicator; blocks until all nranks have joined or
  // round_timeout passes.
  static absl::StatusOr<std::unique_ptr<NcclTransport>> Create(NcclTransportOptions options);

 private:
  explicit NcclTransport(std::shared_ptr<internal::NcclCore> core) : CoreTransport(std::move(core)) {}
};

}  // namespace dsv2::transport
