#include "common/cluster/control_client.h"

#include <algorithm>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/rpc/grpc_options.h"
#include "common/rpc/status.h"
#include "common/cluster/cluster_map_proto.h"
#include "grpcpp/grpcpp.h"

namespace dsv2 {
namespace {

// Register and Drain: long enough for a loaded controller; Stop cancels
// calls in flight, so this never delays shutdown.
constexpr absl::Duration kCallTimeout = absl::Seconds(5);

}  // namespace

uint32_t RandomPeerId() {
  std::random_device device;
  std::uniform_int_distribution<uint32_t> id(1, UINT32_MAX);
  return id(device);
}

absl::StatusOr<std::string> WorkerGrpcAddress(const std::string& listen, int port,
                                              const std::string& advertise) {
  if (advertise.empty()) return absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port);
  const size_t colon = advertise.rfind(':');
  const std::string host = advertise.substr(0, colon);
  int advertised_port = port;
  if (host.empty() || host.find_first_of(" \t\r\n/") != std::string::npos ||
      (colon != std::string::npos &&
       (!absl::SimpleAtoi(advertise.substr(colon + 1), &advertised_port) || advertised_port < 1 ||
        advertised_port > 65535))) {
    return absl::InvalidArgumentError(
        absl::StrCat("--advertise '", advertise, "' is not HOST or HOST:PORT"));
  }
  return absl::StrCat(host, ":", advertised_port);
}

std::unique_ptr<ControlClient> ControlClient::Start(ControlClientOptions options,
                                                    ModelConfig config, MapCallback on_map) {
  std::unique_ptr<ControlClient> client(
      new ControlClient(std::move(options), std::move(config), std::move(on_map)));
  if (client->options_.self.has_value()) {
    client->member_ = std::thread([c = client.get()] { c->MemberLoop(); });
    client->reporter_ = std::thread([c = client.get()] { c->ReportLoop(); });
  }
  client->watcher_ = std::thread([c = client.get()] { c->WatchLoop(); });
  return client;
}

ControlClient::ControlClient(ControlClientOptions options, ModelConfig config, MapCallback on_map)
    : options_(std::move(options)), config_(std::move(config)), on_map_(std::move(on_map)) {
  // A restarted controller must be found again within a few retry intervals.
  const int retry_ms =
      static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.retry_interval)));
  stub_ = internal::Controller::NewStub(NewClusterChannel(
      options_.controller,
      options_.credentials != nullptr ? options_.credentials : grpc::InsecureChannelCredentials(),
      retry_ms, 5 * retry_ms));
}

ControlClient::~ControlClient() { Stop(); }

void ControlClient::Stop() {
  {
    MutexLock lock(&mutex_);
    stop_ = true;
    // TryCancel does not block; the lock keeps each context alive (Call
    // removes it before it goes).
    for (grpc::ClientContext* context : in_flight_) context->TryCancel();
  }
  MutexLock join(&join_mutex_);
  if (member_.joinable()) member_.join();
  if (watcher_.joinable()) watcher_.join();
  if (reporter_.joinable()) reporter_.join();
}

std::optional<ClusterMap> ControlClient::map() const {
  MutexLock lock(&mutex_);
  return map_;
}

bool ControlClient::WaitForMap(const std::function<bool(const ClusterMap&)>& pred,
                               absl::Duration timeout) {
  MutexLock lock(&mutex_);
  const auto satisfied = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return map_.has_value() && pred(*map_);
  };
  const auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stop_ || satisfied(); };
  mutex_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return satisfied();
}

ControlClient::Stats ControlClient::StatsLocked() const {
  Stats stats = stats_;
  stats.calls_in_flight = static_cast<int64_t>(in_flight_.size());
  return stats;
}

ControlClient::Stats ControlClient::stats() const {
  MutexLock lock(&mutex_);
  return StatsLocked();
}

bool ControlClient::WaitForStats(const std::function<bool(const Stats&)>& pred,
                                 absl::Duration timeout) {
  MutexLock lock(&mutex_);
  const auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return stop_ || pred(StatsLocked());
  };
  mutex_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return pred(StatsLocked());
}

