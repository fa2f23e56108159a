#include "common/transport/transport.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/transport/transport_internal.h"

namespace dsv2::transport {

std::string TransportCounters::ToString() const {
  return absl::StrCat(
      "sent ", messages_sent, " msgs/", bytes_sent, " B, received ", messages_received, " msgs/",
      bytes_received, " B, calls ", calls_started, " started ", calls_succeeded, " ok ",
      calls_failed, " failed (", timeouts, " timeouts, ", peer_failures,
      " peer failures), dropped: ", late_replies_dropped, " late, ", malformed_dropped,
      " malformed, ", unexpected_dropped, " unexpected, ", disallowed_dropped, " disallowed, ",
      unauthenticated_dropped, " unauthenticated, ",
      overload_dropped, " overload, ", responses_dropped, " responses; ", error_replies_sent,
      " error replies, ", send_timeouts, " send timeouts, ", receive_timeouts, " receive timeouts");
}

// ---------------------------------------------------------------------------
// IncomingRequest

IncomingRequest::IncomingRequest(FrameHeader header, MessageBuffer payload,
                                 std::shared_ptr<ResponseSink> sink)
    : header_(header), payload_(std::move(payload)), sink_(std::move(sink)) {}

IncomingRequest::IncomingRequest(IncomingRequest&&) noexcept = default;

IncomingRequest& IncomingRequest::operator=(IncomingRequest&& other) noexcept {
  if (this != &other) {
    if (sink_ != nullptr) RespondError(absl::InternalError("request replaced unanswered"));
    header_ = other.header_;
    payload_ = std::move(other.payload_);
    sink_ = std::move(other.sink_);
  }
  return *this;
}

IncomingRequest::~IncomingRequest() {
  if (sink_ != nullptr) {
    RespondError(absl::InternalError("the expert worker dropped the request unanswered"));
  }
}

MessageBuffer IncomingRequest::AllocatePayload(size_t bytes) {
  return sink_ != nullptr ? sink_->AllocatePayload(bytes) : MessageBuffer::Heap(bytes);
}

absl::StatusOr<Message> IncomingRequest::NewCombine(DType dtype) {
  return transport::NewCombine(header_, dtype,
                               [this](size_t bytes) { return AllocatePayload(bytes); });
}

absl::Status IncomingRequest::Respond(Message response) {
  if (sink_ == nullptr) return absl::FailedPreconditionError("request already answered");
  absl::Status problem = ValidateCombineFor(header_, response.header);
  if (problem.ok()) problem = ValidateHeader(response.header);
  if (problem.ok() && response.payload.size() != response.header.payload_length) {
    problem = absl::InvalidArgumentError(
        absl::StrCat("combine payload is ", response.payload.size(), " bytes, header says ",
                     response.header.payload_length));
  }
  if (!problem.ok()) {
    RespondError(absl::InternalError(
        absl::StrCat("expert worker produced an invalid reply: ", problem.message())));
    return problem;
  }
  response.header.request_id = header_.request_id;
  std::shared_ptr<ResponseSink> sink = std::move(sink_);
  sink->Send(std::move(response));
  return absl::OkStatus();
}

void IncomingRequest::RespondError(const absl::Status& status) {
  if (sink_ == nullptr) return;
  Message response = MakeErrorMessage(status);
  response.header.request_id = header_.request_id;
  response.header.step_id = header_.step_id;
  response.header.layer = header_.layer;
  response.header.micro_batch = header_.micro_batch;
  std::shared_ptr<ResponseSink> sink = std::move(sink_);
  sink->Send(std::move(response));
}

// ---------------------------------------------------------------------------
// Helpers

std::future<absl::StatusOr<Message>> CallFuture(Transport& transport, std::string_view peer_address,
                                                Message request, absl::Time deadline) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<Message>>>();
  std::future<absl::StatusOr<Message>> future = promise->get_future();
  transport.Call(
      peer_address, std::move(request), deadline,
      [promise](absl::StatusOr<Message> reply) { promise->set_value(std::move(reply)); });
  return future;
}

