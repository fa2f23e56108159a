// dsv2-router: the public API (dsv2.v1.Generation) of a disaggregated
// cluster. It watches the controller's cluster map and forwards each call to
// an attention worker chosen by load (services/router/router_service.h),
// with grpc.health.v1 and server reflection.
//
// Health ("" and dsv2.v1.Generation) is SERVING while the last cluster map
// is complete and at least one attention worker answered its last load poll
// as serving: a worker that dies or hangs turns it NOT_SERVING within
// --load_interval_ms (+ the poll's 500 ms deadline for a hung one) + 50 ms.
// SIGINT/SIGTERM drain: new calls get UNAVAILABLE, health turns NOT_SERVING,
// running streams may finish within --drain_grace_s and are then cancelled
// (the workers abort them), and the process exits 0.

#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>

#include "absl/flags/flag.h"
#include "server/metrics/metrics_flags.h"
#include "common/base/logging.h"
#include "common/base/process.h"
#include "common/cluster/cluster_state.h"
#include "common/cluster/control_client.h"
#include "common/model/config.h"
#include "common/rpc/grpc_options.h"
#include "common/rpc/security_flags.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/api/text_frontend.h"
#include "server/http/http_api.h"
#include "services/router/router_service.h"

ABSL_FLAG(std::string, controller, "", "host:port of dsv2-controller.");
ABSL_FLAG(std::string, model, "",
          "Model directory: its config.json is read (to check cluster maps against), and with "
          "the HTTP API its tokenizer (to name tokens in logprobs).");
ABSL_FLAG(std::string, listen, "127.0.0.1:50052",
          "Address to serve on; port 0 lets the OS choose (see --port_file).");
ABSL_FLAG(std::string, port_file, "", "Write the bound port to this file once serving.");
ABSL_FLAG(int64_t, load_interval_ms, 50, "How often each attention worker's load is polled.");
ABSL_FLAG(double, drain_grace_s, 30, "On SIGTERM, seconds running streams may take to finish.");
ABSL_FLAG(int64_t, max_streams, 4096,
          "Generate streams open at once, at most, read by their clients or not; more get "
          "RESOURCE_EXHAUSTED.");
ABSL_FLAG(double, stream_write_timeout_s, 30,
          "A client that does not take a message of its stream for this long is cut off.");

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

// The router's metrics (docs/observability.md).
void CollectRouter(const RouterService& router, std::vector<prometheus::MetricFamily>* out) {
  const RouterCounters counters = router.counters();
  PushByLabel(out,
              CounterFamily("dsv2:router_requests_total",
                            "Generate calls ended, by gRPC status code (refusals included)."),
              "code", counters.finished);
  PushSample(out, GaugeFamily("dsv2:router_active_streams", "Generate calls being served now."),
             static_cast<double>(router.active_streams()));
  PushByLabel(
      out,
      CounterFamily("dsv2:router_forwarded_total",
                    "Generate calls forwarded, by attention worker (a retry counts on both)."),
      "worker", counters.forwarded);
  PushByLabel(out,
              CounterFamily("dsv2:router_worker_failures_total",
                            "Forwarded calls that failed UNAVAILABLE, by attention worker."),
              "worker", counters.failures);
  PushSample(
      out,
      CounterFamily("dsv2:router_retries_total", "Generate calls sent again to a second worker."),
      static_cast<double>(counters.retries));
  PushSample(out,
             CounterFamily("dsv2:router_no_worker_total",
                           "Calls refused because no attention worker was eligible."),
             static_cast<double>(counters.no_worker));
  std::map<std::string, int64_t> workers = {{"eligible", 0}, {"ineligible", 0}};
  for (const RouterWorkerView& w : router.workers()) {
    ++workers[w.eligible ? "eligible" : "ineligible"];
  }
  PushByLabel(
      out,
      GaugeFamily("dsv2:router_workers",
                  "Attention workers the router knows, by whether it would choose them now."),
      "state", workers);
  PushSample(out,
             CounterFamily("dsv2:router_slow_readers_cut_total",
                           "Streams cut off because their client did not read."),
             static_cast<double>(router.slow_readers_cut()));
}

