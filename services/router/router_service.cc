#include "services/router/router_service.h"

#include <algorithm>
#include <deque>
#include <functional>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/mutex.h"
#include "common/rpc/grpc_options.h"
#include "common/rpc/status.h"
#include "common/rpc/raw_messages.h"
#include "server/api/api_limits.h"

namespace dsv2 {
namespace {

// Prompt tokens per byte of text or chat are unknown before tokenization;
// byte-level BPE averages about this many bytes per token on prose.
constexpr int64_t kBytesPerToken = 4;
constexpr int64_t kDefaultMaxTokens = 16;  // As the public API documents.
// Bytes of a worker's output a client may leave unread before it is cut off.
constexpr size_t kMaxQueuedBytes = 4 << 20;

// Prompt + output tokens a request may take: the basis of its KV charge.
int64_t EstimatedTokens(const v1::GenerateRequest& request) {
  int64_t prompt = 0;
  switch (request.input_case()) {
    case v1::GenerateRequest::kTokenIds:
      prompt = request.token_ids().ids_size();
      break;
    case v1::GenerateRequest::kText:
      prompt = static_cast<int64_t>(request.text().size()) / kBytesPerToken;
      break;
    case v1::GenerateRequest::kChat:
      for (const v1::ChatMessage& m : request.chat().messages()) {
        prompt += static_cast<int64_t>(m.content().size());
      }
      prompt /= kBytesPerToken;
      break;
    case v1::GenerateRequest::INPUT_NOT_SET:
      break;
  }
  const int64_t output =
      request.stopping().has_max_tokens() ? request.stopping().max_tokens() : kDefaultMaxTokens;
  return std::max<int64_t>(1, prompt + output);
}

grpc::Status Unavailable(std::string message) {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::move(message));
}

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

struct RouterService::Worker {
  Worker(AttentionEndpoint endpoint, std::shared_ptr<grpc::Channel> channel)
      : endpoint(std::move(endpoint)),
        channel(std::move(channel)),
        generation(v1::Generation::NewStub(this->channel)),
        attention(internal::AttentionWorker::NewStub(this->channel)) {}

  bool Eligible() const { return load_known && load.serving() && !failed; }

  // Immutable, so used without the router's mutex.
  const AttentionEndpoint endpoint;
  const std::shared_ptr<grpc::Channel> channel;
  const std::unique_ptr<v1::Generation::Stub> generation;
  const std::unique_ptr<internal::AttentionWorker::Stub> attention;

