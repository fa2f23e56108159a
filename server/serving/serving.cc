#include "server/serving/serving.h"

#include <charconv>
#include <chrono>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "common/base/process.h"
#include "common/rpc/grpc_options.h"
#include "kernels/backends.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

ABSL_FLAG(int64_t, kv_cache_mib, 1024, "Memory budget of the paged KV cache, in MiB.");
ABSL_FLAG(int64_t, block_size, 64, "Token positions per KV cache block.");
ABSL_FLAG(int64_t, max_num_seqs, 64, "Requests running at once, at most.");
ABSL_FLAG(int64_t, max_batch_tokens, 2048, "Tokens per engine step (prefill is chunked to fit).");
ABSL_FLAG(int64_t, max_waiting, 256, "Waiting requests at most; more get RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_model_len, 0, "Prompt + output tokens at most; 0: the model's context.");
ABSL_FLAG(bool, prefix_caching, true, "Share KV blocks of common prompt prefixes.");
ABSL_FLAG(int64_t, micro_batches, 1,
          "Micro-batches per step (1-4), run concurrently so that one computes while another's "
          "routed experts are on the data plane.");
ABSL_FLAG(std::string, data_plane_dtype, "f32",
          "Activations and partial sums on the data plane: f32 (exact: the numbers of dsv2 "
          "generate) or bf16 (half the bytes; rounds, so greedy tokens may differ; "
          "docs/performance.md).");
ABSL_FLAG(double, drain_grace_s, 30, "On SIGTERM, seconds running requests may take to finish.");
ABSL_FLAG(double, stall_timeout_s, 60,
          "Health turns NOT_SERVING when work is pending and no step finished for this long.");
ABSL_FLAG(bool, prefault, true, "Read the weights this process needs into memory before serving.");
ABSL_FLAG(int64_t, max_streams, 0,
          "Generate streams open at once, at most, read by their clients or not (0: "
          "--max_num_seqs + --max_waiting); more get RESOURCE_EXHAUSTED.");
ABSL_FLAG(double, stream_write_timeout_s, 30,
          "A client that does not take a message of its stream for this long is cut off.");
ABSL_FLAG(int64_t, stream_backlog_mib, 4,
          "A client whose stream has more than this much output waiting is cut off.");
ABSL_FLAG(std::string, backend, "cpu",
          "Where the model computes: cpu, or cuda (CUDA builds, one GPU; docs/gpu.md).");
ABSL_FLAG(std::string, weight_check, "cheap",
          "Scan the weights for NaN and infinity at load: off, cheap (norms and MoE routers) or "
          "full (every tensor this process reads).");

namespace dsv2 {

using namespace std::chrono_literals;

absl::StatusOr<EngineOptions> EngineOptionsFromFlags(const ModelConfig& config) {
  EngineOptions options{
      .block_size = absl::GetFlag(FLAGS_block_size),
      .kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_mib) << 20,
      .max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs),
      .max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens),
      .max_waiting = absl::GetFlag(FLAGS_max_waiting),
      .max_model_len = absl::GetFlag(FLAGS_max_model_len),
      .prefix_caching = absl::GetFlag(FLAGS_prefix_caching),
      .micro_batches = absl::GetFlag(FLAGS_micro_batches),
  };
  if (options.block_size < 1 || options.max_num_seqs < 1 || options.max_batch_tokens < 1 ||
      options.max_waiting < 0) {
    return absl::InvalidArgumentError(
        "--block_size, --max_num_seqs and --max_batch_tokens must be positive, --max_waiting >= 0");
  }
  if (PagedKvCache::BlocksForBudget(config, options.block_size, options.kv_cache_bytes) < 1) {
    return absl::InvalidArgumentError("--kv_cache_mib must hold at least one block");
  }
  if (options.micro_batches < 1 || options.micro_batches > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("--micro_batches must be in [1, 4], not ", options.micro_batches));
  }
  return options;
}

absl::StatusOr<DType> DataPlaneDTypeFromFlag() {
  const std::string name = absl::GetFlag(FLAGS_data_plane_dtype);
  if (name == "bf16") return DType::kBF16;
  if (name == "f32") return DType::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat("--data_plane_dtype must be bf16 or f32, not '", name, "'"));
}

absl::StatusOr<GenerationServiceOptions> StreamOptionsFromFlags(const EngineOptions& engine) {
  GenerationServiceOptions options;
  options.max_streams = absl::GetFlag(FLAGS_max_streams);
  if (options.max_streams == 0) options.max_streams = engine.max_num_seqs + engine.max_waiting;
  const double write_timeout = absl::GetFlag(FLAGS_stream_write_timeout_s);
  const int64_t backlog = absl::GetFlag(FLAGS_stream_backlog_mib);
  if (options.max_streams < 1 || !(write_timeout > 0) || backlog < 1) {
    return absl::InvalidArgumentError(
        "--max_streams must be >= 0, --stream_write_timeout_s > 0 and --stream_backlog_mib >= 1");
  }
  options.write_timeout = absl::Seconds(write_timeout);
  options.max_backlog_bytes = static_cast<size_t>(backlog) << 20;
  return options;
}

