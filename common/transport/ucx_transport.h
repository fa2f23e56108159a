// The UCX data plane: UCP active messages between worker processes, on one
// host or across hosts. UCX picks the wire per UCX_TLS: TCP, shared memory
// (sysv/posix with cma for large messages), RDMA where present; eager or
// rendezvous per message size.
//
// Two ways to be reached, chosen by UcxTransportOptions::mode:
//
//   kListener  address "ucx://IP:PORT". A UCP listener on a TCP address
//              (port 0: the OS chooses; address() reports the bound port).
//              Callers connect through the listener; endpoints use
//              ERR_HANDLING_MODE_PEER, so a peer that dies or disconnects
//              fails the calls in flight to it with UNAVAILABLE at once.
//              UCX 1.13 only selects transports that can report peer
//              failure for such endpoints: TCP (and RDMA), not shared memory.
//   kLocal     address "ucx-local://PID@BOOT/HEX" (PID of the process, the
//              host's boot id, the UCP worker address). Same host only.
//              Callers connect to the worker address without peer-failure
//              mode, which lets UCX use shared memory (UCX_TLS=sm, or
//              posix,sysv,cma,self); a pidfd on the peer process stands in
//              for UCX's failure detection, so a dead peer again fails its
//              calls UNAVAILABLE at once. Requests carry the caller's own
//              local address after the frame header, and the server answers
//              on a connection it makes to that address (watched by a pidfd
//              too): the endpoint UCX creates on the server's side for such a
//              caller belongs to UCX, which may destroy it when the caller
//              goes, so it is never used.
//
// Any transport can call either kind of address.
//
// Threads: one progress thread owns the UCP worker and makes every UCP
// call; it sleeps in epoll on the worker's event fd, a wake-up eventfd and
// the peer pidfds, with a timeout at the next deadline. Call() and answers
// from handlers post commands to it. Requests are handed to a pool of
// handler threads (options.handler_threads; 0 runs them on the progress
// thread, for handlers that only queue work). Call callbacks run on the
// progress thread.
//
// Memory: one arena (options.pool_bytes) is registered once with
// ucp_mem_map; AllocatePayload hands out slots of it, and sends from it and
// rendezvous receives into it pass the memory handle so UCX does not
// register per message. Eager messages are copied out of UCX's receive
// buffer into a pool slot (they are small, and the copy lets the handler
// keep the payload as long as it likes).
//
// Timeouts: every Call has its deadline; every send (request or reply) must
// complete within options.send_timeout or its connection is failed; every
// rendezvous receive must complete within options.receive_timeout or it is
// abandoned (and its payload dropped when it lands).
//
// Thread safety: all methods are thread-safe. Shutdown must not be called
// from a callback or handler of the same transport.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/transport/core_transport.h"
#include "common/transport/transport.h"

namespace dsv2::transport {

namespace internal {
class UcxCore;
}  // namespace internal

struct UcxTransportOptions {
  enum class Mode { kListener, kLocal };

  PeerId id = 0;
  Mode mode = Mode::kListener;
  // kListener: "IPv4:PORT", "[IPv6]:PORT" or "HOST:PORT" to bind. Bind a
  // specific address: the bound address is what address() publishes.
  std::string listen_address = "127.0.0.1:0";
  int handler_threads = 1;
  size_t max_queued_requests = 4096;
  size_t max_calls_in_flight = 4096;
  size_t pool_bytes = 64 << 20;
  absl::Duration send_timeout = absl::Seconds(10);
  absl::Duration receive_timeout = absl::Seconds(10);
  // Keep polling the worker this long after the last event before sleeping
  // in epoll: lower latency for a CPU core.
  absl::Duration busy_poll = absl::ZeroDuration();
  // Frames with a larger payload are dropped as malformed.
  uint64_t max_payload_bytes = kMaxFramePayloadBytes;
};

class UcxTransport final : public internal::CoreTransport<internal::UcxCore> {
 public:
  // Initializes UCX (reading UCX_* environment variables), registers the
  // pool, opens the listener (kListener) and starts the progress thread.
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(UcxTransportOptions options);

  // The UCX transports carrying traffic to `peer_address` ("tcp/lo",
  // "sysv/memory", ...), once connected; for logs and tests.
  absl::StatusOr<std::string> DescribeConnection(std::string_view peer_address);

  // Sends `header` bytes (any length, any content) and `payload` to
  // `peer_address` as one frame message, outside any call: a raw sender for
  // fault-injection tests. Over a worker-address connection, bytes whose
  // type byte says dispatch are followed by this transport's reply address,
  // as Call's requests are. Returns once the send is posted.
  absl::Status SendRawForTesting(std::string_view peer_address, absl::Span<const uint8_t> header,
                                 absl::Span<const uint8_t> payload);

 private:
  explicit UcxTransport(std::shared_ptr<internal::UcxCore> core) : CoreTransport(std::move(core)) {}
};

// The frame AM id this transport registers; exposed so tests can inject raw
// messages.
inline constexpr unsigned kUcxFrameAmId = 0x44;

}  // namespace dsv2::transport