  // Read and written only with the router's mutex_ held (clang's analysis
  // cannot name another object's mutex here).
  bool load_known = false;
  internal::Load load;
  bool failed = false;
  int64_t polls_started = 0;
  // polls_started when a call last failed: only a poll sent after that
  // (a higher sequence) shows the worker answers again.
  int64_t failed_after = 0;
  bool poll_in_flight = false;
  int64_t pending_blocks = 0;
  int64_t pending_requests = 0;
  int64_t active = 0;
  int64_t polls = 0;
};

struct RouterService::Poll {
  std::shared_ptr<Worker> worker;
  int64_t sequence = 0;
  // The worker's charges when the poll was sent: those requests were sent
  // before it, so its answer accounts for them.
  int64_t pending_blocks = 0;
  int64_t pending_requests = 0;
  grpc::ClientContext context;
  internal::GetLoadRequest request;
  internal::Load response;
};

// ---------------------------------------------------------------------------
// Generate: one client call, forwarded to a worker (twice at most).
//
// The server side writes the worker's messages to the client one at a time
// from a queue; the client side (an Attempt) reads the worker's stream.
// Every event runs Advance, which decides under the lock what to do next
// (write, finish, cancel the attempt) and does it without the lock. The call
// lives until gRPC's OnDone (self_) and while an attempt holds it.

class RouterService::ForwardedCall final
    : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
      public std::enable_shared_from_this<ForwardedCall> {
 public:
  ForwardedCall(RouterService* router, grpc::CallbackServerContext* context, CallKey key,
                v1::GenerateRequest request)
      : router_(router),
        context_(context),
        key_(std::move(key)),
        request_(std::move(request)),
        tokens_(EstimatedTokens(request_)),
        guard_(router->watchdog_.NewGuard(context)) {}

  void Start() {
    self_ = shared_from_this();
    {
      MutexLock lock(&mutex_);
      starting_ = true;
    }
    StartAttempt();
  }

  void OnWriteDone(bool ok) override {
    router_->watchdog_.Disarm(guard_);
    {
      MutexLock lock(&mutex_);
      writing_ = false;
      if (!ok) client_failed_ = true;
    }
    Advance();
  }

  void OnCancel() override {
    {
      MutexLock lock(&mutex_);
      client_failed_ = true;
    }
    Advance();
  }

  void OnDone() override {
    router_->watchdog_.Forget(guard_);
    {
      MutexLock lock(&router_->mutex_);
      --router_->active_streams_;
    }
    self_.reset();  // May destroy this; nothing may follow.
  }

 private:
  class Attempt;

  // Chooses a worker and forwards the request, or ends the call.
  void StartAttempt();

  // A message from the worker; false to stop reading (the call is over).
  bool OnWorkerMessage(v1::GenerateResponse response) {
    {
      MutexLock lock(&mutex_);
      if (client_failed_ || finished_) return false;
      if (response.has_error()) {
        // The last message: held until the status says whether the call is
        // tried again elsewhere.
        held_error_ = std::move(response);
        return true;
      }
      wrote_ = true;
      completed_ = response.has_complete();
      grpc::ByteBuffer buffer = SerializeMessage(response);
      queued_bytes_ += buffer.Length();
      queue_.push_back(std::move(buffer));
      if (queued_bytes_ > kMaxQueuedBytes) too_slow_ = true;
    }
    Advance();
    return true;
  }

  void OnAttemptDone(const std::shared_ptr<Worker>& worker, const grpc::Status& status) {
    {
      MutexLock lock(&router_->mutex_);
      --worker->active;
      // Between attempts the request is on no worker (Abort is remembered).
      if (auto it = router_->calls_.find(key_); it != router_->calls_.end()) {
        it->second.worker = nullptr;
      }
    }
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) router_->MarkFailed(*worker, status);
    bool retry = false;
    {
      MutexLock lock(&mutex_);
      attempt_context_.reset();
      if (client_failed_ || finished_ || final_) {
        // The client is gone (or cut off): nothing more to say.
      } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE && !wrote_) {
        // Nothing reached the client, so another worker can serve the
        // request from the start.
        failure_ = Unavailable(absl::StrCat("attention worker ", worker->endpoint.id,
                                            " is unavailable: ", status.error_message()));
        held_error_.reset();
        if (round_++ == 0) {
          DSV2_LOG(WARNING) << "request " << key_.second << ": " << failure_.error_message()
                            << "; trying another worker";
        }
        retry = round_ < 2;
        if (retry) {
          starting_ = true;
        } else {
          final_ = failure_;
        }
      } else if (held_error_) {
        // The worker's own account of the failure: passed on as it is.
        queue_.push_back(SerializeMessage(*held_error_));
        final_ = status;
      } else if (status.error_code() != grpc::StatusCode::UNAVAILABLE || completed_) {
        final_ = status.error_code() == grpc::StatusCode::UNAVAILABLE ? grpc::Status::OK : status;
      } else {
        // The worker went away after part of the output reached the
        // client; trying again elsewhere would repeat it.
        const std::string message = absl::StrCat("attention worker ", worker->endpoint.id,
                                                 " failed mid-stream: ", status.error_message());
        v1::GenerateResponse error;
        error.mutable_error()->set_code(grpc::StatusCode::UNAVAILABLE);
        error.mutable_error()->set_message(message);
        queue_.push_back(SerializeMessage(error));
        final_ = Unavailable(message);
      }
    }
    if (retry) {
      StartAttempt();
    } else {
      Advance();
    }
  }

  // Decides the next step under the lock and takes it without.
  void Advance() {
    std::shared_ptr<ForwardedCall> keep = shared_from_this();
    std::shared_ptr<grpc::ClientContext> cancel;
    std::optional<grpc::Status> finish;
    bool write = false;
    bool cut_off = false;
    {
      MutexLock lock(&mutex_);
      if (finished_) return;
      if (too_slow_ && !client_failed_) {
        // Its writes do not keep up: the client is not reading. Its pending
        // write fails once the call is cancelled.
        client_failed_ = true;
        cut_off = true;
      }
      if (client_failed_) {
        cancel = std::move(attempt_context_);
        // Finish once no write is in flight and no attempt is starting (it
        // reads the server context, which Finish lets go).
        if (!writing_ && !starting_) {
          finished_ = true;
          finish = grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
        }
      } else if (!writing_ && !queue_.empty()) {
        writing_ = true;
        buffer_ = std::move(queue_.front());
        queued_bytes_ -= buffer_.Length();
        queue_.pop_front();
        write = true;
      } else if (!writing_ && final_ && !starting_) {
        finished_ = true;
        finish = *final_;
      }
    }
    if (cancel) cancel->TryCancel();
    if (cut_off) {
      DSV2_LOG(WARNING) << "request " << key_.second << ": more than " << kMaxQueuedBytes
                        << " bytes of output wait for a client that does not read; cut off";
      router_->watchdog_.CancelNow(guard_);
    }
    if (write) {
      router_->watchdog_.Arm(guard_);
      StartWrite(&buffer_);
    }
    if (finish) {
      // The id is free (and Abort finds nothing) before the client sees the end.
      {
        MutexLock lock(&router_->mutex_);
        router_->calls_.erase(key_);
        router_->CountFinishedLocked(*finish);
      }
      Finish(*finish);
    }
  }

  RouterService* const router_;
  grpc::CallbackServerContext* const context_;
  const CallKey key_;
  const v1::GenerateRequest request_;
  const int64_t tokens_;
  const std::shared_ptr<StreamWatchdog::Guard> guard_;
  std::shared_ptr<ForwardedCall> self_;  // gRPC's reference, until OnDone.
  // Only StartAttempt and OnAttemptDone touch these, one at a time.
  int round_ = 0;
  std::set<std::string> tried_;
  grpc::Status failure_;

  Mutex mutex_;
  std::deque<grpc::ByteBuffer> queue_ ABSL_GUARDED_BY(mutex_);  // To write to the client.
  size_t queued_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  grpc::ByteBuffer buffer_;  // Being written (writing_).
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool starting_ ABSL_GUARDED_BY(mutex_) = false;  // StartAttempt runs.
  std::shared_ptr<grpc::ClientContext> attempt_context_ ABSL_GUARDED_BY(mutex_);
  bool wrote_ ABSL_GUARDED_BY(mutex_) = false;      // A worker message was queued.
  bool completed_ ABSL_GUARDED_BY(mutex_) = false;  // The last of them a Complete.
  std::optional<v1::GenerateResponse> held_error_ ABSL_GUARDED_BY(mutex_);
  std::optional<grpc::Status> final_ ABSL_GUARDED_BY(mutex_);  // Finish with it when written.
  bool client_failed_ ABSL_GUARDED_BY(mutex_) = false;  // Cancelled, gone or cut off.
  bool too_slow_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
};