absl::StatusOr<Message> CallAndWait(Transport& transport, std::string_view peer_address,
                                    Message request, absl::Duration timeout) {
  std::future<absl::StatusOr<Message>> future =
      CallFuture(transport, peer_address, std::move(request), absl::Now() + timeout);
  // The transport ends the call at its deadline; the extra second only
  // guards against a transport bug turning into a hang.
  if (future.wait_for(absl::ToChronoNanoseconds(timeout + absl::Seconds(1))) !=
      std::future_status::ready) {
    return absl::DeadlineExceededError("transport did not end the call at its deadline");
  }
  return future.get();
}

namespace internal {

// ---------------------------------------------------------------------------
// Counters

TransportCounters Counters::Snapshot() const {
  TransportCounters c;
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  c.messages_sent = get(messages_sent);
  c.bytes_sent = get(bytes_sent);
  c.messages_received = get(messages_received);
  c.bytes_received = get(bytes_received);
  c.calls_started = get(calls_started);
  c.calls_succeeded = get(calls_succeeded);
  c.calls_failed = get(calls_failed);
  c.timeouts = get(timeouts);
  c.peer_failures = get(peer_failures);
  c.late_replies_dropped = get(late_replies_dropped);
  c.malformed_dropped = get(malformed_dropped);
  c.unexpected_dropped = get(unexpected_dropped);
  c.disallowed_dropped = get(disallowed_dropped);
  c.unauthenticated_dropped = get(unauthenticated_dropped);
  c.overload_dropped = get(overload_dropped);
  c.error_replies_sent = get(error_replies_sent);
  c.send_timeouts = get(send_timeouts);
  c.receive_timeouts = get(receive_timeouts);
  c.responses_dropped = get(responses_dropped);
  return c;
}

// ---------------------------------------------------------------------------
// CallTable

namespace {
constexpr size_t kRememberedEndedCalls = 16384;
}  // namespace

CallTable::CallTable(size_t max_calls) : max_calls_(max_calls) {}

bool CallTable::Add(uint64_t id, PendingCall* call) {
  MutexLock lock(&mutex_);
  if (calls_.size() >= max_calls_) return false;
  by_deadline_.emplace(call->deadline, id);
  calls_.emplace(id, std::move(*call));
  return true;
}

bool CallTable::Bind(uint64_t id, uint64_t connection) {
  MutexLock lock(&mutex_);
  auto it = calls_.find(id);
  if (it == calls_.end()) return false;
  it->second.connection = connection;
  return true;
}

void CallTable::RememberEndedLocked(uint64_t id) {
  if (ended_.insert(id).second) ended_order_.push_back(id);
  while (ended_order_.size() > kRememberedEndedCalls) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
}

CallTable::Lookup CallTable::Take(uint64_t id, PendingCall* out) {
  MutexLock lock(&mutex_);
  auto it = calls_.find(id);
  if (it == calls_.end()) return ended_.contains(id) ? Lookup::kLate : Lookup::kUnknown;
  by_deadline_.erase({it->second.deadline, id});
  *out = std::move(it->second);
  calls_.erase(it);
  // A second reply to the same id is late, not unexpected.
  RememberEndedLocked(id);
  return Lookup::kFound;
}

CallTable::Lookup CallTable::Peek(uint64_t id) const {
  MutexLock lock(&mutex_);
  if (calls_.contains(id)) return Lookup::kFound;
  return ended_.contains(id) ? Lookup::kLate : Lookup::kUnknown;
}

std::vector<PendingCall> CallTable::TakeExpired(absl::Time now) {
  std::vector<PendingCall> expired;
  MutexLock lock(&mutex_);
  while (!by_deadline_.empty() && by_deadline_.begin()->first <= now) {
    const uint64_t id = by_deadline_.begin()->second;
    by_deadline_.erase(by_deadline_.begin());
    auto it = calls_.find(id);
    expired.push_back(std::move(it->second));
    calls_.erase(it);
    RememberEndedLocked(id);
  }
  return expired;
}

std::vector<PendingCall> CallTable::TakeConnection(uint64_t connection) {
  std::vector<PendingCall> taken;
  MutexLock lock(&mutex_);
  for (auto it = calls_.begin(); it != calls_.end();) {
    if (it->second.connection == connection) {
      by_deadline_.erase({it->second.deadline, it->first});
      RememberEndedLocked(it->first);
      taken.push_back(std::move(it->second));
      calls_.erase(it++);
    } else {
      ++it;
    }
  }
  return taken;
}

std::vector<PendingCall> CallTable::TakeAll() {
  std::vector<PendingCall> taken;
  MutexLock lock(&mutex_);
  for (auto& [id, call] : calls_) {
    RememberEndedLocked(id);
    taken.push_back(std::move(call));
  }
  calls_.clear();
  by_deadline_.clear();
  return taken;
}

absl::Time CallTable::NextDeadline() const {
  MutexLock lock(&mutex_);
  return by_deadline_.empty() ? absl::InfiniteFuture() : by_deadline_.begin()->first;
}

size_t CallTable::size() const {
  MutexLock lock(&mutex_);
  return calls_.size();
}

// ---------------------------------------------------------------------------
// Call completion

void FinishCall(Counters& counters, PendingCall call, absl::StatusOr<Message> result) {
  if (result.ok()) {
    counters.Add(counters.calls_succeeded);
  } else {
    counters.Add(counters.calls_failed);
    if (absl::IsDeadlineExceeded(result.status())) counters.Add(counters.timeouts);
    if (absl::IsUnavailable(result.status())) counters.Add(counters.peer_failures);
  }
  call.done(std::move(result));
}

void FailCalls(Counters& counters, std::vector<PendingCall> calls, const absl::Status& status) {
  for (PendingCall& call : calls) FinishCall(counters, std::move(call), status);
}

void DeliverReply(Counters& counters, CallTable& calls, Message reply) {
  PendingCall call;
  switch (calls.Take(reply.header.request_id, &call)) {
    case CallTable::Lookup::kLate:
      counters.Add(counters.late_replies_dropped);
      return;
    case CallTable::Lookup::kUnknown:
      counters.Add(counters.unexpected_dropped);
      return;
    case CallTable::Lookup::kFound:
      break;
  }
  if (reply.header.type == FrameType::kError) {
    absl::Status carried;
    if (absl::Status s = DecodeErrorPayload(reply.header, reply.payload.span(), &carried);
        !s.ok()) {
      counters.Add(counters.malformed_dropped);
      FinishCall(counters, std::move(call),
                 absl::InternalError(absl::StrCat("malformed error reply: ", s.message())));
      return;
    }
    FinishCall(counters, std::move(call), std::move(carried));
    return;
  }
  if (absl::Status s = ValidateCombineFor(call.request, reply.header); !s.ok()) {
    counters.Add(counters.malformed_dropped);
    FinishCall(
        counters, std::move(call),
        absl::InternalError(absl::StrCat("reply does not answer the dispatch: ", s.message())));
    return;
  }
  FinishCall(counters, std::move(call), std::move(reply));
}

absl::Status ValidateOutgoingRequest(const Message& request) {
  if (request.header.type != FrameType::kDispatch) {
    return absl::InvalidArgumentError(
        absl::StrCat("a call sends a dispatch frame, not ", FrameTypeName(request.header.type)));
  }
  if (absl::Status s = ValidateHeader(request.header); !s.ok()) return s;
  if (request.payload.size() != request.header.payload_length) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch payload is ", request.payload.size(),
                                                   " bytes, header says ",
                                                   request.header.payload_length));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// PeerFilter

