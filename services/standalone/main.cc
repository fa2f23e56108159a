// dsv2-standalone: loads a model and serves dsv2.v1.Generation, with
// grpc.health.v1 and server reflection, from one process.
//
// SIGINT/SIGTERM drain: health turns NOT_SERVING, new requests get
// UNAVAILABLE, running ones may finish within --drain_grace_s and are then
// aborted, and the process exits 0. A fatal engine error turns health
// NOT_SERVING and exits 1.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "common/engine/engine.h"
#include "common/model/deepseek_v2.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "services/frontend/generation_service.h"
#include "services/frontend/text_frontend.h"

ABSL_FLAG(std::string, model, "", "Model directory: config.json and safetensors weights.");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "Address to serve on; port 0 lets the OS choose (see --port_file).");
ABSL_FLAG(std::string, port_file, "", "Write the bound port to this file once serving.");
ABSL_FLAG(int64_t, kv_cache_mib, 1024, "Memory budget of the paged KV cache, in MiB.");
ABSL_FLAG(int64_t, block_size, 64, "Token positions per KV cache block.");
ABSL_FLAG(int64_t, max_num_seqs, 64, "Requests running at once, at most.");
ABSL_FLAG(int64_t, max_batch_tokens, 2048, "Tokens per engine step (prefill is chunked to fit).");
ABSL_FLAG(int64_t, max_waiting, 256, "Waiting requests at most; more get RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_model_len, 0, "Prompt + output tokens at most; 0: the model's context.");
ABSL_FLAG(bool, prefix_caching, true, "Share KV blocks of common prompt prefixes.");
ABSL_FLAG(double, drain_grace_s, 30, "On SIGTERM, seconds running requests may take to finish.");
ABSL_FLAG(double, stall_timeout_s, 60,
          "Health turns NOT_SERVING when work is pending and no step finished for this long.");
ABSL_FLAG(bool, prefault, true, "Read all weights into memory before serving.");

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

int Serve() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) {
    std::cerr << "dsv2-standalone: --model is required (see --help)\n";
    return 2;
  }
  auto model = DeepseekV2Model::Load(model_dir);
  if (!model.ok()) {
    std::cerr << "dsv2-standalone: cannot load " << model_dir << ": " << model.status().message()
              << "\n";
    return 1;
  }
  if (absl::GetFlag(FLAGS_prefault)) {
    const auto start = std::chrono::steady_clock::now();
    auto last_log = start;
    (*model)->checkpoint().Prefault([&](int64_t done, int64_t total) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_log >= 2s || done == total) {
        DSV2_LOG(INFO) << absl::StrFormat("reading weights: %.1f%% of %.2f GB", 100.0 * done / total,
                                          total / 1e9);
        last_log = now;
      }
    });
    DSV2_LOG(INFO) << absl::StrFormat(
        "weights in memory in %.2f s",
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }

  std::atomic<bool> fatal{false};
  EngineOptions options{
      .block_size = absl::GetFlag(FLAGS_block_size),
      .kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_mib) << 20,
      .max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs),
      .max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens),
      .max_waiting = absl::GetFlag(FLAGS_max_waiting),
      .max_model_len = absl::GetFlag(FLAGS_max_model_len),
      .prefix_caching = absl::GetFlag(FLAGS_prefix_caching),
      .on_fatal = [&fatal](const absl::Status&) { fatal = true; },
  };
  if (options.block_size < 1 || options.max_num_seqs < 1 || options.max_batch_tokens < 1 ||
      options.max_waiting < 0 ||
      PagedKvCache::BlocksForBudget((*model)->config(), options.block_size, options.kv_cache_bytes) < 1) {
    std::cerr << "dsv2-standalone: --block_size, --max_num_seqs and --max_batch_tokens must be "
                 "positive and --kv_cache_mib must hold at least one block\n";
    return 2;
  }
  auto text = TextFrontend::LoadIfPresent(model_dir);
  if (!text.ok()) {
    std::cerr << "dsv2-standalone: cannot load the tokenizer of " << model_dir << ": "
              << text.status().message() << "\n";
    return 1;
  }
  Engine engine(model->get(), text->get(), options);
  GenerationService service(&engine, text->get(), model_dir);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(16 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "dsv2-standalone: cannot listen on " << absl::GetFlag(FLAGS_listen) << "\n";
    return 1;
  }
  // "" answers for the process, the service name for the API; both follow
  // the engine (NOT_SERVING when it stalls or fails, or while draining).
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(v1::Generation::service_full_name(), true);
  health->SetServingStatus(true);
  const std::string host = absl::GetFlag(FLAGS_listen).substr(0, absl::GetFlag(FLAGS_listen).rfind(':'));
  DSV2_LOG(INFO) << "serving " << model_dir << " on " << host << ":" << port;
  if (const std::string path = absl::GetFlag(FLAGS_port_file); !path.empty()) {
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp) << port << "\n";
    std::filesystem::rename(tmp, path);
  }

  // The main thread waits for signals, and watches the engine meanwhile.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  const auto stall_timeout = std::chrono::milliseconds(
      static_cast<int64_t>(absl::GetFlag(FLAGS_stall_timeout_s) * 1000));
  bool serving = true;
  while (true) {
    const timespec tick{0, 200'000'000};
    const int signal = sigtimedwait(&signals, nullptr, &tick);
    if (fatal) {
      health->Shutdown();
      DSV2_LOG(ERROR) << "fatal engine error: shutting down";
      server->Shutdown(std::chrono::system_clock::now() + 2s);
      return 1;
    }
    if (signal == SIGINT || signal == SIGTERM) {
      DSV2_LOG(INFO) << (signal == SIGINT ? "SIGINT" : "SIGTERM") << ": draining";
      break;
    }
    const bool healthy = engine.healthy(stall_timeout);
    if (healthy != serving) {
      DSV2_LOG(WARNING) << "health: " << (healthy ? "SERVING again" : "NOT_SERVING (engine stalled)");
      health->SetServingStatus(healthy);
      serving = healthy;
    }
  }

  // Drain: refuse new requests before health says so, so that a client
  // that sees NOT_SERVING is never admitted.
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
  const auto streams_deadline = std::chrono::steady_clock::now() + 5s;
  while (service.active_streams() > 0 && std::chrono::steady_clock::now() < streams_deadline) {
    std::this_thread::sleep_for(20ms);
  }
  server->Shutdown(std::chrono::system_clock::now() + 2s);
  DSV2_LOG(INFO) << "drained; exiting";
  return 0;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  // Signals are taken by sigtimedwait in main, so every thread blocks them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  absl::SetProgramUsageMessage("Serves a DeepSeek-V2-family model over gRPC (dsv2.v1.Generation).");
  absl::ParseCommandLine(argc, argv);
  return dsv2::Serve();
}