// The worker's side of one attempt: reads its stream into the call.
class RouterService::ForwardedCall::Attempt final
    : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  Attempt(std::shared_ptr<ForwardedCall> call, std::shared_ptr<Worker> worker,
          std::shared_ptr<grpc::ClientContext> context)
      : call_(std::move(call)), worker_(std::move(worker)), context_(std::move(context)) {}

  void Start(const v1::GenerateRequest& request) {
    worker_->generation->async()->Generate(context_.get(), &request, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (ok && call_->OnWorkerMessage(std::move(response_))) {
      response_.Clear();
      StartRead(&response_);
    } else if (ok) {
      context_->TryCancel();  // The call is over: end the worker's stream.
    }
  }

  void OnDone(const grpc::Status& status) override {
    call_->OnAttemptDone(worker_, status);
    delete this;
  }

 private:
  const std::shared_ptr<ForwardedCall> call_;
  const std::shared_ptr<Worker> worker_;
  const std::shared_ptr<grpc::ClientContext> context_;
  v1::GenerateResponse response_;
};

void RouterService::ForwardedCall::StartAttempt() {
  std::shared_ptr<Worker> worker;
  std::optional<grpc::Status> end;
  bool aborted = false;
  {
    MutexLock lock(&router_->mutex_);
    const auto entry = router_->calls_.find(key_);
    if (entry != router_->calls_.end() && entry->second.aborted) {
      aborted = true;  // Before it reached a worker, or between attempts.
    } else {
      worker = router_->ChooseLocked(tried_, tokens_);
      if (worker == nullptr) {
        if (round_ == 0) {
          ++router_->counters_.no_worker;
          end = Unavailable(absl::StrCat("no attention worker is serving (",
                                         router_->workers_.size(), " known)"));
        } else {
          end = failure_;
        }
      } else {
        if (round_ > 0) ++router_->counters_.retries;
        ++router_->counters_.forwarded[worker->endpoint.id];
        ++worker->active;
        if (entry != router_->calls_.end()) entry->second.worker = worker;
      }
    }
  }
  if (worker == nullptr) {
    {
      MutexLock lock(&mutex_);
      starting_ = false;
      if (aborted) {
        v1::GenerateResponse response;
        response.mutable_complete()->set_finish_reason(v1::FINISH_REASON_ABORT);
        queue_.push_back(SerializeMessage(response));
        final_ = grpc::Status::OK;
      } else {
        final_ = *end;
      }
    }
    Advance();
    return;
  }
  tried_.insert(worker->endpoint.id);
  std::shared_ptr<grpc::ClientContext> forward =
      router_->ForwardContext(*context_, key_.first, /*bounded=*/false);
  auto* attempt = new Attempt(shared_from_this(), worker, forward);
  {
    MutexLock lock(&mutex_);
    attempt_context_ = forward;
    starting_ = false;
  }
  attempt->Start(request_);
  Advance();  // The client may have gone while the attempt started.
}