absl::Status ControlClient::Drain() {
  if (!options_.self.has_value()) {
    return absl::FailedPreconditionError("a watch-only control client has no worker to drain");
  }
  // Remembered before asking, so that a registration after a failed call
  // (the controller restarting) drains again.
  {
    MutexLock lock(&mutex_);
    drained_ = true;
  }
  internal::DrainRequest request;
  request.set_worker_id(options_.self->id);
  internal::DrainResponse response;
  const grpc::Status status = Call(kCallTimeout, [&](grpc::ClientContext* context) {
    return stub_->Drain(context, request, &response);
  });
  return FromGrpcStatus(status);
}

void ControlClient::ReportSuspect(const std::string& worker_id, const std::string& reason) {
  MutexLock lock(&mutex_);
  const absl::Time now = absl::Now();
  auto [last, added] = reported_at_.try_emplace(worker_id, now);
  if (!added && now - last->second < absl::Seconds(1)) return;
  last->second = now;
  if (stop_ || reports_.size() >= 64) return;
  reports_.emplace_back(worker_id, reason.substr(0, 1024));
}

void ControlClient::ReportLoop() {
  while (true) {
    std::pair<std::string, std::string> report;
    {
      MutexLock lock(&mutex_);
      const auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stop_ || !reports_.empty();
      };
      mutex_.Await(absl::Condition(&woken));
      if (stop_) return;
      report = std::move(reports_.front());
      reports_.pop_front();
    }
    internal::ReportSuspectRequest request;
    request.set_worker_id(report.first);
    request.set_reason(report.second);
    internal::ReportSuspectResponse response;
    const grpc::Status status = Call(kCallTimeout, [&](grpc::ClientContext* context) {
      return stub_->ReportSuspect(context, request, &response);
    });
    if (status.ok()) {
      MutexLock lock(&mutex_);
      ++stats_.suspects_reported;
    } else if (!Stopping()) {
      DSV2_LOG(WARNING) << "could not report expert worker " << report.first
                        << " to the controller: " << status.error_message();
    }
  }
}

grpc::Status ControlClient::Call(absl::Duration timeout,
                                 const std::function<grpc::Status(grpc::ClientContext*)>& call) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  {
    MutexLock lock(&mutex_);
    if (stop_) return grpc::Status(grpc::StatusCode::CANCELLED, "control client stopped");
    in_flight_.push_back(&context);
  }
  const grpc::Status status = call(&context);
  MutexLock lock(&mutex_);
  in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), &context));
  return status;
}

bool ControlClient::Stopping() const {
  MutexLock lock(&mutex_);
  return stop_;
}

bool ControlClient::SleepUntil(absl::Time deadline) {
  MutexLock lock(&mutex_);
  mutex_.AwaitWithDeadline(absl::Condition(&stop_), deadline);
  return !stop_;
}

grpc::Status ControlClient::RegisterSelf(absl::Duration* lease) {
  internal::RegisterRequest request;
  *request.mutable_worker() = ToProto(*options_.self);
  {
    // The slot held under the last map, for a restarted controller.
    MutexLock lock(&mutex_);
    if (map_.has_value()) {
      const auto& slots = map_->expert_workers;
      const auto slot = std::find(slots.begin(), slots.end(), options_.self->id);
      if (slot != slots.end()) request.set_slot_hint(1 + (slot - slots.begin()));
    }
  }
  internal::RegisterResponse response;
  const grpc::Status status = Call(kCallTimeout, [&](grpc::ClientContext* context) {
    return stub_->Register(context, request, &response);
  });
  if (!status.ok()) return status;
  *lease = absl::Milliseconds(response.lease_ms());
  bool drain_again = false;
  {
    MutexLock lock(&mutex_);
    ++stats_.registrations;
    drain_again = drained_;
  }
  DSV2_LOG(INFO) << "registered " << options_.self->id << " with controller " << options_.controller
                 << " (lease " << response.lease_ms() << " ms, map version "
                 << response.map_version() << ")";
  if (drain_again) {
    // The controller does not remember a drain across its restarts.
    internal::DrainRequest drain;
    drain.set_worker_id(options_.self->id);
    internal::DrainResponse drained;
    const grpc::Status s = Call(kCallTimeout, [&](grpc::ClientContext* context) {
      return stub_->Drain(context, drain, &drained);
    });
    if (!s.ok()) DSV2_LOG(WARNING) << "draining again failed: " << s.error_message();
  }
  return grpc::Status::OK;
}

