// The data plane between attention workers and expert workers.
//
// A Transport is one worker's endpoint. As a client (attention worker) it
// Calls a peer, addressed by the string that peer published in the cluster
// map, with a dispatch Message and gets back the peer's combine Message (or
// an error) through a callback, with many calls in flight. As a server
// (expert worker) it runs a RequestHandler for every dispatch that arrives
// and sends whatever the handler answers through its IncomingRequest.
//
//   auto t = UcxTransport::Create({.id = 3});          // or InProcessTransport
//   t->SetRequestHandler([](IncomingRequest request) { ... request.Respond(...); });
//   publish(t->address());
//   t->Call(peer_address, std::move(dispatch), absl::Now() + absl::Milliseconds(50),
//           [](absl::StatusOr<Message> reply) { ... });
//
// Guarantees every implementation gives (tests/transport_conformance_test.cc):
// - `done` runs exactly once per Call: with the combine reply, with the
//   status an error frame carried, DEADLINE_EXCEEDED at the deadline,
//   UNAVAILABLE when the peer is unreachable or fails with the call in
//   flight, INVALID_ARGUMENT for a request that is not a valid dispatch,
//   INTERNAL for a reply that does not answer the request (wrong shape, a
//   malformed error frame), RESOURCE_EXHAUSTED when too many calls are in
//   flight, CANCELLED at Shutdown.
// - A reply that arrives after its call ended is dropped and counted
//   (late_replies_dropped); it never reaches the caller.
// - Incoming messages that fail to decode are dropped and counted
//   (malformed_dropped); messages nobody waits for (a reply to no call, a
//   request with no handler installed) are dropped and counted
//   (unexpected_dropped); requests from a sender id outside the allowed set
//   are dropped and counted (disallowed_dropped), and their caller times out.
//   None of these crash or stop the transport.
//
// Peer identity is the `sender` worker id stamped into every header from
// the transport's own id, checked against the allowed peers (membership);
// UCX frames are also sealed with the cluster's key (frame_seal.h), which is
// what authenticates them.
//
// Threading: every method is thread-safe. `done` callbacks and request
// handlers run on transport threads (never inline inside Call, except after
// Shutdown, when Call fails inline with CANCELLED); they must not block for
// long. A handler may keep its IncomingRequest and answer later from any
// thread. Callbacks of one transport may run concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/transport/frame.h"
#include "common/transport/message.h"

namespace dsv2::transport {

// A worker's id in the cluster map, stamped as `sender` in every header.
using PeerId = uint32_t;

// The senders a server serves, each with the address the cluster map
// publishes for it ("" where the transport has no use for it). A transport
// that answers on a connection of its own (UCX) answers only a request that
// names exactly that address, so nobody can divert a peer's replies.
using AllowedPeers = absl::flat_hash_map<PeerId, std::string>;

// Per-transport counters (monotonic since creation).
struct TransportCounters {
  uint64_t messages_sent = 0;      // Frames whose send completed.
  uint64_t bytes_sent = 0;         // Header + payload bytes of those.
  uint64_t messages_received = 0;  // Frames that decoded and were accepted.
  uint64_t bytes_received = 0;
  uint64_t calls_started = 0;
  uint64_t calls_succeeded = 0;  // Ended with a combine reply.
  uint64_t calls_failed = 0;     // Ended any other way.
  uint64_t timeouts = 0;         // Calls ended with DEADLINE_EXCEEDED.
  uint64_t peer_failures = 0;    // Calls ended UNAVAILABLE (peer unreachable or died).
  uint64_t late_replies_dropped = 0;
  uint64_t malformed_dropped = 0;
  uint64_t unexpected_dropped = 0;
  uint64_t disallowed_dropped = 0;
  uint64_t unauthenticated_dropped = 0;  // Unsealed or wrongly sealed frames (sealing on).
  uint64_t overload_dropped = 0;    // Requests refused because the handler queue was full.
  uint64_t error_replies_sent = 0;  // Error frames answered to requests.
  uint64_t send_timeouts = 0;       // Sends not completed within the send timeout.
  uint64_t receive_timeouts = 0;    // Payload receives not completed within the receive timeout.
  uint64_t responses_dropped = 0;   // Replies a handler produced for a peer that had gone.

  std::string ToString() const;
};

// Frames exchanged with one peer, counted by whoever talks to it (header +
// payload bytes).
struct PeerTraffic {
  int64_t messages_sent = 0;
  int64_t bytes_sent = 0;
  int64_t messages_received = 0;
  int64_t bytes_received = 0;