// ---------------------------------------------------------------------------
// Unary calls: forwarded to a chosen worker, once more to another after
// UNAVAILABLE.

template <typename Request, typename Response>
class RouterService::UnaryForward {
 public:
  using Method = std::function<void(Worker&, grpc::ClientContext*, const Request*, Response*,
                                    std::function<void(grpc::Status)>)>;

  UnaryForward(RouterService* router, grpc::CallbackServerContext* context, std::string principal,
               const char* name, Request request, grpc::ByteBuffer* out, Method method)
      : router_(router),
        context_(context),
        principal_(std::move(principal)),
        name_(name),
        request_(std::move(request)),
        out_(out),
        method_(std::move(method)),
        reactor_(context->DefaultReactor()) {}

  // Runs the call; the object deletes itself when it is answered.
  grpc::ServerUnaryReactor* Start() {
    grpc::ServerUnaryReactor* reactor = reactor_;
    Try();
    return reactor;
  }

 private:
  void Try() {
    std::shared_ptr<Worker> worker;
    {
      MutexLock lock(&router_->mutex_);
      worker = router_->ChooseLocked(tried_, /*tokens=*/0);
      if (worker == nullptr && tried_.empty()) ++router_->counters_.no_worker;
    }
    if (worker == nullptr) {
      End(tried_.empty() ? Unavailable(absl::StrCat("no attention worker is serving"))
                         : failure_);
      return;
    }
    tried_.insert(worker->endpoint.id);
    forward_ = router_->ForwardContext(*context_, principal_, /*bounded=*/true);
    response_.Clear();
    method_(*worker, forward_.get(), &request_, &response_, [this, worker](grpc::Status status) {
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE && tried_.size() < 2) {
        router_->MarkFailed(*worker, status);
        failure_ = Unavailable(absl::StrCat(name_, " on attention worker ", worker->endpoint.id,
                                            " failed: ", status.error_message()));
        Try();
        return;
      }
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        router_->MarkFailed(*worker, status);
        status = Unavailable(absl::StrCat(name_, " on attention worker ", worker->endpoint.id,
                                          " failed: ", status.error_message()));
      }
      End(status);
    });
  }

  void End(const grpc::Status& status) {
    if (status.ok()) *out_ = SerializeMessage(response_);
    reactor_->Finish(status);
    delete this;
  }

  RouterService* const router_;
  grpc::CallbackServerContext* const context_;
  const std::string principal_;
  const char* const name_;
  const Request request_;
  grpc::ByteBuffer* const out_;
  const Method method_;
  grpc::ServerUnaryReactor* const reactor_;
  std::set<std::string> tried_;
  grpc::Status failure_;
  std::unique_ptr<grpc::ClientContext> forward_;
  Response response_;
};

