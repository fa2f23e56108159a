#include "common/transport/inprocess_transport.h"

#include "common/transport/core_transport_impl.h"

#include <deque>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/mutex.h"
#include "common/transport/transport_internal.h"

namespace dsv2::transport {
namespace {
constexpr char kScheme[] = "inproc://";
}  // namespace

// One transport's state, shared with the reply sinks it hands out (which
// may outlive the transport) and found by peers through the network.
namespace internal {

class InProcessEndpoint : public std::enable_shared_from_this<InProcessEndpoint> {
 public:
  using PendingCall = internal::PendingCall;

  InProcessEndpoint(std::shared_ptr<InProcessNetwork> network, InProcessTransportOptions options,
                    std::string address, std::shared_ptr<BufferPool> pool)
      : network_(std::move(network)),
        options_(std::move(options)),
        address_(std::move(address)),
        pool_(std::move(pool)),
        calls_(options_.max_calls_in_flight),
        dispatcher_(&counters_, options_.handler_threads, options_.max_queued_requests) {}

  void Start() {
    timer_ = std::thread([this] { TimerLoop(); });
  }

  const std::string& address() const { return address_; }
  PeerId id() const { return options_.id; }
  internal::Counters& counters() { return counters_; }
  internal::RequestDispatcher& dispatcher() { return dispatcher_; }
  MessageBuffer Allocate(size_t bytes) { return pool_->Allocate(bytes); }

  void Call(std::string_view peer_address, Message request, absl::Time deadline, CallCallback done);
  // A frame arriving as a request; `sink` answers it (null: unanswerable).
  void ReceiveRequest(absl::Span<const uint8_t> header, MessageBuffer payload,
                      std::shared_ptr<ResponseSink> sink);
  // A frame arriving as a reply to one of this endpoint's calls.
  void ReceiveReply(absl::Span<const uint8_t> header, MessageBuffer payload);
  void Shutdown() ABSL_LOCKS_EXCLUDED(mutex_);
  bool stopped() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    return stopped_;
  }

 private:
  absl::StatusOr<Message> Decode(absl::Span<const uint8_t> header, MessageBuffer payload);
  // Ends a call from the timer thread (never inline inside Call).
  void FailLater(PendingCall call, absl::Status status) ABSL_LOCKS_EXCLUDED(mutex_);
  void TimerLoop() ABSL_LOCKS_EXCLUDED(mutex_);

  const std::shared_ptr<InProcessNetwork> network_;
  const InProcessTransportOptions options_;
  const std::string address_;
  const std::shared_ptr<BufferPool> pool_;
  internal::Counters counters_;
  internal::CallTable calls_;
  internal::RequestDispatcher dispatcher_;

  // The timer thread waits on it for failures to deliver, a new deadline
  // (generation_ moves) or Shutdown.
  Mutex mutex_;
  std::deque<std::pair<PendingCall, absl::Status>> failures_ ABSL_GUARDED_BY(mutex_);
  uint64_t generation_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopped_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread timer_;
};

}  // namespace internal

template class internal::CoreTransport<internal::InProcessEndpoint>;

using internal::InProcessEndpoint;

namespace {

// Answers a request by delivering the reply to the calling endpoint, if it
// still exists.
class InProcessSink : public ResponseSink {
 public:
  InProcessSink(std::weak_ptr<InProcessEndpoint> caller, std::weak_ptr<InProcessEndpoint> server,
                PeerId server_id, std::shared_ptr<BufferPool> pool)
      : caller_(std::move(caller)),
        server_(std::move(server)),
        server_id_(server_id),
        pool_(std::move(pool)) {}

  void Send(Message response) override;
  MessageBuffer AllocatePayload(size_t bytes) override { return pool_->Allocate(bytes); }

 private:
  std::weak_ptr<InProcessEndpoint> caller_;
  std::weak_ptr<InProcessEndpoint> server_;
  const PeerId server_id_;
  const std::shared_ptr<BufferPool> pool_;
};

// The sink of raw injected requests: answers go nowhere.
class DiscardSink : public ResponseSink {
 public:
  void Send(Message) override {}
  MessageBuffer AllocatePayload(size_t bytes) override { return MessageBuffer::Heap(bytes); }
};

}  // namespace

// ---------------------------------------------------------------------------
// Endpoint

absl::StatusOr<Message> InProcessEndpoint::Decode(absl::Span<const uint8_t> header,
                                                  MessageBuffer payload) {
  absl::StatusOr<FrameHeader> decoded = DecodeHeader(header);
  if (!decoded.ok()) return decoded.status();
  if (payload.size() != decoded->payload_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload is ", payload.size(), " bytes, header says ", decoded->payload_length));
  }
  return Message{*decoded, std::move(payload)};
}

