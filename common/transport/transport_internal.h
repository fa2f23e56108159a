// Pieces every Transport implementation shares: the atomic counters, the
// table of calls in flight with their deadlines, the allowed-peer filter and
// the bounded handler queue. Not part of the public API.
//
// Thread safety: every class here is thread-safe; none invokes a callback
// while holding its own lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "common/base/mutex.h"
#include "common/transport/transport.h"

namespace dsv2::transport::internal {

class Counters {
 public:
  void Add(std::atomic<uint64_t>& counter, uint64_t n = 1) {
    counter.fetch_add(n, std::memory_order_relaxed);
  }
  TransportCounters Snapshot() const;

  std::atomic<uint64_t> messages_sent{0}, bytes_sent{0}, messages_received{0}, bytes_received{0},
      calls_started{0}, calls_succeeded{0}, calls_failed{0}, timeouts{0}, peer_failures{0},
      late_replies_dropped{0}, malformed_dropped{0}, unexpected_dropped{0}, disallowed_dropped{0},
      unauthenticated_dropped{0}, overload_dropped{0}, error_replies_sent{0}, send_timeouts{0}, receive_timeouts{0},
      responses_dropped{0};
};

struct PendingCall {
  CallCallback done;
  absl::Time deadline;
  FrameHeader request;      // The dispatch header, to check the reply against.
  uint64_t connection = 0;  // The implementation's connection key; 0 until bound.
};

// Calls in flight, keyed by request id, with their deadlines. Remembers the
// ids of the most recent calls that ended without a reply so a reply that
// arrives later is told apart (late) from one that answers nothing
// (unexpected).
class CallTable {
 public:
  explicit CallTable(size_t max_calls);

  uint64_t NextId() { return next_id_.fetch_add(1, std::memory_order_relaxed); }
  // Moves *call into the table; false (and *call untouched) when full.
  bool Add(uint64_t id, PendingCall* call);
  // Records the connection a call went out on; false if it already ended.
  bool Bind(uint64_t id, uint64_t connection);

  enum class Lookup { kFound, kLate, kUnknown };
  Lookup Take(uint64_t id, PendingCall* out);
  // Whether a reply to `id` would find its call, without taking it.
  Lookup Peek(uint64_t id) const;
  // The calls whose deadline is at or before `now`.
  std::vector<PendingCall> TakeExpired(absl::Time now);
  // The calls bound to `connection`.
  std::vector<PendingCall> TakeConnection(uint64_t connection);
  std::vector<PendingCall> TakeAll();
  // The earliest deadline, or InfiniteFuture when no call is in flight.
  absl::Time NextDeadline() const;
  size_t size() const;

 private:
  void RememberEndedLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const size_t max_calls_;
  std::atomic<uint64_t> next_id_{1};
  mutable Mutex mutex_;
  absl::flat_hash_map<uint64_t, PendingCall> calls_ ABSL_GUARDED_BY(mutex_);
  std::set<std::pair<absl::Time, uint64_t>> by_deadline_ ABSL_GUARDED_BY(mutex_);
  std::deque<uint64_t> ended_order_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_set<uint64_t> ended_ ABSL_GUARDED_BY(mutex_);
};

// Ends `call` with `result`, counting it; runs the callback on this thread.
void FinishCall(Counters& counters, PendingCall call, absl::StatusOr<Message> result);
// Fails every call in `calls` with `status`.
void FailCalls(Counters& counters, std::vector<PendingCall> calls, const absl::Status& status);
// Routes a decoded reply frame (combine or error) to its call: checks it
// answers the request, turns error frames into the status they carry, and
// counts late and unexpected replies.
void DeliverReply(Counters& counters, CallTable& calls, Message reply);
// Checks a request a client is about to send: a valid dispatch whose
// payload matches its header.
absl::Status ValidateOutgoingRequest(const Message& request);

// The allowed senders and their addresses.
class PeerFilter {
 public:
  void Set(AllowedPeers peers);
  void AllowAll();
  bool Allowed(PeerId peer) const;
  // Whether `peer` is allowed and, if the set lists an address for it,
  // `reply_address` is that address.
  bool AllowedAt(PeerId peer, std::string_view reply_address) const;

 private:
  mutable Mutex mutex_;
  std::optional<AllowedPeers> allowed_ ABSL_GUARDED_BY(mutex_);  // nullopt: everyone.
};

// A bounded FIFO of tasks run by `threads` threads (0: Post runs the task
// inline on the posting thread).
class WorkQueue {
 public:
  WorkQueue(int threads, size_t capacity);
  ~WorkQueue();
  // False (and the task is destroyed unrun) when full or stopped.
  bool Post(absl::AnyInvocable<void()> task);
  // Destroys queued tasks unrun and joins the threads after their current
  // task. Idempotent.
  void Stop();

 private:
  void Loop();

  const size_t capacity_;
  const bool inline_;
  Mutex mutex_;  // The threads wait on it for a task.
  std::deque<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mutex_);
  bool stopped_ ABSL_GUARDED_BY(mutex_) = false;
  // Started by the constructor; joined and cleared by Stop, which its
  // owner never runs on two threads at once.
  std::vector<std::thread> threads_;
};

// The server half every transport shares: the handler, the peer filter and
// the handler queue.
class RequestDispatcher {
 public:
  RequestDispatcher(Counters* counters, int handler_threads, size_t queue_capacity);

  void SetHandler(RequestHandler handler);
  PeerFilter& filter() { return filter_; }

  // Whether a request with this header (and reply address, for transports
  // that answer on their own connection) should be received at all; counts
  // the drop (no handler: unexpected; sender or address not allowed:
  // disallowed).
  bool Admit(const FrameHeader& header, std::string_view reply_address = "");
  // Queues the request for the handler. When the queue is full the caller
  // is answered RESOURCE_EXHAUSTED through `sink`.
  void Dispatch(Message request, std::shared_ptr<ResponseSink> sink);
  void Stop();

 private:
  Counters* const counters_;
  PeerFilter filter_;
  Mutex mutex_;
  std::shared_ptr<const RequestHandler> handler_ ABSL_GUARDED_BY(mutex_);
  std::atomic<bool> stopping_{false};
  WorkQueue queue_;
};

// Lower-case hex of `size` bytes, and back (InvalidArgument on odd length or
// a non-hex digit): how binary addresses travel in address strings.
std::string HexEncode(const void* data, size_t size);
absl::StatusOr<std::vector<uint8_t>> HexDecode(std::string_view hex);

}  // namespace dsv2::transport::internal