void PeerFilter::Set(AllowedPeers peers) {
  MutexLock lock(&mutex_);
  allowed_ = std::move(peers);
}

void PeerFilter::AllowAll() {
  MutexLock lock(&mutex_);
  allowed_.reset();
}

bool PeerFilter::Allowed(PeerId peer) const {
  MutexLock lock(&mutex_);
  return !allowed_.has_value() || allowed_->contains(peer);
}

bool PeerFilter::AllowedAt(PeerId peer, std::string_view reply_address) const {
  MutexLock lock(&mutex_);
  if (!allowed_.has_value()) return true;
  auto it = allowed_->find(peer);
  return it != allowed_->end() && (it->second.empty() || it->second == reply_address);
}

// ---------------------------------------------------------------------------
// WorkQueue

WorkQueue::WorkQueue(int threads, size_t capacity) : capacity_(capacity), inline_(threads <= 0) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

WorkQueue::~WorkQueue() { Stop(); }

bool WorkQueue::Post(absl::AnyInvocable<void()> task) {
  {
    MutexLock lock(&mutex_);
    if (stopped_) return false;
    if (!inline_) {
      if (tasks_.size() >= capacity_) return false;
      tasks_.push_back(std::move(task));
      return true;
    }
  }
  task();
  return true;
}

