// dsv2-expert: an expert worker of a dsv2-serve cluster. It serves the
// routed experts the controller places on it to the attention workers over
// the UCX data plane, batching the tokens that arrive from all of them
// within --batch_window_us per expert. It reads only its placed experts'
// weights into memory (others stay on disk until touched, e.g. while the
// placement moves). Its gRPC port serves health only.
//
// SIGINT/SIGTERM: leave the placement (Drain), keep answering for
// --drain_s while attention workers move to the new map, then exit 0.
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/mutex.h"
#include "common/base/process.h"
#include "common/cluster/control_client.h"
#include "common/experts/expert_server.h"
#include "common/rpc/grpc_options.h"
#include "common/rpc/security_flags.h"
#include "common/transport/ucx_transport.h"
#include "server/metrics/metrics_flags.h"
#include "common/metrics/serving_metrics.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/serving/serving.h"

ABSL_FLAG(std::string, model, "", "Model directory: config.json and safetensors weights.");
ABSL_FLAG(std::string, controller, "", "The controller's host:port.");
ABSL_FLAG(std::string, listen, "127.0.0.1:0", "gRPC address (health); port 0: the OS chooses.");
ABSL_FLAG(std::string, port_file, "", "Write the bound gRPC port to this file once serving.");
ABSL_FLAG(std::string, advertise, "",
          "The gRPC address others dial, as registered in the cluster map (host:port, or a host: "
          "the bound port); default: the --listen host and the bound port. Set it when --listen "
          "is a wildcard (0.0.0.0), e.g. to the pod's DNS name.");
ABSL_FLAG(std::string, data_listen, "127.0.0.1:0",
          "Data-plane (UCX over TCP) address: a numeric address of one of this host's interfaces, "
          "listened on (port 0: a free one) and nothing else; attention workers reach it.");
ABSL_FLAG(std::string, worker_id, "",
          "Stable id in the cluster map; default: the id of --tls_cert, or expert@host:port.");
ABSL_FLAG(int64_t, batch_window_us, 100,
          "After a dispatch arrives, wait this long for others to batch with it.");
ABSL_FLAG(int64_t, max_queued_mib, 256,
          "Dispatch payloads waiting for the compute thread, at most; more are answered "
          "RESOURCE_EXHAUSTED (the attention worker turns to a replica).");
ABSL_FLAG(double, drain_s, 2, "On SIGTERM, seconds to keep serving after leaving the placement.");
ABSL_DECLARE_FLAG(bool, prefault);

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

// The ids of the attention workers by data-plane peer id, from the maps,
// for the traffic metrics (ids of workers gone stay: their counts do).
class PeerNames {
 public:
  void Update(const ClusterMap& map) ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    for (const ClusterMap::Worker& w : map.workers) {
      if (w.info.role == WorkerRole::kAttention) names_[w.info.peer_id] = w.info.id;
    }
  }

  // Traffic by worker id (a peer id not in any map: "peer-ID").
  std::vector<std::pair<std::string, transport::PeerTraffic>> Name(
      const std::map<transport::PeerId, transport::PeerTraffic>& peers) const
      ABSL_LOCKS_EXCLUDED(mutex_) {
    std::vector<std::pair<std::string, transport::PeerTraffic>> named;
    MutexLock lock(&mutex_);
    for (const auto& [peer, traffic] : peers) {
      const auto it = names_.find(peer);
      named.emplace_back(it != names_.end() ? it->second : absl::StrCat("peer-", peer), traffic);
    }
    return named;
  }

 private:
  mutable Mutex mutex_;
  std::map<transport::PeerId, std::string> names_ ABSL_GUARDED_BY(mutex_);
};

// Reads the weights of the experts placed on this worker into memory, on a
// thread of its own: the map callback, which admits the cluster's peers,
// never waits for the disk. Reading stops early at shutdown.
class ExpertPrefaulter {
 public:
  ExpertPrefaulter(const DeepseekV2Model& model, std::string id)
      : model_(model), id_(std::move(id)), thread_([this] { Loop(); }) {}
  ~ExpertPrefaulter() {
    {
      MutexLock lock(&mutex_);
      stop_ = true;
    }
    thread_.join();
  }

