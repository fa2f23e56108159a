// The UCX data plane: UCP active messages between worker processes, on one
// host or across hosts, always connected by UCP worker address (never through
// UCX's connection-manager listener, which a stray TCP client can crash in
// UCX 1.13). Addresses travel in the cluster map, which only cluster members
// read over the authenticated control plane.
//
// Two ways to be reached, chosen by UcxTransportOptions::mode:
//
//   kTcp    address "ucx://IP:PORT/HEX": UCX's TCP transport on the one
//           network interface that holds IP (UCX_NET_DEVICES), listening on
//           PORT of IP only (UCX_TCP_PORT_RANGE; port 0: a free port is
//           chosen) for connections from other workers; HEX is the UCP
//           worker address callers connect to. Endpoints use
//           ERR_HANDLING_MODE_PEER, so a peer that dies or disconnects fails
//           the calls in flight to it with UNAVAILABLE at once. Across hosts.
//   kLocal  address "ucx-local://PID@BOOT/HEX" (PID of the process, the
//           host's boot id, the UCP worker address). Same host only, over
//           shared memory (sysv/posix with cma) and nothing else: no socket
//           listens. Callers connect without peer-failure mode (which would
//           rule shared memory out); a pidfd on the peer process stands in
//           for UCX's failure detection, so a dead peer again fails its calls
//           UNAVAILABLE at once.
//
// UCX_TLS (and UCX_NET_DEVICES) set in the environment override the
// transports and devices each mode picks, e.g. for RDMA; the bound then is
// UCX's, not this class's.
//
// Requests carry the caller's own address after the frame header, and a
// server answers on a connection it makes to that address (cached, and
// watched for failure like any other) — only when the sender's entry in the
// allowed peers lists exactly that address, so replies cannot be diverted.
// The endpoint UCX creates on the server's side for a caller belongs to UCX
// and is never used.
//
// Sealing (SetFrameKeys, common/transport/frame_seal.h): with keys, every
// frame sent is sealed (AES-256-GCM; the seal follows the header, the
// header and reply address are authenticated, the payload encrypted) and
// every frame received must open with one of the keys, or it is dropped and
// counted (unauthenticated_dropped) before a handler sees it.
//
// Threads: one progress thread owns the UCP worker and makes every UCP
// call; it sleeps in epoll on the worker's event fd, a wake-up eventfd and
// the peer pidfds, with a timeout at the next deadline. Call() and answers
// from handlers post commands to it (sealing runs on the posting thread).
// Requests are handed to a pool of handler threads (options.handler_threads;
// 0 runs them on the progress thread, for handlers that only queue work).
// Call callbacks run on the progress thread.
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
#include "common/transport/frame_seal.h"
#include "common/transport/transport.h"

namespace dsv2::transport {

namespace internal {
class UcxCore;
}  // namespace internal

struct UcxTransportOptions {
  enum class Mode { kTcp, kLocal };

  PeerId id = 0;
  Mode mode = Mode::kTcp;
  // kTcp: "IPv4:PORT" or "[IPv6]:PORT" to listen on (port 0: a free one);
  // a numeric address of one of this host's interfaces, which address()
  // publishes.
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
  // pool and starts the progress thread.
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(UcxTransportOptions options);

  // The UCX transports carrying traffic to `peer_address` ("tcp/lo",
  // "sysv/memory", ...), once connected; for logs and tests.
  absl::StatusOr<std::string> DescribeConnection(std::string_view peer_address);

  // Seals every frame from now on with keys[0] (keys[1] during
  // `hold_second`; replies with their request's key) and opens frames
  // sealed with any of `keys`; frames that are not sealed are dropped.
  // Empty: plaintext frames, as before any call. See FrameSealer.
  void SetFrameKeys(std::vector<FrameKey> keys,
                    absl::Duration hold_second = absl::ZeroDuration());

  // Sends `header` bytes (any length, any content) and `payload` to
  // `peer_address` as one frame message, outside any call and unsealed: a
  // raw sender for fault-injection tests. When the type byte says dispatch,
  // this transport's reply address goes after the first 64 bytes, as in
  // Call's requests. Returns once the send is posted.
  absl::Status SendRawForTesting(std::string_view peer_address, absl::Span<const uint8_t> header,
                                 absl::Span<const uint8_t> payload);

 private:
  explicit UcxTransport(std::shared_ptr<internal::UcxCore> core) : CoreTransport(std::move(core)) {}
};

// The frame AM id this transport registers; exposed so tests can inject raw
// messages.
inline constexpr unsigned kUcxFrameAmId = 0x44;

}  // namespace dsv2::transport