void InProcessEndpoint::Call(std::string_view peer_address, Message request, absl::Time deadline,
                             CallCallback done) {
  counters_.Add(counters_.calls_started);
  if (stopped()) {
    internal::FinishCall(counters_, PendingCall{std::move(done), deadline, request.header, 0},
                         absl::CancelledError("transport shut down"));
    return;
  }
  const uint64_t id = calls_.NextId();
  request.header.request_id = id;
  request.header.sender = options_.id;
  PendingCall call{std::move(done), deadline, request.header, 0};
  if (absl::Status s = internal::ValidateOutgoingRequest(request); !s.ok()) {
    FailLater(std::move(call), s);
    return;
  }
  if (!calls_.Add(id, &call)) {
    FailLater(std::move(call),
              absl::ResourceExhaustedError(absl::StrCat("too many data-plane calls in flight (",
                                                        options_.max_calls_in_flight, ")")));
    return;
  }
  bool stopped_meanwhile;
  {
    MutexLock lock(&mutex_);
    stopped_meanwhile = stopped_;
    ++generation_;  // The new deadline may be the earliest: the timer looks again.
  }
  if (stopped_meanwhile) {
    // Shutdown ran between the check above and Add: end the call here, as
    // Shutdown's sweep may have missed it.
    PendingCall taken;
    if (calls_.Take(id, &taken) == internal::CallTable::Lookup::kFound) {
      internal::FinishCall(counters_, std::move(taken),
                           absl::CancelledError("transport shut down"));
    }
    return;
  }

  std::shared_ptr<InProcessEndpoint> peer = network_->Find(peer_address);
  if (peer == nullptr) {
    PendingCall taken;
    if (calls_.Take(id, &taken) == internal::CallTable::Lookup::kFound) {
      FailLater(std::move(taken), absl::UnavailableError(absl::StrCat("no data-plane peer at ",
                                                                      std::string(peer_address))));
    }
    return;
  }
  const EncodedHeader header = EncodeHeader(request.header);
  const uint64_t bytes = kFrameHeaderSize + request.payload.size();
  counters_.Add(counters_.messages_sent);
  counters_.Add(counters_.bytes_sent, bytes);
  auto sink = std::make_shared<InProcessSink>(weak_from_this(), peer, peer->id(), peer->pool_);
  peer->ReceiveRequest(header, std::move(request.payload), std::move(sink));
}

void InProcessEndpoint::ReceiveRequest(absl::Span<const uint8_t> header, MessageBuffer payload,
                                       std::shared_ptr<ResponseSink> sink) {
  const uint64_t bytes = header.size() + payload.size();
  absl::StatusOr<Message> message = Decode(header, std::move(payload));
  if (!message.ok()) {
    counters_.Add(counters_.malformed_dropped);
    return;
  }
  if (message->header.type != FrameType::kDispatch) {
    counters_.Add(counters_.unexpected_dropped);  // A reply where a request belongs.
    return;
  }
  if (!dispatcher_.Admit(message->header)) return;
  counters_.Add(counters_.messages_received);
  counters_.Add(counters_.bytes_received, bytes);
  if (sink == nullptr) sink = std::make_shared<DiscardSink>();
  dispatcher_.Dispatch(*std::move(message), std::move(sink));
}

void InProcessEndpoint::ReceiveReply(absl::Span<const uint8_t> header, MessageBuffer payload) {
  const uint64_t bytes = header.size() + payload.size();
  absl::StatusOr<Message> message = Decode(header, std::move(payload));
  if (!message.ok() || message->header.type == FrameType::kDispatch) {
    counters_.Add(message.ok() ? counters_.unexpected_dropped : counters_.malformed_dropped);
    return;
  }
  counters_.Add(counters_.messages_received);
  counters_.Add(counters_.bytes_received, bytes);
  internal::DeliverReply(counters_, calls_, *std::move(message));
}

void InProcessEndpoint::FailLater(PendingCall call, absl::Status status) {
  {
    MutexLock lock(&mutex_);
    if (!stopped_) {
      failures_.emplace_back(std::move(call), std::move(status));
      ++generation_;
      return;
    }
  }
  internal::FinishCall(counters_, std::move(call), absl::CancelledError("transport shut down"));
}

