// The Transport interface over a core object that does the work (UcxCore,
// NcclCore, InProcessEndpoint). Each transport is this forwarding plus its
// own Create; the member definitions are in core_transport_impl.h, which
// each transport's .cc includes and instantiates for its core, so the
// public headers need only a declaration of the core.
#pragma once

#include <memory>

#include "common/transport/transport.h"

namespace dsv2::transport::internal {

template <typename Core>
class CoreTransport : public Transport {
 public:
  ~CoreTransport() override;  // Shuts the core down.

  std::string address() const override;
  PeerId id() const override;
  void SetRequestHandler(RequestHandler handler) override;
  void SetAllowedPeers(AllowedPeers peers) override;
  void AllowAllPeers() override;
  MessageBuffer AllocatePayload(size_t bytes) override;
  void Call(std::string_view peer_address, Message request, absl::Time deadline,
            CallCallback done) override;
  TransportCounters counters() const override;
  void Shutdown() override;

 protected:
  explicit CoreTransport(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  std::shared_ptr<Core> core_;
};

}  // namespace dsv2::transport::internal
