// What every gRPC server and cluster channel of the project sets the same
// way: keepalive between the cluster's processes, one listening socket per
// server, bounded messages and threads, quick reconnects.
#pragma once

#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"

namespace dsv2 {

// A peer whose host vanishes without a TCP reset (power loss, a partition,
// a pod moved) is noticed within seconds instead of when TCP gives up
// (~15 minutes), so streams to it fail and watches reconnect.
inline constexpr int kKeepaliveTimeMs = 10'000;    // Ping a quiet connection this often.
inline constexpr int kKeepaliveTimeoutMs = 5'000;  // Unanswered this long: the peer is gone.

// For channels to cluster processes (router → attention, workers → controller).
void SetClientKeepalive(grpc::ChannelArguments* args);

struct ServerSettings {
  // Larger request messages are refused (RESOURCE_EXHAUSTED) before parsing.
  int max_receive_bytes = 4 << 20;
  // Threads of the synchronous API at most, across the server; a call that
  // finds none free is answered RESOURCE_EXHAUSTED. Callback-API methods do
  // not hold a thread while they wait.
  int max_threads = 256;
};

// Applies the project's server settings to `builder`:
// - accept the cluster's keepalive pings;
// - no SO_REUSEPORT: gRPC 1.51 binds a clone of a port-0 listener to a
//   second, random port (grpc/grpc#24730), and with it another process of
//   the same user could bind our port and take our connections;
// - the message and thread bounds of `settings`.
void ConfigureServer(grpc::ServerBuilder* builder, const ServerSettings& settings = {});

// A channel to another process of the cluster: keepalive, and a reconnect
// backoff from `first_backoff` growing to at most `max_backoff` (default
// 100 ms to 1 s), so a restarted peer at the same address is reached again
// within a second rather than after gRPC's default of up to two minutes.
std::shared_ptr<grpc::Channel> NewClusterChannel(
    const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials,
    int first_backoff_ms = 100, int max_backoff_ms = 1000);

}  // namespace dsv2