void InProcessEndpoint::TimerLoop() {
  mutex_.Lock();
  while (!stopped_) {
    std::deque<std::pair<PendingCall, absl::Status>> failures;
    failures.swap(failures_);
    const uint64_t seen = generation_;
    // Callbacks run without the lock.
    mutex_.Unlock();
    for (auto& [call, status] : failures) internal::FinishCall(counters_, std::move(call), status);
    internal::FailCalls(counters_, calls_.TakeExpired(absl::Now()),
                        absl::DeadlineExceededError("data-plane call deadline exceeded"));
    const absl::Duration wait = std::min(calls_.NextDeadline() - absl::Now(), absl::Seconds(1));
    mutex_.Lock();
    if (wait > absl::ZeroDuration()) {
      const auto woken = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopped_ || generation_ != seen;
      };
      mutex_.AwaitWithTimeout(absl::Condition(&woken), wait);
    }
  }
  mutex_.Unlock();
}

void InProcessEndpoint::Shutdown() {
  {
    MutexLock lock(&mutex_);
    if (stopped_) return;
    stopped_ = true;
  }
  network_->Unregister(address_);
  if (timer_.joinable()) timer_.join();
  dispatcher_.Stop();
  std::deque<std::pair<PendingCall, absl::Status>> failures;
  {
    MutexLock lock(&mutex_);
    failures.swap(failures_);
  }
  for (auto& [call, status] : failures) {
    internal::FinishCall(counters_, std::move(call), absl::CancelledError("transport shut down"));
  }
  internal::FailCalls(counters_, calls_.TakeAll(), absl::CancelledError("transport shut down"));
}

void InProcessSink::Send(Message response) {
  std::shared_ptr<InProcessEndpoint> server = server_.lock();
  std::shared_ptr<InProcessEndpoint> caller = caller_.lock();
  if (caller == nullptr) {
    if (server != nullptr) server->counters().Add(server->counters().responses_dropped);
    return;
  }
  response.header.sender = server_id_;
  const EncodedHeader header = EncodeHeader(response.header);
  if (server != nullptr) {
    internal::Counters& c = server->counters();
    c.Add(c.messages_sent);
    c.Add(c.bytes_sent, kFrameHeaderSize + response.payload.size());
    if (response.header.type == FrameType::kError) c.Add(c.error_replies_sent);
  }
  caller->ReceiveReply(header, std::move(response.payload));
}

// ---------------------------------------------------------------------------
// InProcessNetwork

std::shared_ptr<InProcessNetwork> InProcessNetwork::Create() {
  return std::shared_ptr<InProcessNetwork>(new InProcessNetwork());
}

absl::Status InProcessNetwork::SendRaw(std::string_view address, absl::Span<const uint8_t> header,
                                       MessageBuffer payload) {
  std::shared_ptr<Endpoint> endpoint = Find(address);
  if (endpoint == nullptr) {
    return absl::NotFoundError(absl::StrCat("no in-process transport at ", std::string(address)));
  }
  endpoint->ReceiveRequest(header, std::move(payload), nullptr);
  return absl::OkStatus();
}

absl::Status InProcessNetwork::Register(const std::string& address,
                                        std::weak_ptr<Endpoint> endpoint) {
  MutexLock lock(&mutex_);
  auto [it, inserted] = endpoints_.try_emplace(address, endpoint);
  if (!inserted) {
    if (!it->second.expired()) {
      return absl::AlreadyExistsError(absl::StrCat("in-process address ", address, " is taken"));
    }
    it->second = std::move(endpoint);
  }
  return absl::OkStatus();
}

void InProcessNetwork::Unregister(const std::string& address) {
  MutexLock lock(&mutex_);
  endpoints_.erase(address);
}

std::shared_ptr<InProcessEndpoint> InProcessNetwork::Find(std::string_view address) {
  MutexLock lock(&mutex_);
  auto it = endpoints_.find(std::string(address));
  return it == endpoints_.end() ? nullptr : it->second.lock();
}

std::string InProcessNetwork::NextName() {
  MutexLock lock(&mutex_);
  return absl::StrCat(next_name_++);
}

// ---------------------------------------------------------------------------
// InProcessTransport

absl::StatusOr<std::unique_ptr<InProcessTransport>> InProcessTransport::Create(
    std::shared_ptr<InProcessNetwork> network, InProcessTransportOptions options) {
  if (network == nullptr) return absl::InvalidArgumentError("in-process transport needs a network");
  const std::string name = options.name.empty() ? network->NextName() : options.name;
  const std::string address = absl::StrCat(kScheme, name);
  absl::StatusOr<std::shared_ptr<BufferPool>> pool = BufferPool::Create(options.pool_bytes);
  if (!pool.ok()) return pool.status();
  auto endpoint =
      std::make_shared<InProcessEndpoint>(network, std::move(options), address, *std::move(pool));
  if (absl::Status s = network->Register(address, endpoint); !s.ok()) return s;
  endpoint->Start();
  return std::unique_ptr<InProcessTransport>(new InProcessTransport(std::move(endpoint)));
}


}  // namespace dsv2::transport