// ---------------------------------------------------------------------------

RouterService::RouterService(RouterOptions options)
    : options_(std::move(options)), watchdog_(options_.write_timeout) {
  poller_ = std::thread([this] { PollLoop(); });
}

RouterService::~RouterService() {
  {
    MutexLock lock(&mutex_);
    stop_ = true;
  }
  poller_.join();
  // Callbacks of polls in flight touch this object; each ends within its
  // deadline.
  MutexLock lock(&mutex_);
  mutex_.Await(absl::Condition(
      +[](int64_t* in_flight) { return *in_flight == 0; }, &polls_in_flight_));
}

void RouterService::SetWorkers(std::vector<AttentionEndpoint> endpoints) {
  MutexLock lock(&mutex_);
  std::map<std::string, std::shared_ptr<Worker>> workers;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels;
  for (AttentionEndpoint& endpoint : endpoints) {
    if (workers.contains(endpoint.id)) {
      DSV2_LOG(WARNING) << "attention worker " << endpoint.id << " listed twice; using the first";
      continue;
    }
    const auto old = workers_.find(endpoint.id);
    if (old != workers_.end() && old->second->endpoint.grpc_address == endpoint.grpc_address) {
      workers.emplace(endpoint.id, old->second);
      channels.emplace(endpoint.grpc_address, old->second->channel);
      continue;
    }
    std::shared_ptr<grpc::Channel>& channel = channels[endpoint.grpc_address];
    if (channel == nullptr) {
      const auto cached = channels_.find(endpoint.grpc_address);
      channel = cached != channels_.end()
                    ? cached->second
                    : NewClusterChannel(endpoint.grpc_address,
                                        options_.worker_credentials != nullptr
                                            ? options_.worker_credentials
                                            : grpc::InsecureChannelCredentials());
    }
    DSV2_LOG(INFO) << "attention worker " << endpoint.id << " at " << endpoint.grpc_address
                   << (old != workers_.end() ? " (moved)" : " added");
    const std::string id = endpoint.id;
    workers.emplace(id, std::make_shared<Worker>(std::move(endpoint), channel));
    poll_now_ = true;
  }
  for (const auto& [id, worker] : workers_) {
    if (!workers.contains(id)) DSV2_LOG(INFO) << "attention worker " << id << " removed";
  }
  workers_.swap(workers);
  channels_.swap(channels);
}

void RouterService::SetServing(bool serving) {
  MutexLock lock(&mutex_);
  serving_ = serving;
}

void RouterService::StopAccepting() {
  MutexLock lock(&mutex_);
  accepting_ = false;
}

bool RouterService::ReadyLocked() const {
  if (!serving_ || !accepting_) return false;
  for (const auto& [id, w] : workers_) {
    if (w->Eligible()) return true;
  }
  return false;
}

bool RouterService::ready() const {
  MutexLock lock(&mutex_);
  return ReadyLocked();
}

int64_t RouterService::active_streams() const {
  MutexLock lock(&mutex_);
  return active_streams_;
}