  // Reads what `map` places here (the latest map wins).
  void Update(const ClusterMap& map) ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    pending_ = map;
  }

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mutex_) {
    while (true) {
      ClusterMap map;
      {
        MutexLock lock(&mutex_);
        const auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
          return stop_ || pending_.has_value();
        };
        mutex_.Await(absl::Condition(&woken));
        if (stop_) return;
        map = *std::move(pending_);
        pending_.reset();
      }
      Read(map);
    }
  }

  bool Stopping() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    return stop_;
  }

  void Read(const ClusterMap& map) {
    const auto slot = std::find(map.expert_workers.begin(), map.expert_workers.end(), id_);
    if (slot == map.expert_workers.end() || map.placement.num_units == 0) return;
    std::set<int64_t> wanted;
    for (int32_t e :
         map.placement.ExpertsOf(static_cast<int32_t>(slot - map.expert_workers.begin()))) {
      if (!resident_.contains(e)) wanted.insert(e);
    }
    if (wanted.empty()) return;
    const auto start = std::chrono::steady_clock::now();
    const int64_t bytes = model_.checkpoint().Prefault(
        [](int64_t, int64_t) {},
        [&](std::string_view name) {
          int64_t layer, expert;
          return ParseRoutedExpertTensor(name, &layer, &expert) && wanted.contains(expert) &&
                 !Stopping();
        });
    resident_.insert(wanted.begin(), wanted.end());
    // Timed before reading /proc/self/smaps for the huge-page share.
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    DSV2_LOG(INFO) << "placed on this worker: " << resident_.size() << " of "
                   << model_.config().n_routed_experts << " experts per layer; read "
                   << absl::StrCat(bytes / 1e6) << " MB ("
                   << absl::StrCat(model_.checkpoint().HugePageBytes() / 1e6)
                   << " MB of the files on huge pages) in " << seconds << " s";
  }

  const DeepseekV2Model& model_;
  const std::string id_;
  std::set<int64_t> resident_;  // Only the thread touches it.
  Mutex mutex_;  // The thread waits on it for a map or the end.
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<ClusterMap> pending_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;  // Last: starts after the members above.
};

