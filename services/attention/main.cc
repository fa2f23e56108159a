// dsv2-attention: an attention worker of a dsv2-serve cluster. It holds the
// embedding, attention, dense layers, shared experts, LM head and the paged
// latent KV cache, runs the engine, and serves the public API (to the
// router) and its load. At every MoE layer it dispatches the tokens to the
// expert workers of the cluster map over the UCX data plane.
//
// Health is SERVING while the engine is healthy and every routed expert has
// a live worker; otherwise NOT_SERVING, with the cause in the log and in
// its Load report. SIGINT/SIGTERM: leave the cluster (the router stops
// choosing this worker), then drain as dsv2-standalone does.
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/base/thread_annotations.h"
#include "common/base/logging.h"
#include "common/base/mutex.h"
#include "common/base/process.h"
#include "common/cluster/control_client.h"
#include "common/experts/remote_experts.h"
#include "common/rpc/security_flags.h"
#include "common/transport/ucx_transport.h"
#include "server/metrics/metrics_flags.h"
#include "common/metrics/serving_metrics.h"
#include "server/grpc/generation_service.h"
#include "server/grpc/load_service.h"
#include "server/api/text_frontend.h"
#include "server/serving/serving.h"

ABSL_FLAG(std::string, model, "", "Model directory: config.json and safetensors weights.");
ABSL_FLAG(std::string, controller, "", "The controller's host:port.");
ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "gRPC address to serve on (the router connects here); port 0: the OS chooses.");
ABSL_FLAG(std::string, port_file, "", "Write the bound gRPC port to this file once serving.");
ABSL_FLAG(std::string, advertise, "",
          "The gRPC address others dial, as registered in the cluster map (host:port, or a host: "
          "the bound port); default: the --listen host and the bound port. Set it when --listen "
          "is a wildcard (0.0.0.0), e.g. to the pod's DNS name.");
ABSL_FLAG(std::string, data_listen, "127.0.0.1:0",
          "Data-plane (UCX over TCP) address: a numeric address of one of this host's interfaces, "
          "listened on (port 0: a free one) and nothing else; expert workers reach it.");
ABSL_FLAG(std::string, worker_id, "",
          "Stable id in the cluster map; default: the id of --tls_cert, or attention@host:port.");
ABSL_FLAG(int64_t, expert_timeout_ms, 5000,
          "A MoE layer whose expert worker does not answer within this, and has no replica to "
          "go to, fails its step's requests (UNAVAILABLE).");
ABSL_FLAG(int64_t, expert_attempt_timeout_ms, 0,
          "An expert worker that has not answered a dispatch within this, while its units have "
          "other live replicas, is reported hung and its rows go to them; 0: 4x the slowest of "
          "the last 64 answers (at least 50 ms).");

namespace dsv2 {
namespace {

// Whether this worker may serve according to its latest cluster map: OK,
// or why not.
class MapReadiness {
 public:
  void Update(const ClusterMap& map, const std::string& id) ABSL_LOCKS_EXCLUDED(mutex_) {
    // Ready once the map lists this worker alive (the expert workers admit
    // its dispatches from that same map) and every unit has a live worker.
    const ClusterMap::Worker* me = map.Find(id);
    absl::Status status;
    if (me == nullptr) {
      status = absl::UnavailableError(
          absl::StrCat("cluster map version ", map.version, " does not list this worker yet"));
    } else if (me->state != WorkerState::kAlive) {
      status = absl::UnavailableError(absl::StrCat(
          "cluster map version ", map.version, " lists this worker as ",
          me->state == WorkerState::kDraining ? "draining" : "dead"));
    } else if (!map.complete) {
      status = absl::UnavailableError(absl::StrCat("cluster map version ", map.version,
                                                   " is incomplete: ", map.WhyIncomplete()));
    }
    MutexLock lock(&mutex_);
    if (!draining_) status_ = std::move(status);
  }
  void Drain() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    status_ = absl::UnavailableError("draining");
    draining_ = true;
  }
  absl::Status Get() const ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    return status_;
  }

