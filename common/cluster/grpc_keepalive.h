// gRPC keepalive between the cluster's processes: a peer whose host
// vanishes without a TCP reset (power loss, a partition, a pod moved) is
// noticed within seconds instead of when TCP gives up (~15 minutes), so
// streams to it fail and watches reconnect.
#pragma once

#include "grpcpp/grpcpp.h"

namespace dsv2 {

inline constexpr int kKeepaliveTimeMs = 10'000;    // Ping a quiet connection this often.
inline constexpr int kKeepaliveTimeoutMs = 5'000;  // Unanswered this long: the peer is gone.

// For channels to cluster processes (router → attention, workers → controller).
inline void SetClientKeepalive(grpc::ChannelArguments* args) {
  args->SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args->SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  // Long watches carry no data for minutes; keep pinging them.
  args->SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
}

// For servers that cluster processes call: accept those pings (gRPC's
// default answers pings more often than every 5 minutes with GOAWAY).
inline void AllowClientKeepalive(grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              kKeepaliveTimeMs / 2);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
}

}  // namespace dsv2
