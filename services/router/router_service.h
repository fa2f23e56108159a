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
// Trust. Every call is authenticated by `policy` (tokens, client
// certificates); request ids are per principal, Abort reaches only the
// caller's own requests, and the worker is told the principal
// (`dsv2-principal` metadata, which attention workers accept from routers
// only). Requests are bounded (api_limits.h) before they are forwarded.
//
// Streams. Served with the callback API: no thread per call. A worker's
// messages wait in a per-call queue; a client that leaves more than 4 MiB of
// them unread, or does not take one within `write_timeout`, is cut off (its
// call cancelled, and with it the worker's). At most `max_streams` calls are
// open at once (RESOURCE_EXHAUSTED beyond).
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/base/mutex.h"
#include "common/rpc/access.h"
#include "common/rpc/stream_watchdog.h"
#include "dsv2/internal/attention.grpc.pb.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/grpc/generation_service.h"

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
  // Who may call the public API.
  AccessPolicy policy = AccessPolicy::Open();
  // Credentials of the channels to attention workers (null: plaintext).
  std::shared_ptr<grpc::ChannelCredentials> worker_credentials;
  int64_t max_streams = 4096;
  absl::Duration write_timeout = absl::Seconds(30);
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
  // Generate calls ended, by gRPC status code name (OK, UNAVAILABLE, ...):
  // refused ones included.
  std::map<std::string, int64_t> finished;
  int64_t retries = 0;    // Generate calls sent to a second worker.
  int64_t no_worker = 0;  // Calls refused because no worker was eligible.
};

class RouterService final : public RawGenerationService {
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
  // Whether a Generate call would be forwarded now: serving, accepting, and
  // some worker eligible (it answered its last poll, serving). Follows a
  // worker's death within a poll (load_interval, or load_timeout if it
  // hangs).
  bool ready() const;

  // Generate calls being served now.
  int64_t active_streams() const;
  std::vector<RouterWorkerView> workers() const;
  RouterCounters counters() const;
  // Streams cut off because their client did not read.
  int64_t slow_readers_cut() const { return watchdog_.cancelled(); }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  // Forwarded to the worker serving the caller's request; NOT_FOUND when the
  // caller has no active call with that id.
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

 private:
  struct Worker;
  struct Poll;
  class ForwardedCall;
  template <typename Request, typename Response>
  class UnaryForward;
  // (principal, request id)
  using CallKey = std::pair<std::string, std::string>;
  // An active Generate call: the worker serving it (null before it is
  // forwarded and between attempts) and whether Abort asked to end it.
  struct ActiveCall {
    std::shared_ptr<Worker> worker;
    bool aborted = false;
  };

  // The eligible worker with the most room, not in `exclude`; null if none.
  // With `tokens` > 0 (a Generate call) it is charged to the worker.
  std::shared_ptr<Worker> ChooseLocked(const std::set<std::string>& exclude, int64_t tokens)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Records that a call forwarded to `worker` failed UNAVAILABLE.
  void MarkFailed(Worker& worker, const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mutex_);
  // A client context for a call forwarded on behalf of `context`'s caller.
  std::unique_ptr<grpc::ClientContext> ForwardContext(const grpc::CallbackServerContext& context,
                                                      const std::string& principal,
                                                      bool bounded) const;

  // Ends a Generate call that was never forwarded, counting it.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Refuse(const grpc::Status& status)
      ABSL_LOCKS_EXCLUDED(mutex_);
  void CountFinishedLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  void PollLoop();
  void OnPolled(Poll* poll, const grpc::Status& status);

  const RouterOptions options_;
  StreamWatchdog watchdog_;

  mutable Mutex mutex_;
  std::map<std::string, std::shared_ptr<Worker>> workers_ ABSL_GUARDED_BY(mutex_);  // By id.
  // By address.
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mutex_);
  std::map<CallKey, ActiveCall> calls_ ABSL_GUARDED_BY(mutex_);
  bool serving_ ABSL_GUARDED_BY(mutex_) = false;
  bool accepting_ ABSL_GUARDED_BY(mutex_) = true;
  int64_t active_streams_ ABSL_GUARDED_BY(mutex_) = 0;
  RouterCounters counters_ ABSL_GUARDED_BY(mutex_);
  bool poll_now_ ABSL_GUARDED_BY(mutex_) = false;
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  int64_t polls_in_flight_ ABSL_GUARDED_BY(mutex_) = 0;

  std::thread poller_;
};

}  // namespace dsv2
