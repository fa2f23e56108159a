// The in-process data plane: transports in one process that find each other
// through an InProcessNetwork, for dsv2-standalone and tests. It runs the
// same frame validation, call table, deadlines, peer filter and handler
// queue as the network transports; only the bytes do not move: the
// caller's payload buffer is handed to the handler, and the reply's buffer
// to the caller.
//
//   auto network = InProcessNetwork::Create();
//   auto expert = InProcessTransport::Create(network, {.id = 1}).value();
//   auto attention = InProcessTransport::Create(network, {.id = 0}).value();
//   attention->Call(expert->address(), ...);
//
// Addresses are "inproc://<name>" (a counter when no name is given).
// Deadlines are kept by one timer thread per transport; replies run the
// caller's callback on the thread that answered (the handler's), failures
// on the timer thread.
//
// Thread safety: all methods are thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/base/mutex.h"
#include "common/transport/core_transport.h"
#include "common/transport/transport.h"

namespace dsv2::transport {
namespace internal {
class InProcessEndpoint;
}  // namespace internal

struct InProcessTransportOptions {
  PeerId id = 0;
  std::string name;  // Address "inproc://<name>"; must be unique.
  // 0: handlers run on the calling thread inside Call, and so does the
  // callback of a call answered at once.
  int handler_threads = 1;
  size_t max_queued_requests = 4096;
  size_t max_calls_in_flight = 4096;
  size_t pool_bytes = 32 << 20;  // Arena for AllocatePayload (reused buffers).
};

class InProcessNetwork {
 public:
  static std::shared_ptr<InProcessNetwork> Create();

  // Delivers raw header bytes and a payload to the transport at `address`
  // as if a peer had sent them, with no way to answer (any answer is
  // dropped). For tests and fault injection: exercises the receiver's
  // decoding exactly as a network transport would.
  absl::Status SendRaw(std::string_view address, absl::Span<const uint8_t> header,
                       MessageBuffer payload);

 private:
  friend class InProcessTransport;
  friend class internal::InProcessEndpoint;
  using Endpoint = internal::InProcessEndpoint;
  InProcessNetwork() = default;
  absl::Status Register(const std::string& address, std::weak_ptr<Endpoint> endpoint);
  void Unregister(const std::string& address);
  std::shared_ptr<Endpoint> Find(std::string_view address);
  std::string NextName();

  Mutex mutex_;
  absl::flat_hash_map<std::string, std::weak_ptr<Endpoint>> endpoints_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_name_ ABSL_GUARDED_BY(mutex_) = 0;
};

class InProcessTransport final : public internal::CoreTransport<internal::InProcessEndpoint> {
 public:
  static absl::StatusOr<std::unique_ptr<InProcessTransport>> Create(
      std::shared_ptr<InProcessNetwork> network, InProcessTransportOptions options);

 private:
  explicit InProcessTransport(std::shared_ptr<internal::InProcessEndpoint> core) : CoreTransport(std::move(core)) {}
};

}  // namespace dsv2::transport