int Serve() {
  const std::string controller = absl::GetFlag(FLAGS_controller);
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (controller.empty() || model_dir.empty()) {
    std::cerr << "dsv2-router: --controller and --model are required (see --help)\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_load_interval_ms) < 1 || absl::GetFlag(FLAGS_drain_grace_s) < 0) {
    std::cerr << "dsv2-router: --load_interval_ms must be >= 1 and --drain_grace_s >= 0\n";
    return 2;
  }
  auto config = LoadModelConfig((std::filesystem::path(model_dir) / "config.json").string());
  if (!config.ok()) {
    std::cerr << "dsv2-router: " << config.status().message() << "\n";
    return 1;
  }

  const std::string listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<RpcSecurity> security =
      RpcSecurityFromFlags({.role = Role::kRouter, .public_api = true, .api_listen = listen});
  if (!security.ok()) {
    std::cerr << "dsv2-router: " << security.status().message() << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_max_streams) < 1 || !(absl::GetFlag(FLAGS_stream_write_timeout_s) > 0)) {
    std::cerr << "dsv2-router: --max_streams must be >= 1 and --stream_write_timeout_s > 0\n";
    return 2;
  }

  // The HTTP API names tokens in logprobs with the model's tokenizer.
  std::unique_ptr<TextFrontend> text;
  absl::StatusOr<std::unique_ptr<HttpApi>> http = nullptr;
  if (HttpApi::Enabled()) {
    absl::StatusOr<std::unique_ptr<TextFrontend>> loaded = TextFrontend::LoadIfPresent(model_dir);
    if (!loaded.ok()) {
      std::cerr << "dsv2-router: cannot load the tokenizer of " << model_dir << ": "
                << loaded.status().message() << "\n";
      return 1;
    }
    text = *std::move(loaded);
    http = HttpApi::FromFlags(
        {.model_dir = model_dir,
         .text = text.get(),
         .security = &*security,
         .write_timeout = absl::Seconds(absl::GetFlag(FLAGS_stream_write_timeout_s))});
    if (!http.ok()) {
      std::cerr << "dsv2-router: " << http.status().message() << "\n";
      return 2;
    }
  }

  RouterService router(RouterOptions{
      .load_interval = std::chrono::milliseconds(absl::GetFlag(FLAGS_load_interval_ms)),
      .policy = security->ApiPolicy(),
      .worker_credentials = security->ClusterChannelCredentials(),
      .max_streams = absl::GetFlag(FLAGS_max_streams),
      .write_timeout = absl::Seconds(absl::GetFlag(FLAGS_stream_write_timeout_s)),
  });
  auto metrics = std::make_shared<MetricsRegistry>();
  MetricsCollector router_metrics =
      metrics->AddCollector([&router](auto* out) { CollectRouter(router, out); });
  auto metrics_server = StartMetricsServerFromFlags("dsv2-router", metrics,
                                                   security->MetricsTlsFiles());
  if (!metrics_server.ok()) {
    std::cerr << "dsv2-router: " << metrics_server.status().message() << "\n";
    return 2;
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  ConfigureServer(&builder);
  int port = 0;
  builder.AddListeningPort(listen, security->ApiServerCredentials(), &port);
  builder.RegisterService(&router);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "dsv2-router: cannot listen on " << listen << "\n";
    return 1;
  }
  // Not serving until a map says the cluster can serve.
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(v1::Generation::service_full_name(), false);
  health->SetServingStatus("", false);

  auto on_map = [&](const ClusterMap& map) {
    std::vector<AttentionEndpoint> workers;
    for (const ClusterMap::Worker& w : map.workers) {
      // Draining workers finish the calls they have (those hold their own
      // channel) but take no new ones.
      if (w.info.role == WorkerRole::kAttention && w.state == WorkerState::kAlive) {
        workers.push_back({w.info.id, w.info.grpc_address});
      }
    }
    DSV2_LOG(INFO) << "cluster map " << map.version << ": " << workers.size()
                   << " live attention worker(s), " << (map.complete ? "complete" : "incomplete");
    router.SetWorkers(std::move(workers));
    router.SetServing(map.complete);
  };
  std::unique_ptr<ControlClient> client = ControlClient::Start(
      ControlClientOptions{.controller = controller,
                           .self = std::nullopt,
                           .credentials = security->ClusterChannelCredentials()},
      *config, on_map);
  if (client == nullptr) {
    std::cerr << "dsv2-router: cannot start the control client for " << controller << "\n";
    return 1;
  }

  if (*http) {
    if (absl::Status s = (*http)->Start(server->InProcessChannel(grpc::ChannelArguments()));
        !s.ok()) {
      std::cerr << "dsv2-router: " << s.message() << "\n";
      server->Shutdown(std::chrono::system_clock::now() + 1s);
      client->Stop();
      return 1;
    }
  }
  DSV2_LOG(INFO) << "router on " << listen.substr(0, listen.rfind(':')) << ":" << port
                 << ", controller " << controller << "; " << security->Describe();
  WritePortFile(absl::GetFlag(FLAGS_port_file), port);

  // Health follows the router's own view (the map and its polls of the
  // workers), checked every 50 ms.
  bool serving = false;
  int signal = 0;
  while ((signal = WaitForTerminationSignal(absl::Milliseconds(50))) == 0) {
    const bool ready = router.ready();
    if (ready == serving) continue;
    serving = ready;
    health->SetServingStatus(v1::Generation::service_full_name(), ready);
    health->SetServingStatus("", ready);
    DSV2_LOG(INFO) << "health: " << (ready ? "SERVING" : "NOT_SERVING");
  }
  DSV2_LOG(INFO) << TerminationSignalName(signal) << ": draining";

  // Refuse new calls before health says so, so that a client that sees
  // NOT_SERVING is never admitted.
  router.StopAccepting();
  health->Shutdown();
  const auto grace = std::chrono::duration<double>(absl::GetFlag(FLAGS_drain_grace_s));
  const auto drain_start = std::chrono::steady_clock::now();
  while (router.active_streams() > 0 && std::chrono::steady_clock::now() - drain_start < grace) {
    std::this_thread::sleep_for(50ms);
  }
  if (router.active_streams() > 0) {
    DSV2_LOG(WARNING) << "grace period over: cancelling " << router.active_streams()
                      << " stream(s)";
  }
  // Cancels what is left; the forwarded calls are cancelled with them.
  server->Shutdown(std::chrono::system_clock::now() + 1s);
  if (*http) (*http)->Stop();
  client->Stop();
  DSV2_LOG(INFO) << "drained; exiting";
  return 0;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  // Signals are taken by WaitForTerminationSignal in Serve, so every thread
  // blocks them.
  dsv2::BlockTerminationSignals();
  dsv2::ParseServerFlags(
      argc, argv,
      "Serves the public API of a dsv2-serve cluster, forwarding to its attention workers.");
  return dsv2::Serve();
}
