// dsv2-controller: the control plane of the disaggregated cluster
// (dsv2.internal.Controller): membership with leases, the expert placement
// and the versioned cluster map. It keeps no state of its own.

#include <filesystem>
#include <iostream>

#include "absl/flags/flag.h"
#include "server/metrics/metrics_flags.h"
#include "common/metrics/serving_metrics.h"
#include "common/base/logging.h"
#include "common/base/process.h"
#include "common/model/config.h"
#include "common/rpc/grpc_options.h"
#include "common/rpc/security_flags.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "services/controller/controller_service.h"

ABSL_FLAG(std::string, model, "", "Model directory (its config.json decides the placement).");
ABSL_FLAG(std::string, listen, "127.0.0.1:50050", "Address to serve on; port 0: the OS chooses.");
ABSL_FLAG(std::string, port_file, "", "Write the bound port to this file once serving.");
ABSL_FLAG(int64_t, replicas, 1, "Expert workers holding each routing group (or slice).");
ABSL_FLAG(int64_t, lease_ms, 750,
          "A worker that does not renew within this is marked dead (workers renew every third "
          "of it): the bound on how long a dead or hung worker goes unnoticed without traffic.");
ABSL_FLAG(int64_t, suspect_ms, 5000,
          "An expert worker an attention worker reports hung serves no unit for this long "
          "(unless it registers again first).");
ABSL_FLAG(int64_t, warmup_ms, -1,
          "After start, publish no cluster map for this long, so live workers re-register "
          "first (-1: the lease + 1.5 s).");
ABSL_FLAG(bool, seal_data_plane, true,
          "With TLS, seal every data-plane frame with AES-256-GCM under a key this controller "
          "draws and sends to the workers in the cluster map. false: frames travel in "
          "plaintext, for networks that are private or encrypted below (docs/security.md). "
          "Without TLS frames are never sealed.");

// How long a live worker may take to find a restarted controller: its
// control channel reconnects with a backoff of at most 5 x 200 ms (+ 20%
// jitter; ControlClient), then its next heartbeat (covered by the lease) is
// refused and it registers again.
constexpr std::chrono::milliseconds kReconnectAllowance(1500);

int main(int argc, char** argv) {
  dsv2::BlockTerminationSignals();
  dsv2::ParseServerFlags(argc, argv, "The control plane of a dsv2-serve cluster.");

  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) {
    std::cerr << "dsv2-controller: --model is required (see --help)\n";
    return 2;
  }
  auto config = dsv2::LoadModelConfig((std::filesystem::path(model) / "config.json").string());
  if (!config.ok()) {
    std::cerr << "dsv2-controller: " << config.status().message() << "\n";
    return 1;
  }
  if (absl::GetFlag(FLAGS_replicas) < 1 || absl::GetFlag(FLAGS_lease_ms) < 10 ||
      absl::GetFlag(FLAGS_warmup_ms) < -1 || absl::GetFlag(FLAGS_suspect_ms) < 0) {
    std::cerr << "dsv2-controller: --replicas must be >= 1, --lease_ms >= 10, --warmup_ms >= "
                 "-1 and --suspect_ms >= 0\n";
    return 2;
  }
  const std::chrono::milliseconds lease(absl::GetFlag(FLAGS_lease_ms));
  const std::chrono::milliseconds warmup =
      absl::GetFlag(FLAGS_warmup_ms) < 0
          ? lease + kReconnectAllowance
          : std::chrono::milliseconds(absl::GetFlag(FLAGS_warmup_ms));
  absl::StatusOr<dsv2::RpcSecurity> security =
      dsv2::RpcSecurityFromFlags({.role = dsv2::Role::kController});
  if (!security.ok()) {
    std::cerr << "dsv2-controller: " << security.status().message() << "\n";
    return 2;
  }
  const bool seal = absl::GetFlag(FLAGS_seal_data_plane) && !security->ClusterPolicy().open();
  dsv2::ControllerService service(
      *config, {.replicas = absl::GetFlag(FLAGS_replicas),
                .lease = lease,
                .warmup = warmup,
                .suspect_time = std::chrono::milliseconds(absl::GetFlag(FLAGS_suspect_ms)),
                .policy = security->ClusterPolicy(),
                .seal_data_plane = seal});
  auto metrics = std::make_shared<dsv2::MetricsRegistry>();
  dsv2::MetricsCollector controller_metrics = metrics->AddCollector([&service](auto* out) {
    const dsv2::ControllerService::Stats stats = service.stats();
    dsv2::CollectCluster(service.epoch(), stats.map, stats.counters, out);
  });
  auto metrics_server = dsv2::StartMetricsServerFromFlags("dsv2-controller", metrics,
                                                   security->MetricsTlsFiles());
  if (!metrics_server.ok()) {
    std::cerr << "dsv2-controller: " << metrics_server.status().message() << "\n";
    return 2;
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  dsv2::ConfigureServer(&builder);
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), security->ClusterServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "dsv2-controller: cannot listen on " << absl::GetFlag(FLAGS_listen) << "\n";
    return 1;
  }
  DSV2_LOG(INFO) << "controller for " << model << " on port " << port << ", replicas "
                 << absl::GetFlag(FLAGS_replicas) << ", lease " << lease.count() << " ms, warm-up "
                 << warmup.count() << " ms, epoch " << service.epoch() << "; "
                 << security->Describe() << "; data plane "
                 << (seal ? "sealed" : "in plaintext");
  dsv2::WritePortFile(absl::GetFlag(FLAGS_port_file), port);
  const int signal = dsv2::WaitForTerminationSignal();
  DSV2_LOG(INFO) << dsv2::TerminationSignalName(signal) << ": shutting down";
  service.Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