bool ParseRoutedExpertTensor(std::string_view name, int64_t* layer, int64_t* expert) {
  // model.layers.{L}.mlp.experts.{E}.{gate,up,down}_proj.weight
  auto number = [&](std::string_view prefix, int64_t* out) {
    if (!name.starts_with(prefix)) return false;
    name.remove_prefix(prefix.size());
    const auto [end, error] = std::from_chars(name.data(), name.data() + name.size(), *out);
    if (error != std::errc() || end == name.data()) return false;
    name.remove_prefix(end - name.data());
    return true;
  };
  return number("model.layers.", layer) && number(".mlp.experts.", expert) &&
         name.starts_with(".");
}

absl::StatusOr<Backend*> BackendFromFlag() {
  const absl::StatusOr<Backend*> backend = BackendByName(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) {
    return absl::Status(backend.status().code(),
                        absl::StrCat("--backend: ", backend.status().message()));
  }
  return backend;
}

absl::StatusOr<std::unique_ptr<DeepseekV2Model>> LoadModelForServing(
    const std::string& dir, const std::function<bool(std::string_view)>& want,
    WeightResidency residency) {
  const auto start = std::chrono::steady_clock::now();
  const auto check = ParseWeightCheck(absl::GetFlag(FLAGS_weight_check));
  if (!check.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--weight_check ", check.status().message()));
  }
  const absl::StatusOr<Backend*> backend = BackendFromFlag();
  if (!backend.ok()) return backend.status();
  auto model = DeepseekV2Model::Load(dir, {.weight_check = *check,
                                           .full_check_filter = want,
                                           .backend = *backend,
                                           .residency = residency});
  if (!model.ok()) return model.status();
  // A backend with its own memory read the weights when it made them resident.
  if (absl::GetFlag(FLAGS_prefault) && (*model)->backend().host_memory()) {
    auto last_log = start;
    const int64_t bytes = (*model)->checkpoint().Prefault(
        [&](int64_t done, int64_t total) {
          const auto now = std::chrono::steady_clock::now();
          if (now - last_log >= 2s || done == total) {
            DSV2_LOG(INFO) << absl::StrFormat("reading weights: %.1f%% of %.2f GB",
                                              100.0 * done / total, total / 1e9);
            last_log = now;
          }
        },
        want);
    // Timed before reading /proc/self/smaps for the huge-page share.
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    DSV2_LOG(INFO) << absl::StrFormat(
        "%.2f GB of %.2f GB of weights in memory (%.2f GB on huge pages) in %.2f s", bytes / 1e9,
        (*model)->checkpoint().total_bytes() / 1e9, (*model)->checkpoint().HugePageBytes() / 1e9,
        seconds);
  }
  return model;
}

absl::Status EngineHealth(const Engine& engine) {
  return engine.Health(std::chrono::milliseconds(
      static_cast<int64_t>(absl::GetFlag(FLAGS_stall_timeout_s) * 1000)));
}

void DataPlaneKeys::Apply(const ClusterMap& map) {
  std::vector<transport::FrameKey> keys;
  if (!map.data_plane_key.empty()) {
    transport::FrameKey key{.id = map.epoch};
    std::copy(map.data_plane_key.begin(), map.data_plane_key.end(), key.secret.begin());
    keys.push_back(key);
    for (const transport::FrameKey& old : keys_) {
      if (old.id != key.id) {
        keys.push_back(old);
        break;
      }
    }
  }
  if (applied_ && keys.size() == keys_.size() &&
      std::equal(keys.begin(), keys.end(), keys_.begin(), [](const auto& a, const auto& b) {
        return a.id == b.id && a.secret == b.secret;
      })) {
    return;
  }
  DSV2_LOG(INFO) << "data plane: "
                 << (keys.empty() ? "plaintext frames (no key in the cluster map)"
                                  : absl::StrCat("frames sealed with the key of epoch ", keys[0].id,
                                                 keys.size() > 1
                                                     ? " in 3 s (the previous seals until then, "
                                                       "and opens after)"
                                                     : ""));
  const bool rotated = keys.size() > 1;
  applied_ = true;
  keys_ = keys;
  transport_->SetFrameKeys(std::move(keys), rotated ? kNewKeyHold : absl::ZeroDuration());
}

