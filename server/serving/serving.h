// What the processes that run an Engine share (dsv2-standalone and
// dsv2-attention): the engine and model flags, loading with progress logs,
// and the gRPC serving loop with health, signals and drain.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/experts/remote_experts.h"
#include "common/transport/ucx_transport.h"
#include "common/model/deepseek_v2.h"
#include "common/tensor/dtype.h"
#include "dsv2/internal/attention.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/grpc/generation_service.h"

namespace dsv2 {

// The engine options of the --kv_cache_mib, --block_size, --max_num_seqs,
// --max_batch_tokens, --max_waiting, --max_model_len, --prefix_caching and
// --micro_batches flags. InvalidArgument names a bad flag.
absl::StatusOr<EngineOptions> EngineOptionsFromFlags(const ModelConfig& config);

// --data_plane_dtype: the dtype of activations and partial sums on the data
// plane (bf16 or f32).
absl::StatusOr<DType> DataPlaneDTypeFromFlag();

// The stream bounds of the --max_streams, --stream_write_timeout_s and
// --stream_backlog_mib flags (policy and principal forwarding are the
// caller's). InvalidArgument names a bad flag.
absl::StatusOr<GenerationServiceOptions> StreamOptionsFromFlags(const EngineOptions& engine);

// Whether a checkpoint tensor belongs to a routed expert; if so, its layer
// and expert.
bool ParseRoutedExpertTensor(std::string_view name, int64_t* layer, int64_t* expert);

// The backend --backend names (kernels/backends.h); the error names the flag.
absl::StatusOr<Backend*> BackendFromFlag();

// Loads the model of `dir` on the --backend, making `residency` of its
// weights resident there, and, with --prefault, reads the tensors `want`
// accepts (all when null) into memory, logging progress.
absl::StatusOr<std::unique_ptr<DeepseekV2Model>> LoadModelForServing(
    const std::string& dir, const std::function<bool(std::string_view)>& want = nullptr,
    WeightResidency residency = WeightResidency::kAll);

struct ServeParams {
  std::string program;  // For messages: "dsv2-standalone".
  std::string model_dir;
  std::string listen;   // host:port; port 0: the OS chooses.
  std::shared_ptr<grpc::ServerCredentials> credentials;  // Null: plaintext.
  std::string port_file;
  Engine* engine = nullptr;
  GenerationService* generation = nullptr;  // Over `engine`; its health follows the engine.
  std::vector<grpc::Service*> services;     // Others to serve.
  // Extra readiness beyond the engine's health: OK, or why not (e.g. an
  // expert group has no live worker); null: always ready.
  std::function<absl::Status()> ready;
  // Once listening, with the bound port (e.g. to register with the
  // controller). A non-OK status ends serving with exit code 1.
  std::function<absl::Status(int port)> on_listening;
  // At SIGINT/SIGTERM, before new requests are refused (e.g. leave the
  // cluster so the router stops choosing this worker).
  std::function<void()> on_drain;
  const std::atomic<bool>* fatal = nullptr;  // Set by the engine's on_fatal.
  // Front ends of other protocols over the same API (the HTTP API): started
  // once the gRPC server listens, before the port file is written, with the
  // server's in-process channel (a failure ends serving with exit code 1);
  // stopped after the gRPC server has shut down.
  std::function<absl::Status(std::shared_ptr<grpc::Channel> in_process)> start_front_end;
  std::function<void()> stop_front_end;
};

// Why `engine` cannot compute now (Engine::Health with --stall_timeout_s),
// or OK.
absl::Status EngineHealth(const Engine& engine);

// Serves until SIGINT/SIGTERM (drain: health NOT_SERVING, new requests
// UNAVAILABLE, running ones finish within --drain_grace_s or are aborted;
// returns 0) or a fatal engine error (returns 1). Health is NOT_SERVING
// while EngineHealth or `ready` is not OK; each change is logged with the
// cause.
// The caller blocks SIGINT and SIGTERM in every thread before starting
// threads (BlockTerminationSignals, common/base/process.h).
int ServeEngine(const ServeParams& params);

// The data-plane keys a worker seals and opens frames with, from each
// cluster map: the map's epoch key first and the previous epoch's after it,
// so frames in flight across a controller restart still open; a new key
// seals only after kNewKeyHold, when every worker has it (FrameSealer). A
// map without a key (a plaintext cluster) turns sealing off.
class DataPlaneKeys {
 public:
  static constexpr absl::Duration kNewKeyHold = absl::Seconds(3);

  explicit DataPlaneKeys(transport::UcxTransport* transport) : transport_(transport) {}
  // Call from the map callback (one thread).
  void Apply(const ClusterMap& map);

 private:
  transport::UcxTransport* const transport_;
  std::vector<transport::FrameKey> keys_;
  bool applied_ = false;  // A map has been applied (and the mode logged).
};

// The data-plane figures of an attention worker (or dsv2-standalone) for
// its Load report.
void FillDataPlaneStats(const RemoteRoutedExperts& experts, const transport::Transport& transport,
                        internal::DataPlaneStats* out);

}  // namespace dsv2
