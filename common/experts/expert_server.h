// The expert worker's side of the data plane: serves the routed experts of a
// model to attention workers over a Transport.
//
// Every dispatch holds rows of one MoE layer (a token's experts within one
// combine granule; see common/model/routed_experts.h). Requests that arrive
// within `batch_window` of each other are computed together: rows of the
// same layer from every attention worker are batched per expert, each
// expert's SwiGLU runs once over all its rows, and each request is answered
// with its rows' weighted partial sums, in the request's dtype. A row's
// numbers do not depend on what it was batched with.
//
// A malformed dispatch (wrong hidden size, a layer without routed experts,
// an expert id out of range, a non-finite weight) is answered with an
// INVALID_ARGUMENT error frame and counted; nothing else is affected.
//
// Any expert of the model can be served (the weights are memory-mapped);
// the worker reads its placed experts into memory ahead of time, others on
// first use (while the placement moves).
//
// Thread safety: the handler runs on transport threads and hands requests
// to one compute thread; stats() may be called from any thread.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <thread>

#include "absl/time/time.h"
#include "common/model/deepseek_v2.h"
#include "common/transport/transport.h"

namespace dsv2 {

struct ExpertServerOptions {
  // After the first request of a batch arrives, wait this long for more.
  absl::Duration batch_window = absl::ZeroDuration();
  // Payload bytes of requests waiting for the compute thread, at most; a
  // request beyond is answered RESOURCE_EXHAUSTED (its caller then turns to
  // a replica).
  size_t max_queued_bytes = size_t{256} << 20;
};

class ExpertServer {
 public:
  struct Stats {
    int64_t requests = 0;          // Dispatches computed and answered.
    int64_t rows = 0;              // (token, granule) rows computed.
    int64_t batches = 0;           // Compute rounds.
    int64_t invalid_requests = 0;  // Answered INVALID_ARGUMENT.
    int64_t overloaded = 0;        // Answered RESOURCE_EXHAUSTED: the queue was full.
    int64_t queued = 0;            // Waiting for the compute thread now.
    // Dispatches received (refused ones included) and replies sent, by the
    // sender's data-plane peer id.
    std::map<transport::PeerId, transport::PeerTraffic> peers;
  };

  // Installs the request handler on `transport`. `model` must outlive the
  // server; the transport must be shut down before the server is destroyed
  // or live on (late requests are then answered UNAVAILABLE).
  ExpertServer(const DeepseekV2Model& model, transport::Transport& transport,
               ExpertServerOptions options);
  ~ExpertServer();  // Answers what is queued UNAVAILABLE and stops.
  ExpertServer(const ExpertServer&) = delete;
  ExpertServer& operator=(const ExpertServer&) = delete;

  Stats stats() const;

 private:
  struct Queue;
  void Loop();
  void ComputeBatch(std::deque<transport::IncomingRequest>& batch);

  const DeepseekV2Model& model_;
  const ExpertServerOptions options_;
  std::shared_ptr<Queue> queue_;
  std::thread thread_;
};

}  // namespace dsv2