void FillDataPlaneStats(const RemoteRoutedExperts& experts, const transport::Transport& transport,
                        internal::DataPlaneStats* out) {
  const RemoteRoutedExperts::Stats stats = experts.stats();
  out->set_moe_calls(stats.calls);
  out->set_tokens(stats.tokens);
  out->set_token_workers(stats.token_workers);
  out->set_max_workers_per_token(stats.max_workers_per_token);
  out->set_resends(stats.resends);
  out->set_failures(stats.failures);
  out->set_attempt_timeouts(stats.attempt_timeouts);
  const transport::TransportCounters counters = transport.counters();
  out->set_messages_sent(counters.messages_sent);
  out->set_bytes_sent(counters.bytes_sent);
  out->set_bytes_received(counters.bytes_received);
}

int ServeEngine(const ServeParams& params) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  ConfigureServer(&builder);
  int port = 0;
  builder.AddListeningPort(params.listen,
                           params.credentials ? params.credentials
                                              : grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(params.generation);
  for (grpc::Service* service : params.services) builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    DSV2_LOG(ERROR) << params.program << ": cannot listen on " << params.listen;
    return 1;
  }
  Engine& engine = *params.engine;
  auto why_not = [&] {
    absl::Status status = EngineHealth(engine);
    if (status.ok() && params.ready) status = params.ready();
    return status;
  };
  // "" answers for the process, the service name for the API; both follow
  // the engine and the extra readiness, and turn NOT_SERVING when draining.
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  const absl::Status cause = why_not();
  bool serving = cause.ok();
  health->SetServingStatus(serving);
  health->SetServingStatus(v1::Generation::service_full_name(), serving);
  if (!serving) DSV2_LOG(INFO) << "health: NOT_SERVING until ready: " << cause.message();
  const std::string host = params.listen.substr(0, params.listen.rfind(':'));
  DSV2_LOG(INFO) << params.program << ": serving " << params.model_dir << " on " << host << ":"
                 << port;
  if (params.on_listening) {
    if (absl::Status s = params.on_listening(port); !s.ok()) {
      DSV2_LOG(ERROR) << params.program << ": " << s;
      server->Shutdown(std::chrono::system_clock::now() + 2s);
      return 1;
    }
  }
  if (params.start_front_end) {
    if (absl::Status s = params.start_front_end(server->InProcessChannel(grpc::ChannelArguments()));
        !s.ok()) {
      DSV2_LOG(ERROR) << params.program << ": " << s.message();
      server->Shutdown(std::chrono::system_clock::now() + 2s);
      return 1;
    }
  }
  WritePortFile(params.port_file, port);

  while (true) {
    const int signal = WaitForTerminationSignal(absl::Milliseconds(50));
    if (params.fatal != nullptr && *params.fatal) {
      health->Shutdown();
      DSV2_LOG(ERROR) << "fatal engine error: " << engine.failure() << "; shutting down";
      server->Shutdown(std::chrono::system_clock::now() + 2s);
      if (params.stop_front_end) params.stop_front_end();
      return 1;
    }
    if (signal != 0) {
      DSV2_LOG(INFO) << TerminationSignalName(signal) << ": draining";
      break;
    }
    // Logged when serving turns, with the cause (not each time the cause
    // changes: a stall's message counts seconds).
    const absl::Status now = why_not();
    if (now.ok() != serving) {
      if (now.ok()) {
        DSV2_LOG(INFO) << "health: SERVING";
      } else {
        DSV2_LOG(WARNING) << "health: NOT_SERVING: " << now.message();
      }
      serving = now.ok();
      health->SetServingStatus(serving);
      health->SetServingStatus(v1::Generation::service_full_name(), serving);
    }
  }

  if (params.on_drain) params.on_drain();
  // Refuse new requests before health says so, so that a client that sees
  // NOT_SERVING is never admitted.
  engine.StopAccepting();
  health->Shutdown();
  const auto grace = std::chrono::duration<double>(absl::GetFlag(FLAGS_drain_grace_s));
  const auto drain_start = std::chrono::steady_clock::now();
  while (engine.num_active() > 0 && std::chrono::steady_clock::now() - drain_start < grace) {
    std::this_thread::sleep_for(50ms);
  }
  if (engine.num_active() > 0) {
    DSV2_LOG(WARNING) << "grace period over: aborting " << engine.num_active() << " request(s)";
    engine.AbortAll();
  }
  // Let the streams send their last events; until then late requests are
  // still answered UNAVAILABLE rather than cut off by the shutdown.
  const auto streams_deadline = std::chrono::steady_clock::now() + 5s;
  while (params.generation->active_streams() > 0 &&
         std::chrono::steady_clock::now() < streams_deadline) {
    std::this_thread::sleep_for(20ms);
  }
  server->Shutdown(std::chrono::system_clock::now() + 2s);
  if (params.stop_front_end) params.stop_front_end();
  DSV2_LOG(INFO) << "drained; exiting";
  return 0;
}

}  // namespace dsv2
