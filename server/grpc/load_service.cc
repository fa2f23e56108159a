#include "server/grpc/load_service.h"

#include <algorithm>

namespace dsv2 {

grpc::Status LoadService::GetLoad(grpc::ServerContext* context,
                                  const internal::GetLoadRequest* request,
                                  internal::Load* response) {
  if (absl::StatusOr<Caller> caller = policy_.Authorize(*context, {Role::kRouter}, "GetLoad");
      !caller.ok()) {
    return grpc::Status(static_cast<grpc::StatusCode>(caller.status().code()),
                        std::string(caller.status().message()));
  }
  const EngineStats stats = engine_->stats();
  response->set_kv_blocks_total(stats.kv_blocks_total);
  // The figures are copied at different moments of a step, so the clamp
  // keeps a momentary overlap from reading as negative.
  response->set_kv_blocks_free(
      std::max<int64_t>(0, stats.kv_blocks_total - stats.kv_blocks_used - stats.kv_blocks_cached));
  response->set_kv_blocks_cached(stats.kv_blocks_cached);
  response->set_running(stats.running);
  response->set_waiting(stats.waiting);
  response->set_block_size(engine_->block_size());
  const absl::Status health = health_();
  response->set_serving(health.ok());
  response->set_not_serving_reason(std::string(health.message()));
  response->set_generation_tokens(stats.generation_tokens);
  if (data_plane_) data_plane_(response->mutable_data_plane());
  response->set_get_load_calls(calls_.fetch_add(1, std::memory_order_relaxed) + 1);
  return grpc::Status::OK;
}

}  // namespace dsv2