  PeerTraffic& operator+=(const PeerTraffic& other) {
    messages_sent += other.messages_sent;
    bytes_sent += other.bytes_sent;
    messages_received += other.messages_received;
    bytes_received += other.bytes_received;
    return *this;
  }
};

class ResponseSink;

// One dispatch received by a server, handed to its RequestHandler. Move-only.
// The handler answers it once, now or later from any thread; a request
// destroyed unanswered is answered INTERNAL so the caller does not wait for
// its deadline.
class IncomingRequest {
 public:
  IncomingRequest(FrameHeader header, MessageBuffer payload, std::shared_ptr<ResponseSink> sink);
  IncomingRequest(IncomingRequest&&) noexcept;
  IncomingRequest& operator=(IncomingRequest&&) noexcept;
  ~IncomingRequest();

  PeerId peer() const { return header_.sender; }
  const FrameHeader& header() const { return header_; }
  absl::Span<const uint8_t> payload() const { return payload_.span(); }
  // Releases the payload buffer early (e.g. once it has been copied into a
  // batch), or takes ownership of it.
  MessageBuffer TakePayload() { return std::move(payload_); }

  // A payload buffer for the reply, from the transport's registered pool.
  MessageBuffer AllocatePayload(size_t bytes);
  // A combine reply of this request's shape in `dtype`, its payload from
  // the pool, for the handler to fill and Respond with.
  absl::StatusOr<Message> NewCombine(DType dtype);

  // Sends `response`, a combine frame answering this request (see
  // NewCombine); request_id and sender are filled in. If `response` is not a
  // valid combine of the request's token count and hidden size, the caller
  // is sent INTERNAL instead and the problem is returned. FailedPrecondition
  // if already answered.
  absl::Status Respond(Message response);
  // Answers with an error frame carrying `status` (not OK).
  void RespondError(const absl::Status& status);
  bool answered() const { return sink_ == nullptr; }

 private:
  FrameHeader header_;
  MessageBuffer payload_;
  std::shared_ptr<ResponseSink> sink_;  // Null once answered.
};

// Where a transport sends an IncomingRequest's answer. Implemented by each
// transport; Send may be called from any thread, once per request.
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  // `response` is a validated combine or error frame whose request_id is set.
  virtual void Send(Message response) = 0;
  virtual MessageBuffer AllocatePayload(size_t bytes) = 0;
};

using RequestHandler = std::function<void(IncomingRequest request)>;
using CallCallback = absl::AnyInvocable<void(absl::StatusOr<Message> reply)>;

class Transport {
 public:
  virtual ~Transport() = default;

  // This transport's address, to publish in the cluster map.
  virtual std::string address() const = 0;
  // The worker id stamped as `sender` into every frame sent.
  virtual PeerId id() const = 0;

  // Installs the handler for incoming dispatches (replacing any earlier
  // one). Until one is installed, dispatches are dropped as unexpected.
  virtual void SetRequestHandler(RequestHandler handler) = 0;

  // Serves only requests whose sender is in `peers` (the current cluster
  // map) and, where the transport uses it, whose reply address is the one
  // listed; others are dropped and counted. Replaces the previous set.
  virtual void SetAllowedPeers(AllowedPeers peers) = 0;
  // Serves every sender (the initial state).
  virtual void AllowAllPeers() = 0;

  // A payload buffer from this transport's registered pool (heap when the
  // pool is exhausted), to build requests in without a staging copy.
  virtual MessageBuffer AllocatePayload(size_t bytes) = 0;

  // Sends `request` (a dispatch; request_id and sender are overwritten) to
  // the transport published as `peer_address`, and calls `done` once with
  // the reply or the failure (see the guarantees above). Connections are
  // made on first use and cached.
  virtual void Call(std::string_view peer_address, Message request, absl::Time deadline,
                    CallCallback done) = 0;

  virtual TransportCounters counters() const = 0;

  // Stops serving and sending: in-flight calls end CANCELLED, queued
  // requests are dropped, later answers are discarded. Waits for running
  // handlers and callbacks to return. Idempotent; the destructor calls it.
  virtual void Shutdown() = 0;
};

// Call with a future instead of a callback.
std::future<absl::StatusOr<Message>> CallFuture(Transport& transport, std::string_view peer_address,
                                                Message request, absl::Time deadline);

// Call and wait for the reply (the wait is bounded by the deadline).
absl::StatusOr<Message> CallAndWait(Transport& transport, std::string_view peer_address,
                                    Message request, absl::Duration timeout);

}  // namespace dsv2::transport