int Serve() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  const std::string controller = absl::GetFlag(FLAGS_controller);
  if (model_dir.empty() || controller.empty()) {
    std::cerr << "dsv2-expert: --model and --controller are required (see --help)\n";
    return 2;
  }
  absl::StatusOr<RpcSecurity> security = RpcSecurityFromFlags({.role = Role::kExpert});
  if (!security.ok()) {
    std::cerr << "dsv2-expert: " << security.status().message() << "\n";
    return 2;
  }
  const std::string worker_id = absl::GetFlag(FLAGS_worker_id);
  if (security->identity() && !worker_id.empty() && worker_id != security->identity()->id) {
    std::cerr << "dsv2-expert: --worker_id " << worker_id << " is not the id of --tls_cert ("
              << security->identity()->SpiffeId() << ")\n";
    return 2;
  }
  if (auto advertised = WorkerGrpcAddress(absl::GetFlag(FLAGS_listen), 1,
                                          absl::GetFlag(FLAGS_advertise));
      !advertised.ok()) {
    std::cerr << "dsv2-expert: " << advertised.status().message() << "\n";
    return 2;
  }
  // Nothing is read yet: the placement decides which experts (and which the
  // backend makes resident as they are first computed).
  const absl::StatusOr<Backend*> backend = BackendFromFlag();
  if (!backend.ok()) {
    std::cerr << "dsv2-expert: " << backend.status().message() << "\n";
    return 1;
  }
  auto model = DeepseekV2Model::Load(
      model_dir, {.backend = *backend, .residency = WeightResidency::kOnFirstUse});
  if (!model.ok()) {
    std::cerr << "dsv2-expert: cannot load " << model_dir << ": " << model.status().message()
              << "\n";
    return 1;
  }
  const ModelConfig& config = (*model)->config();
  if (config.n_routed_experts == 0) {
    std::cerr << "dsv2-expert: " << model_dir << " has no routed experts\n";
    return 1;
  }
  if (absl::GetFlag(FLAGS_batch_window_us) < 0 || absl::GetFlag(FLAGS_max_queued_mib) < 1) {
    std::cerr << "dsv2-expert: --batch_window_us must be >= 0 and --max_queued_mib >= 1\n";
    return 2;
  }
  auto data_plane = transport::UcxTransport::Create(
      {.id = RandomPeerId(), .listen_address = absl::GetFlag(FLAGS_data_listen)});
  if (!data_plane.ok()) {
    std::cerr << "dsv2-expert: data plane: " << data_plane.status().message() << "\n";
    return 1;
  }
  // Until the first map, serve nobody.
  (*data_plane)->SetAllowedPeers({});
  ExpertServer server(
      **model, **data_plane,
      {.batch_window = absl::Microseconds(absl::GetFlag(FLAGS_batch_window_us)),
       .max_queued_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_queued_mib)) << 20});
  auto metrics = std::make_shared<MetricsRegistry>();
  PeerNames peer_names;
  MetricsCollector expert_metrics = metrics->AddCollector([&](auto* out) {
    const ExpertServer::Stats stats = server.stats();
    CollectExpertServer(stats, out);
    CollectPeerTraffic(peer_names.Name(stats.peers), out);
    CollectTransport((*data_plane)->counters(), out);
  });
  auto metrics_server = StartMetricsServerFromFlags("dsv2-expert", metrics,
                                                   security->MetricsTlsFiles());
  if (!metrics_server.ok()) {
    std::cerr << "dsv2-expert: " << metrics_server.status().message() << "\n";
    return 2;
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  ConfigureServer(&builder);
  int port = 0;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  builder.AddListeningPort(listen, security->ClusterServerCredentials(), &port);
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (grpc_server == nullptr || port == 0) {
    std::cerr << "dsv2-expert: cannot listen on " << listen << "\n";
    return 1;
  }
  // Checked at start.
  const std::string address = *WorkerGrpcAddress(listen, port, absl::GetFlag(FLAGS_advertise));
  WorkerInfo self{
      .id = !worker_id.empty()      ? worker_id
            : security->identity() ? security->identity()->id
                                   : "expert@" + address,
      .role = WorkerRole::kExpert,
      .grpc_address = address,
      .data_address = (*data_plane)->address(),
      .peer_id = (*data_plane)->id(),
  };
  DSV2_LOG(INFO) << "dsv2-expert: " << self.id << " serving " << model_dir << ", data plane "
                 << self.data_address << "; joining the cluster at " << controller << "; "
                 << security->Describe();
  DataPlaneKeys keys(data_plane->get());
  std::optional<ExpertPrefaulter> prefaulter;
  if (absl::GetFlag(FLAGS_prefault)) prefaulter.emplace(**model, self.id);
  auto control = ControlClient::Start(
      {.controller = controller,
       .self = self,
       .credentials = security->ClusterChannelCredentials()},
      config, [&](const ClusterMap& map) {
        // Serve the cluster's attention workers only (nobody else
        // dispatches), answering each at the address the map lists.
        keys.Apply(map);
        transport::AllowedPeers peers;
        for (const ClusterMap::Worker& w : map.workers) {
          if (w.state != WorkerState::kDead && w.info.role == WorkerRole::kAttention) {
            peers.emplace(w.info.peer_id, w.info.data_address);
          }
        }
        (*data_plane)->SetAllowedPeers(std::move(peers));
        peer_names.Update(map);
        if (prefaulter) prefaulter->Update(map);
      });
  WritePortFile(absl::GetFlag(FLAGS_port_file), port);

  const int signal = WaitForTerminationSignal();
  DSV2_LOG(INFO) << TerminationSignalName(signal) << ": leaving the placement";
  grpc_server->GetHealthCheckService()->Shutdown();
  if (absl::Status s = control->Drain(); !s.ok()) {
    DSV2_LOG(WARNING) << "could not leave the placement: " << s;
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(absl::GetFlag(FLAGS_drain_s)));
  control->Stop();
  (*data_plane)->Shutdown();
  grpc_server->Shutdown(std::chrono::system_clock::now() + 1s);
  const ExpertServer::Stats stats = server.stats();
  DSV2_LOG(INFO) << "served " << stats.requests << " dispatches (" << stats.rows << " rows in "
                 << stats.batches << " batches); exiting";
  return 0;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  dsv2::BlockTerminationSignals();
  dsv2::ParseServerFlags(argc, argv, "An expert worker of a dsv2-serve cluster.");
  return dsv2::Serve();
}