std::vector<RouterWorkerView> RouterService::workers() const {
  MutexLock lock(&mutex_);
  std::vector<RouterWorkerView> views;
  for (const auto& [id, w] : workers_) {
    views.push_back({.endpoint = w->endpoint,
                     .load_known = w->load_known,
                     .load = w->load,
                     .failed = w->failed,
                     .eligible = w->Eligible(),
                     .pending_blocks = w->pending_blocks,
                     .pending_requests = w->pending_requests,
                     .active = w->active,
                     .polls = w->polls});
  }
  return views;
}

RouterCounters RouterService::counters() const {
  MutexLock lock(&mutex_);
  return counters_;
}

std::shared_ptr<RouterService::Worker> RouterService::ChooseLocked(
    const std::set<std::string>& exclude, int64_t tokens) {
  std::shared_ptr<Worker> best;
  int64_t best_room = 0;
  int64_t best_queue = 0;
  // workers_ is ordered by id, so only a strictly better worker replaces
  // the best so far and ties go to the smaller id.
  for (const auto& [id, w] : workers_) {
    if (!w->Eligible() || exclude.contains(id)) continue;
    const int64_t room = w->load.kv_blocks_free() + w->load.kv_blocks_cached() - w->pending_blocks;
    const int64_t queue = w->load.running() + w->load.waiting() + w->pending_requests;
    if (best == nullptr || room > best_room || (room == best_room && queue < best_queue)) {
      best = w;
      best_room = room;
      best_queue = queue;
    }
  }
  if (best != nullptr && tokens > 0) {
    const int64_t block_size = std::max<int64_t>(1, best->load.block_size());
    // A request larger than the whole cache is refused there, so its charge
    // stops at the cache's size.
    best->pending_blocks +=
        std::min((tokens + block_size - 1) / block_size, best->load.kv_blocks_total());
    ++best->pending_requests;
  }
  return best;
}

void RouterService::MarkFailed(Worker& worker, const grpc::Status& status) {
  MutexLock lock(&mutex_);
  ++counters_.failures[worker.endpoint.id];
  if (!worker.failed) {
    DSV2_LOG(WARNING) << "attention worker " << worker.endpoint.id
                      << " failed a call (UNAVAILABLE: " << status.error_message()
                      << "); not chosen until it answers a poll";
  }
  worker.failed = true;
  worker.failed_after = worker.polls_started;
}

std::unique_ptr<grpc::ClientContext> RouterService::ForwardContext(
    const grpc::CallbackServerContext& context, const std::string& principal,
    bool bounded) const {
  // A child of the incoming call: gRPC gives it the incoming deadline and
  // cancels it when the incoming call is cancelled, so the worker aborts the
  // request however the client goes away.
  std::unique_ptr<grpc::ClientContext> forward =
      grpc::ClientContext::FromCallbackServerContext(context);
  // The child keeps the earlier of this and the incoming deadline.
  if (bounded) forward->set_deadline(std::chrono::system_clock::now() + options_.unary_timeout);
  // Whose request it is; the worker trusts this from routers only.
  forward->AddMetadata(kPrincipalMetadata, principal);
  return forward;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* RouterService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  absl::StatusOr<Caller> caller = options_.policy.Authenticate(*context);
  if (!caller.ok()) return Refuse(ToGrpcStatus(caller.status()));
  v1::GenerateRequest request;
  absl::Status parsed = ParseMessage(*raw, &request);
  if (parsed.ok()) parsed = CheckBounds(request);
  if (!parsed.ok()) return Refuse(ToGrpcStatus(parsed));
  CallKey key{caller->principal, request.request_id()};
  std::optional<grpc::Status> refused;
  {
    MutexLock lock(&mutex_);
    if (!accepting_) {
      refused = Unavailable("the router is draining");
    } else if (!serving_) {
      refused = Unavailable("cluster not ready: the cluster map is not complete");
    } else if (active_streams_ >= options_.max_streams) {
      refused = grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("too many open streams (", options_.max_streams, "); retry later"));
    } else if (!calls_.emplace(key, ActiveCall{}).second) {
      // Ids must be unique among a principal's active calls across the
      // cluster, not only on one worker, so that Abort finds one.
      refused = grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("request_id '", key.second, "' is already in use by an active request"));
    } else {
      ++active_streams_;
    }
  }
  if (refused) return Refuse(*refused);
  auto call = std::make_shared<ForwardedCall>(this, context, std::move(key), std::move(request));
  call->Start();
  return call.get();
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* RouterService::Refuse(const grpc::Status& status) {
  {
    MutexLock lock(&mutex_);
    CountFinishedLocked(status);
  }
  return FinishedStream(status);
}