 private:
  mutable Mutex mutex_;
  absl::Status status_ ABSL_GUARDED_BY(mutex_) =
      absl::UnavailableError("no cluster map from the controller yet");
  bool draining_ ABSL_GUARDED_BY(mutex_) = false;
};

int Serve() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  const std::string controller = absl::GetFlag(FLAGS_controller);
  if (model_dir.empty() || controller.empty()) {
    std::cerr << "dsv2-attention: --model and --controller are required (see --help)\n";
    return 2;
  }
  absl::StatusOr<RpcSecurity> security = RpcSecurityFromFlags({.role = Role::kAttention});
  if (!security.ok()) {
    std::cerr << "dsv2-attention: " << security.status().message() << "\n";
    return 2;
  }
  const std::string worker_id = absl::GetFlag(FLAGS_worker_id);
  if (security->identity() && !worker_id.empty() && worker_id != security->identity()->id) {
    std::cerr << "dsv2-attention: --worker_id " << worker_id << " is not the id of --tls_cert ("
              << security->identity()->SpiffeId() << ")\n";
    return 2;
  }
  if (auto advertised = WorkerGrpcAddress(absl::GetFlag(FLAGS_listen), 1,
                                          absl::GetFlag(FLAGS_advertise));
      !advertised.ok()) {
    std::cerr << "dsv2-attention: " << advertised.status().message() << "\n";
    return 2;
  }
  // Everything but the routed experts, which live on the expert workers.
  auto model = LoadModelForServing(
      model_dir,
      [](std::string_view name) {
        int64_t layer, expert;
        return !ParseRoutedExpertTensor(name, &layer, &expert);
      },
      WeightResidency::kAllButRoutedExperts);
  if (!model.ok()) {
    std::cerr << "dsv2-attention: cannot load " << model_dir << ": " << model.status().message()
              << "\n";
    return 1;
  }
  const ModelConfig& config = (*model)->config();
  auto options = EngineOptionsFromFlags(config);
  auto dtype = DataPlaneDTypeFromFlag();
  auto streams = options.ok() ? StreamOptionsFromFlags(*options)
                              : absl::StatusOr<GenerationServiceOptions>(options.status());
  if (!streams.ok() || !dtype.ok()) {
    std::cerr << "dsv2-attention: "
              << (streams.ok() ? dtype.status() : streams.status()).message() << "\n";
    return 2;
  }
  // Only routers call; requests belong to the clients the router names.
  streams->policy = security->ClusterPolicy();
  streams->trust_forwarded_principal = true;
  std::atomic<bool> fatal{false};
  options->on_fatal = [&fatal](const absl::Status&) { fatal = true; };
  auto text = TextFrontend::LoadIfPresent(model_dir);
  if (!text.ok()) {
    std::cerr << "dsv2-attention: cannot load the tokenizer: " << text.status().message() << "\n";
    return 1;
  }
  auto data_plane = transport::UcxTransport::Create(
      {.id = RandomPeerId(), .listen_address = absl::GetFlag(FLAGS_data_listen)});
  if (!data_plane.ok()) {
    std::cerr << "dsv2-attention: data plane: " << data_plane.status().message() << "\n";
    return 1;
  }
  DataPlaneKeys keys(data_plane->get());
  if (absl::GetFlag(FLAGS_expert_timeout_ms) < 1 ||
      absl::GetFlag(FLAGS_expert_attempt_timeout_ms) < 0) {
    std::cerr << "dsv2-attention: --expert_timeout_ms must be >= 1 and "
                 "--expert_attempt_timeout_ms >= 0\n";
    return 2;
  }
  // Hung expert workers are reported to the controller once it is known.
  std::atomic<ControlClient*> reporter{nullptr};
  auto experts = std::make_shared<RemoteRoutedExperts>(
      config, **data_plane,
      RemoteExpertsOptions{
          .dispatch_dtype = *dtype,
          .timeout = absl::Milliseconds(absl::GetFlag(FLAGS_expert_timeout_ms)),
          .attempt_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_expert_attempt_timeout_ms)),
          .on_suspect =
              [&reporter](const std::string& id, const std::string& why) {
                if (ControlClient* client = reporter.load()) client->ReportSuspect(id, why);
              }});
  (*model)->SetRoutedExperts(experts);

  // Declared before the engine, so it outlives the engine's last step (which
  // may report a hung worker through it).
  std::unique_ptr<ControlClient> control;
  // Metrics (docs/observability.md): the observer outlives the engine; the
  // collector and the server, declared after it, go first.
  auto metrics = std::make_shared<MetricsRegistry>();
  ServingMetrics serving_metrics(*metrics);
  options->observer = &serving_metrics;
  Engine engine(model->get(), text->get(), *options);
  const int64_t expert_series = ExpertSeriesLimitFromFlags();
  MetricsCollector engine_metrics = metrics->AddCollector([&](auto* out) {
    CollectEngineStats(engine.stats(), out);
    CollectDataPlane(*experts, (*data_plane)->counters(), expert_series, out);
  });
  auto metrics_server = StartMetricsServerFromFlags("dsv2-attention", metrics,
                                                   security->MetricsTlsFiles());
  if (!metrics_server.ok()) {
    std::cerr << "dsv2-attention: " << metrics_server.status().message() << "\n";
    return 2;
  }
  GenerationService generation(&engine, text->get(), model_dir, *streams);
  MapReadiness readiness;
  LoadService load(
      &engine,
      [&] {
        absl::Status status = EngineHealth(engine);
        return status.ok() ? readiness.Get() : status;
      },
      [&](internal::DataPlaneStats* stats) { FillDataPlaneStats(*experts, **data_plane, stats); },
      security->ClusterPolicy());
  const std::string listen = absl::GetFlag(FLAGS_listen);
  const int code = ServeEngine({
      .program = "dsv2-attention",
      .model_dir = model_dir,
      .listen = listen,
      .credentials = security->ClusterServerCredentials(),
      .port_file = absl::GetFlag(FLAGS_port_file),
      .engine = &engine,
      .generation = &generation,
      .services = {&load},
      .ready = [&] { return readiness.Get(); },
      .on_listening =
          [&](int port) {
            const std::string address =
                *WorkerGrpcAddress(listen, port, absl::GetFlag(FLAGS_advertise));  // Checked at start.
            WorkerInfo self{
                .id = !worker_id.empty()      ? worker_id
                      : security->identity() ? security->identity()->id
                                             : "attention@" + address,
                .role = WorkerRole::kAttention,
                .grpc_address = address,
                .data_address = (*data_plane)->address(),
                .capacity = engine.stats().kv_blocks_total * options->block_size,
                .peer_id = (*data_plane)->id(),
            };
            DSV2_LOG(INFO) << "joining the cluster at " << controller << " as " << self.id
                           << " (data plane " << self.data_address << "); "
                           << security->Describe();
            control = ControlClient::Start(
                {.controller = controller,
                 .self = self,
                 .credentials = security->ClusterChannelCredentials()},
                config,
                [&, id = self.id](const ClusterMap& map) {
                  keys.Apply(map);
                  experts->SetRoute(RouteFromMap(map));
                  readiness.Update(map, id);
                });
            reporter = control.get();
            return absl::OkStatus();
          },
      .on_drain =
          [&] {
            readiness.Drain();
            if (absl::Status s = control->Drain(); !s.ok()) {
              DSV2_LOG(WARNING) << "could not leave the cluster: " << s;
            }
          },
      .fatal = &fatal,
  });
  reporter = nullptr;
  if (control) control->Stop();
  (*data_plane)->Shutdown();
  return code;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  dsv2::BlockTerminationSignals();
  dsv2::ParseServerFlags(argc, argv, "An attention worker of a dsv2-serve cluster.");
  return dsv2::Serve();
}
