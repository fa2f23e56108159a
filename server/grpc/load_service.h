// dsv2.internal.AttentionWorker over an Engine: the load an attention worker
// reports to the router, which chooses a worker per request from it.
//
// Thread safety: gRPC calls it from many threads; Engine::stats() is
// thread-safe and `health` must be too.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <utility>

#include "common/engine/engine.h"
#include "common/rpc/access.h"
#include "dsv2/internal/attention.grpc.pb.h"

namespace dsv2 {

class LoadService final : public internal::AttentionWorker::Service {
 public:
  // `engine` must outlive the service. `health` says whether the worker
  // takes new requests: OK, or why not (draining, the engine failed or
  // stalled, expert groups missing), reported as Load.serving and
  // Load.not_serving_reason.
  // `data_plane` (nullable) fills in the data-plane figures. On a cluster
  // plane (`policy`), only routers may ask.
  LoadService(const Engine* engine, std::function<absl::Status()> health,
              std::function<void(internal::DataPlaneStats*)> data_plane = nullptr,
              AccessPolicy policy = AccessPolicy::Open())
      : engine_(engine),
        health_(std::move(health)),
        data_plane_(std::move(data_plane)),
        policy_(std::move(policy)) {}

  grpc::Status GetLoad(grpc::ServerContext* context, const internal::GetLoadRequest* request,
                       internal::Load* response) override;

 private:
  const Engine* engine_;
  std::function<absl::Status()> health_;
  std::function<void(internal::DataPlaneStats*)> data_plane_;
  const AccessPolicy policy_;
  std::atomic<int64_t> calls_{0};  // GetLoad calls answered.
};

}  // namespace dsv2