void RouterService::CountFinishedLocked(const grpc::Status& status) {
  ++counters_.finished[absl::StatusCodeToString(
      static_cast<absl::StatusCode>(status.error_code()))];
}

grpc::ServerUnaryReactor* RouterService::Abort(grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer* raw,
                                               grpc::ByteBuffer* out) {
  absl::StatusOr<Caller> caller = options_.policy.Authenticate(*context);
  if (!caller.ok()) return FinishUnary(context, ToGrpcStatus(caller.status()));
  v1::AbortRequest request;
  absl::Status parsed = ParseMessage(*raw, &request);
  if (parsed.ok()) parsed = CheckBounds(request);
  if (!parsed.ok()) return FinishUnary(context, ToGrpcStatus(parsed));
  std::shared_ptr<Worker> worker;
  {
    MutexLock lock(&mutex_);
    const auto it = calls_.find({caller->principal, request.request_id()});
    if (it == calls_.end()) {
      return FinishUnary(context,
                         grpc::Status(grpc::StatusCode::NOT_FOUND,
                                      absl::StrCat("no active request '", request.request_id(),
                                                   "'")));
    }
    // Remembered, so that a call not on a worker right now is not sent to one.
    it->second.aborted = true;
    worker = it->second.worker;
  }
  if (worker == nullptr) {
    *out = SerializeMessage(v1::AbortResponse());
    return FinishUnary(context, grpc::Status::OK);
  }
  // To the worker serving it, and nowhere else.
  struct Forward {
    std::unique_ptr<grpc::ClientContext> context;
    v1::AbortRequest request;
    v1::AbortResponse response;
  };
  auto* forward = new Forward{ForwardContext(*context, caller->principal, /*bounded=*/true),
                              std::move(request), {}};
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  worker->generation->async()->Abort(forward->context.get(), &forward->request,
                                     &forward->response,
                                     [forward, reactor, out](grpc::Status status) {
                                       if (status.ok()) *out = SerializeMessage(forward->response);
                                       reactor->Finish(status);
                                       delete forward;
                                     });
  return reactor;
}

grpc::ServerUnaryReactor* RouterService::Tokenize(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw,
                                                  grpc::ByteBuffer* out) {
  absl::StatusOr<Caller> caller = options_.policy.Authenticate(*context);
  if (!caller.ok()) return FinishUnary(context, ToGrpcStatus(caller.status()));
  v1::TokenizeRequest request;
  absl::Status parsed = ParseMessage(*raw, &request);
  if (parsed.ok()) parsed = CheckBounds(request);
  if (!parsed.ok()) return FinishUnary(context, ToGrpcStatus(parsed));
  using Forward = UnaryForward<v1::TokenizeRequest, v1::TokenizeResponse>;
  return (new Forward(this, context, caller->principal, "Tokenize", std::move(request), out,
                      [](Worker& w, grpc::ClientContext* c, const v1::TokenizeRequest* q,
                         v1::TokenizeResponse* r, std::function<void(grpc::Status)> done) {
                        w.generation->async()->Tokenize(c, q, r, std::move(done));
                      }))
      ->Start();
}