void WorkQueue::Stop() {
  std::deque<absl::AnyInvocable<void()>> dropped;
  {
    MutexLock lock(&mutex_);
    if (stopped_ && threads_.empty()) return;
    stopped_ = true;
    dropped.swap(tasks_);
  }
  dropped.clear();  // Outside the lock: destroying a task may answer a request.
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

void WorkQueue::Loop() {
  for (;;) {
    absl::AnyInvocable<void()> task;
    {
      MutexLock lock(&mutex_);
      const auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopped_ || !tasks_.empty();
      };
      mutex_.Await(absl::Condition(&woken));
      if (stopped_) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

// ---------------------------------------------------------------------------
// RequestDispatcher

RequestDispatcher::RequestDispatcher(Counters* counters, int handler_threads, size_t queue_capacity)
    : counters_(counters), queue_(handler_threads, queue_capacity) {}

void RequestDispatcher::SetHandler(RequestHandler handler) {
  auto shared = std::make_shared<const RequestHandler>(std::move(handler));
  MutexLock lock(&mutex_);
  handler_ = std::move(shared);
}

bool RequestDispatcher::Admit(const FrameHeader& header, std::string_view reply_address) {
  {
    MutexLock lock(&mutex_);
    if (handler_ == nullptr || !*handler_) {
      counters_->Add(counters_->unexpected_dropped);
      return false;
    }
  }
  if (!filter_.AllowedAt(header.sender, reply_address)) {
    counters_->Add(counters_->disallowed_dropped);
    return false;
  }
  return true;
}

namespace {

// A request waiting in the handler queue. If it is destroyed before a
// handler took it (queue full, or dropped at shutdown), it answers the
// caller so the caller need not wait for its deadline.
struct QueuedRequest {
  std::unique_ptr<IncomingRequest> request;
  const std::atomic<bool>* stopping;

  QueuedRequest(std::unique_ptr<IncomingRequest> r, const std::atomic<bool>* s)
      : request(std::move(r)), stopping(s) {}
  QueuedRequest(QueuedRequest&&) = default;
  ~QueuedRequest() {
    if (request == nullptr || request->answered()) return;
    if (stopping->load()) {
      request->RespondError(absl::UnavailableError("expert worker is shutting down"));
    } else {
      request->RespondError(absl::ResourceExhaustedError(
          absl::StrCat("expert worker request queue is full; dropped layer ",
                       request->header().layer, " micro-batch ", request->header().micro_batch)));
    }
  }
};

}  // namespace

void RequestDispatcher::Dispatch(Message request, std::shared_ptr<ResponseSink> sink) {
  std::shared_ptr<const RequestHandler> handler;
  {
    MutexLock lock(&mutex_);
    handler = handler_;
  }
  if (handler == nullptr) {
    counters_->Add(counters_->unexpected_dropped);
    return;
  }
  QueuedRequest queued(std::make_unique<IncomingRequest>(request.header, std::move(request.payload),
                                                         std::move(sink)),
                       &stopping_);
  if (!queue_.Post(
          [handler, q = std::move(queued)]() mutable { (*handler)(std::move(*q.request)); })) {
    if (!stopping_.load()) counters_->Add(counters_->overload_dropped);
  }
}

std::string HexEncode(const void* data, size_t size) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out(size * 2, '0');
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> HexDecode(std::string_view hex) {
  if (hex.empty() || hex.size() % 2 != 0) {
    return absl::InvalidArgumentError("address bytes are not an even-length hex string");
  }
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]);
    const int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return absl::InvalidArgumentError("address bytes have a non-hex digit");
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

void RequestDispatcher::Stop() {
  stopping_.store(true);
  queue_.Stop();
}

}  // namespace internal
}  // namespace dsv2::transport
