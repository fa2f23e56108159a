// Member definitions of CoreTransport<Core>; included by the .cc that
// defines Core, followed by `template class CoreTransport<Core>;`.
#pragma once

#include "common/transport/core_transport.h"

namespace dsv2::transport::internal {

template <typename Core>
CoreTransport<Core>::~CoreTransport() {
  core_->Shutdown();
}
template <typename Core>
std::string CoreTransport<Core>::address() const {
  return core_->address();
}
template <typename Core>
PeerId CoreTransport<Core>::id() const {
  return core_->id();
}
template <typename Core>
void CoreTransport<Core>::SetRequestHandler(RequestHandler handler) {
  core_->dispatcher().SetHandler(std::move(handler));
}
template <typename Core>
void CoreTransport<Core>::SetAllowedPeers(AllowedPeers peers) {
  core_->dispatcher().filter().Set(std::move(peers));
}
template <typename Core>
void CoreTransport<Core>::AllowAllPeers() {
  core_->dispatcher().filter().AllowAll();
}
template <typename Core>
MessageBuffer CoreTransport<Core>::AllocatePayload(size_t bytes) {
  return core_->Allocate(bytes);
}
template <typename Core>
void CoreTransport<Core>::Call(std::string_view peer_address, Message request, absl::Time deadline,
                               CallCallback done) {
  core_->Call(peer_address, std::move(request), deadline, std::move(done));
}
template <typename Core>
TransportCounters CoreTransport<Core>::counters() const {
  return core_->counters().Snapshot();
}
template <typename Core>
void CoreTransport<Core>::Shutdown() {
  core_->Shutdown();
}

}  // namespace dsv2::transport::internal