void ControlClient::MemberLoop() {
  // Failures repeat every retry interval while the controller is away; only
  // a change of error is logged.
  std::string last_error;
  const auto log_error = [&](const char* what, const grpc::Status& status) {
    const std::string error = std::string(what) + ": " + status.error_message();
    if (error != last_error) DSV2_LOG(WARNING) << options_.self->id << ": " << error;
    last_error = error;
  };
  bool registered = false;
  absl::Duration period;
  absl::Time next_heartbeat;
  while (true) {
    if (!registered) {
      absl::Duration lease;
      const grpc::Status status = RegisterSelf(&lease);
      if (status.ok()) {
        registered = true;
        last_error.clear();
        period = std::max(lease / 3, absl::Milliseconds(10));
        next_heartbeat = absl::Now() + period;
      } else {
        if (Stopping()) return;  // The call was cancelled.
        {
          MutexLock lock(&mutex_);
          ++stats_.register_failures;
        }
        log_error("register", status);
        if (!SleepUntil(absl::Now() + options_.retry_interval)) return;
        continue;
      }
    }
    if (!SleepUntil(next_heartbeat)) return;
    internal::HeartbeatRequest request;
    request.set_worker_id(options_.self->id);
    internal::HeartbeatResponse response;
    const grpc::Status status = Call(period, [&](grpc::ClientContext* context) {
      return stub_->Heartbeat(context, request, &response);
    });
    if (status.ok()) {
      {
        MutexLock lock(&mutex_);
        ++stats_.heartbeats;
      }
      last_error.clear();
      next_heartbeat = absl::Now() + period;
      continue;
    }
    if (Stopping()) return;  // The call was cancelled.
    {
      MutexLock lock(&mutex_);
      ++stats_.heartbeat_failures;
    }
    log_error("heartbeat", status);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      registered = false;  // A new controller, or our lease lapsed: register now.
    } else {
      next_heartbeat = absl::Now() + std::min(options_.retry_interval, period);
    }
  }
}

void ControlClient::WatchLoop() {
  bool failing = false;  // Log an outage once, not every retry.
  while (true) {
    grpc::ClientContext context;
    internal::WatchRequest request;
    {
      MutexLock lock(&mutex_);
      if (stop_) return;
      // Resume from the map held: only newer ones (or another epoch's) come.
      if (map_.has_value()) {
        request.set_known_epoch(map_->epoch);
        request.set_known_version(map_->version);
      }
      in_flight_.push_back(&context);
    }
    std::unique_ptr<grpc::ClientReader<internal::ClusterMap>> reader =
        stub_->WatchClusterMap(&context, request);
    internal::ClusterMap wire;
    while (reader->Read(&wire)) {
      failing = false;
      absl::StatusOr<ClusterMap> map = FromProto(wire, config_);
      if (!map.ok()) {
        DSV2_LOG(ERROR) << "skipping cluster map version " << wire.version() << " of epoch "
                        << wire.epoch() << ": " << map.status().message();
        continue;
      }
      {
        MutexLock lock(&mutex_);
        if (map_.has_value() && !map->NewerThan(map_->epoch, map_->version)) continue;
        map_ = *map;
        ++stats_.maps_received;
      }
      if (on_map_) on_map_(*map);  // Without the lock: it may take its time.
    }
    const grpc::Status status = reader->Finish();
    {
      MutexLock lock(&mutex_);
      in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), &context));
      if (stop_) return;
      ++stats_.watch_failures;
    }
    if (!failing) {
      DSV2_LOG(WARNING) << "cluster map watch on " << options_.controller << " ended: "
                        << (status.ok() ? "controller closed it" : status.error_message())
                        << "; reconnecting";
    }
    failing = true;
    if (!SleepUntil(absl::Now() + options_.retry_interval)) return;
  }
}

}  // namespace dsv2
