#include "common/rpc/grpc_options.h"

#include "grpcpp/resource_quota.h"

namespace dsv2 {

void SetClientKeepalive(grpc::ChannelArguments* args) {
  args->SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args->SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  // Long watches carry no data for minutes; keep pinging them.
  args->SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
}

void ConfigureServer(grpc::ServerBuilder* builder, const ServerSettings& settings) {
  // gRPC's default answers pings more often than every 5 minutes with GOAWAY.
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              kKeepaliveTimeMs / 2);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder->SetMaxReceiveMessageSize(settings.max_receive_bytes);
  grpc::ResourceQuota quota("dsv2-server");
  quota.SetMaxThreads(settings.max_threads);
  builder->SetResourceQuota(quota);
}

std::shared_ptr<grpc::Channel> NewClusterChannel(
    const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials,
    int first_backoff_ms, int max_backoff_ms) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, first_backoff_ms);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, first_backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  SetClientKeepalive(&args);
  return grpc::CreateCustomChannel(address, std::move(credentials), args);
}

}  // namespace dsv2
