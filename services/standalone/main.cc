// dsv2-standalone: every role of the cluster in one process — the attention
// side (engine, KV cache, public API) and one expert server holding every
// routed expert, joined by the in-process data plane — so it runs the same
// code as a cluster: dispatch, expert batching and combine included.
//
// SIGINT/SIGTERM drain: health turns NOT_SERVING, new requests get
// UNAVAILABLE, running ones may finish within --drain_grace_s and are then
// aborted, and the process exits 0. A fatal engine error turns health
// NOT_SERVING and exits 1.
#include <iostream>

#include "absl/flags/flag.h"
#include "common/base/logging.h"
#include "common/base/process.h"
#include "common/experts/expert_server.h"
#include "common/experts/remote_experts.h"
#include "server/metrics/metrics_flags.h"
#include "common/metrics/serving_metrics.h"
#include "common/rpc/security_flags.h"
#include "common/transport/inprocess_transport.h"
#include "server/grpc/generation_service.h"
#include "server/grpc/load_service.h"
#include "server/api/text_frontend.h"
#include "server/http/http_api.h"
#include "server/serving/serving.h"

ABSL_FLAG(std::string, model, "", "Model directory: config.json and safetensors weights.");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "Address to serve on; port 0 lets the OS choose (see --port_file).");
ABSL_FLAG(std::string, port_file, "", "Write the bound port to this file once serving.");

namespace dsv2 {
namespace {

int Serve() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) {
    std::cerr << "dsv2-standalone: --model is required (see --help)\n";
    return 2;
  }
  const std::string listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<RpcSecurity> security =
      RpcSecurityFromFlags({.public_api = true, .api_listen = listen});
  if (!security.ok()) {
    std::cerr << "dsv2-standalone: " << security.status().message() << "\n";
    return 2;
  }
  auto model = LoadModelForServing(model_dir);
  if (!model.ok()) {
    std::cerr << "dsv2-standalone: cannot load " << model_dir << ": " << model.status().message()
              << "\n";
    return 1;
  }
  const ModelConfig& config = (*model)->config();
  std::atomic<bool> fatal{false};
  auto options = EngineOptionsFromFlags(config);
  auto dtype = DataPlaneDTypeFromFlag();
  auto streams = options.ok() ? StreamOptionsFromFlags(*options)
                              : absl::StatusOr<GenerationServiceOptions>(options.status());
  if (!streams.ok() || !dtype.ok()) {
    std::cerr << "dsv2-standalone: "
              << (streams.ok() ? dtype.status() : streams.status()).message() << "\n";
    return 2;
  }
  streams->policy = security->ApiPolicy();
  options->on_fatal = [&fatal](const absl::Status&) { fatal = true; };
  auto text = TextFrontend::LoadIfPresent(model_dir);
  if (!text.ok()) {
    std::cerr << "dsv2-standalone: cannot load the tokenizer of " << model_dir << ": "
              << text.status().message() << "\n";
    return 1;
  }

  // The data plane: one expert server with every expert, in this process.
  auto network = transport::InProcessNetwork::Create();
  auto expert_side = transport::InProcessTransport::Create(network, {.id = 2, .name = "experts"});
  auto attention_side =
      transport::InProcessTransport::Create(network, {.id = 1, .name = "attention"});
  if (!expert_side.ok() || !attention_side.ok()) {
    std::cerr << "dsv2-standalone: cannot create the in-process data plane\n";
    return 1;
  }
  ExpertServer expert_server(**model, **expert_side, {});
  auto experts = std::make_shared<RemoteRoutedExperts>(
      config, **attention_side, RemoteExpertsOptions{.dispatch_dtype = *dtype});
  if (config.n_routed_experts > 0) {
    auto route = std::make_shared<ExpertRoute>();
    route->placement = *PlaceExperts(config, 1, 1);
    route->ids = {"experts"};
    route->addresses = {(*expert_side)->address()};
    route->alive = {true};
    experts->SetRoute(std::move(route));
    (*model)->SetRoutedExperts(experts);
  }

  absl::StatusOr<std::unique_ptr<HttpApi>> http =
      HttpApi::FromFlags({.model_dir = model_dir,
                          .text = text->get(),
                          .security = &*security,
                          .write_timeout = streams->write_timeout});
  if (!http.ok()) {
    std::cerr << "dsv2-standalone: " << http.status().message() << "\n";
    return 2;
  }

  // Metrics (docs/observability.md): the observer outlives the engine; the
  // collector and the server, declared after it, go first.
  auto metrics = std::make_shared<MetricsRegistry>();
  ServingMetrics serving_metrics(*metrics);
  options->observer = &serving_metrics;
  Engine engine(model->get(), text->get(), *options);
  const int64_t expert_series = ExpertSeriesLimitFromFlags();
  MetricsCollector engine_metrics = metrics->AddCollector([&](auto* out) {
    CollectEngineStats(engine.stats(), out);
    CollectDataPlane(*experts, (*attention_side)->counters(), expert_series, out);
    CollectExpertServer(expert_server.stats(), out);
  });
  auto metrics_server = StartMetricsServerFromFlags("dsv2-standalone", metrics,
                                                   security->MetricsTlsFiles());
  if (!metrics_server.ok()) {
    std::cerr << "dsv2-standalone: " << metrics_server.status().message() << "\n";
    return 2;
  }
  GenerationService generation(&engine, text->get(), model_dir, *streams);
  LoadService load(
      &engine, [&] { return EngineHealth(engine); },
      [&](internal::DataPlaneStats* stats) {
        FillDataPlaneStats(*experts, **attention_side, stats);
      },
      security->ApiPolicy());
  DSV2_LOG(INFO) << "dsv2-standalone: " << security->Describe();
  const int code = ServeEngine({
      .program = "dsv2-standalone",
      .model_dir = model_dir,
      .listen = listen,
      .credentials = security->ApiServerCredentials(),
      .port_file = absl::GetFlag(FLAGS_port_file),
      .engine = &engine,
      .generation = &generation,
      .services = {&load},
      .fatal = &fatal,
      .start_front_end =
          [&](std::shared_ptr<grpc::Channel> in_process) {
            return *http ? (*http)->Start(std::move(in_process)) : absl::OkStatus();
          },
      .stop_front_end =
          [&] {
            if (*http) (*http)->Stop();
          },
  });
  (*attention_side)->Shutdown();
  (*expert_side)->Shutdown();
  return code;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  dsv2::BlockTerminationSignals();
  dsv2::ParseServerFlags(argc, argv,
                         "Serves a DeepSeek-V2-family model over gRPC (dsv2.v1.Generation).");
  return dsv2::Serve();
}