grpc::ServerUnaryReactor* RouterService::GetModelInfo(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* raw,
                                                      grpc::ByteBuffer* out) {
  absl::StatusOr<Caller> caller = options_.policy.Authenticate(*context);
  if (!caller.ok()) return FinishUnary(context, ToGrpcStatus(caller.status()));
  v1::GetModelInfoRequest request;
  if (absl::Status parsed = ParseMessage(*raw, &request); !parsed.ok()) {
    return FinishUnary(context, ToGrpcStatus(parsed));
  }
  using Forward = UnaryForward<v1::GetModelInfoRequest, v1::ModelInfo>;
  return (new Forward(this, context, caller->principal, "GetModelInfo", std::move(request), out,
                      [](Worker& w, grpc::ClientContext* c, const v1::GetModelInfoRequest* q,
                         v1::ModelInfo* r, std::function<void(grpc::Status)> done) {
                        w.generation->async()->GetModelInfo(c, q, r, std::move(done));
                      }))
      ->Start();
}

void RouterService::PollLoop() {
  MutexLock lock(&mutex_);
  while (!stop_) {
    std::vector<std::unique_ptr<Poll>> polls;
    const auto deadline = std::chrono::system_clock::now() + options_.load_timeout;
    for (const auto& [id, worker] : workers_) {
      // A worker slower than the interval keeps one poll in flight, never a
      // pile of them.
      if (worker->poll_in_flight) continue;
      worker->poll_in_flight = true;
      auto poll = std::make_unique<Poll>();
      poll->worker = worker;
      poll->sequence = ++worker->polls_started;
      poll->pending_blocks = worker->pending_blocks;
      poll->pending_requests = worker->pending_requests;
      poll->context.set_deadline(deadline);
      polls.push_back(std::move(poll));
    }
    polls_in_flight_ += static_cast<int64_t>(polls.size());
    poll_now_ = false;
    // The callback may run on this thread before GetLoad returns, and it
    // takes the mutex.
    mutex_.Unlock();
    for (std::unique_ptr<Poll>& owned : polls) {
      Poll* poll = owned.release();
      poll->worker->attention->async()->GetLoad(
          &poll->context, &poll->request, &poll->response,
          [this, poll](grpc::Status status) { OnPolled(poll, status); });
    }
    mutex_.Lock();
    auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stop_ || poll_now_; };
    mutex_.AwaitWithTimeout(absl::Condition(&wake),
                            absl::FromChrono(options_.load_interval));
  }
}

void RouterService::OnPolled(Poll* raw, const grpc::Status& status) {
  // Declared before the lock, so it is freed after the lock is released
  // (it may hold the last reference to a removed worker and its channel).
  std::unique_ptr<Poll> poll(raw);
  MutexLock lock(&mutex_);
  Worker& w = *poll->worker;
  w.poll_in_flight = false;
  if (status.ok()) {
    const internal::Load& load = poll->response;
    if (!w.load_known) {
      DSV2_LOG(INFO) << "attention worker " << w.endpoint.id << " answers: "
                     << (load.serving() ? "serving"
                                        : "not serving (" + load.not_serving_reason() + ")")
                     << ", " << load.kv_blocks_total() << " KV blocks";
    } else if (load.serving() != w.load.serving()) {
      DSV2_LOG(WARNING) << "attention worker " << w.endpoint.id << ": "
                        << (load.serving() ? "serving again"
                                           : "not serving: " + load.not_serving_reason());
    }
    w.load_known = true;
    w.load = poll->response;
    ++w.polls;
    w.pending_blocks = std::max<int64_t>(0, w.pending_blocks - poll->pending_blocks);
    w.pending_requests = std::max<int64_t>(0, w.pending_requests - poll->pending_requests);
    if (w.failed && poll->sequence > w.failed_after) w.failed = false;
  } else {
    if (w.load_known || poll->sequence == 1) {
      DSV2_LOG(WARNING) << "GetLoad on attention worker " << w.endpoint.id << " ("
                        << w.endpoint.grpc_address << ") failed: " << status.error_message()
                        << "; not chosen until it answers";
    }
    w.load_known = false;
  }
  --polls_in_flight_;
}

}  // namespace dsv2
