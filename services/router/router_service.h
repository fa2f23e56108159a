// dsv2.v1.Generation for the whole cluster: the router serves the public API
// unchanged and forwards each call to one attention worker, which serves the
// same API itself (and dsv2.internal.AttentionWorker for its load).
//
// Choice of worker. A poller asks every worker for its load (GetLoad) every
// `load_interval` (and at once when it joins). A worker is eligible while
// its last poll succeeded and said `serving` and, if a call forwarded there
// failed UNAVAILABLE, a poll sent after that failure has succeeded. Among
// eligible workers a new Generate call goes to the one with the most room:
//
//   room = kv_blocks_free + kv_blocks_cached - pending_blocks
//
// where cached blocks count as free (the engine reclaims them on demand) and
// pending_blocks is the router's own estimate for the requests it sent there
// after the last answered poll was sent, which that poll could not see:
// ceil((prompt tokens + max_tokens) / block_size) each (at most the whole
// cache), the prompt counted from token_ids, or as bytes / 4 for text and
// chat. Ties go to fewer running + waiting requests (plus those sent since
// that poll), then to the smaller worker id. Tokenize and GetModelInfo go
// to the same choice but charge nothing.
//
// Failures. Deadline and cancellation reach the worker through gRPC's call
// propagation (the forwarded call is a child of the incoming one), so a
// client that goes away makes the worker abort the request and free its
// blocks. A forwarded call that fails UNAVAILABLE (the worker died, is
// unreachable or refuses work) before any response reached the client is
// tried once more on another worker (a worker's Error message, always the
// last of a stream, is held back until the call's status is known); after a
// response was streamed the call ends with an Error message and UNAVAILABLE
// "attention worker X failed mid-stream". Every other status, and a
// worker's own Error message, passes through unchanged. A worker that failed
// UNAVAILABLE is not chosen until it answers a poll sent after the failure.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "dsv2/internal/attention.grpc.pb.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace dsv2 {

// A live attention worker from the cluster map.
struct AttentionEndpoint {
  std::string id;
  std::string grpc_address;
};

struct RouterOptions {
  // How often each worker's load is asked for.
  std::chrono::milliseconds load_interval{50};
  // Deadline of one GetLoad call: a worker slower than this is not chosen.
  std::chrono::milliseconds load_timeout{500};
  // Deadline of a forwarded Abort, Tokenize or GetModelInfo call when the
  // incoming call has none (or a later one).
  std::chrono::milliseconds unary_timeout{10'000};
};

// What the router knows of one worker (for tests, logs and metrics).
struct RouterWorkerView {
  AttentionEndpoint endpoint;
  bool load_known = false;       // The last poll succeeded.
  internal::Load load;           // From the last successful poll.
  bool failed = false;           // A forwarded call failed UNAVAILABLE since.
  bool eligible = false;         // Would be chosen from now.
  int64_t pending_blocks = 0;    // Charged since the last poll.
  int64_t pending_requests = 0;  // Sent since the last poll.
  int64_t active = 0;            // Generate calls forwarded there, not ended.
  int64_t polls = 0;             // Successful polls.
};

struct RouterCounters {
  // Generate calls forwarded, by worker id (a retry counts on both).
  std::map<std::string, int64_t> forwarded;
  // Forwarded calls (of any method) that failed UNAVAILABLE, by worker id.
  std::map<std::string, int64_t> failures;
  int64_t retries = 0;    // Generate calls sent to a second worker.
  int64_t no_worker = 0;  // Calls refused because no worker was eligible.
};

class RouterService final : public v1::Generation::Service {
 public:
  explicit RouterService(RouterOptions options = {});
  // Stops the poller and waits for the polls in flight (at most
  // load_timeout). The gRPC server must be shut down first.
  ~RouterService() override;
  RouterService(const RouterService&) = delete;
  RouterService& operator=(const RouterService&) = delete;

  // The live attention workers, from each cluster map. A worker keeps its
  // state while its id and address stay; new workers are polled at once.
  // Channels are shared per address and dropped with the last worker there;
  // calls in flight on a removed worker carry on.
  void SetWorkers(std::vector<AttentionEndpoint> workers);
  // Cluster-level readiness (the map is complete). While false, Generate is
  // UNAVAILABLE "cluster not ready: ...". Initially false.
  void SetServing(bool serving);
  // Refuses new Generate calls (UNAVAILABLE) for good: the router drains.
  void StopAccepting();

  // Generate calls being served now.
  int64_t active_streams() const;
  std::vector<RouterWorkerView> workers() const;
  RouterCounters counters() const;

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  // Forwarded to the worker serving the request; NOT_FOUND when the router
  // has no active call with that id.
  grpc::Status Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                     v1::AbortResponse* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

 private:
  struct Worker;
  struct Poll;

  // The eligible worker with the most room, not in `exclude`; null if none.
  // With `tokens` > 0 (a Generate call) it is charged to the worker.
  std::shared_ptr<Worker> ChooseLocked(const std::set<std::string>& exclude, int64_t tokens);
  // Records that a call forwarded to `worker` failed UNAVAILABLE.
  void MarkFailed(Worker& worker, const grpc::Status& status);
  // One forwarded attempt of a Generate call.
  struct Attempt {
    grpc::Status status;
    bool wrote = false;      // A response reached the client,
    bool completed = false;  // the last of them a Complete.
    // The worker's Error message, not yet written.
    std::optional<v1::GenerateResponse> error;
  };
  Attempt Stream(grpc::ServerContext* context, const v1::GenerateRequest& request,
                 grpc::ServerWriter<v1::GenerateResponse>* writer, Worker& worker);
  // A unary call on a chosen worker, once more on another after UNAVAILABLE.
  template <typename Call>
  grpc::Status ForwardUnary(grpc::ServerContext* context, const char* method, Call call);
  std::unique_ptr<grpc::ClientContext> ForwardContext(grpc::ServerContext* context,
                                                      bool bounded) const;

  void PollLoop();
  void OnPolled(Poll* poll, const grpc::Status& status);

  const RouterOptions options_;

  // Guards everything below.
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Worker>> workers_;          // By id.
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;  // By address.
  // An active Generate call: the worker serving it (null before it is
  // forwarded and between attempts) and whether Abort asked to end it.
  struct ActiveCall {
    std::shared_ptr<Worker> worker;
    bool aborted = false;
  };
  std::map<std::string, ActiveCall> calls_;  // By request id; guarded by mutex_.
  bool serving_ = false;
  bool accepting_ = true;
  int64_t active_streams_ = 0;
  RouterCounters counters_;
  bool poll_now_ = false;
  bool stop_ = false;
  int64_t polls_in_flight_ = 0;
  std::condition_variable poll_cv_;  // poll_now_, stop_ or polls_in_flight_ changed.

  std::thread poller_;
};

}  // namespace dsv2
