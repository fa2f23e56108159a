#include "common/experts/remote_experts.h"

#include <algorithm>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/base/logging.h"

namespace dsv2 {

const std::vector<double>& WorkersPerTokenBounds() {
  static const std::vector<double> b = {1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 64};
  return b;
}

const std::vector<double>& DataPlaneSecondsBounds() {
  static const std::vector<double> b = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,    0.1,    0.25,  0.5,    1.0,   2.5, 5.0};
  return b;
}

std::shared_ptr<const ExpertRoute> RouteFromMap(const ClusterMap& map) {
  if (map.placement.num_units == 0) return nullptr;
  auto route = std::make_shared<ExpertRoute>();
  route->placement = map.placement;
  for (const std::string& id : map.expert_workers) {
    std::string address;
    bool alive = false;
    for (const ClusterMap::Worker& w : map.workers) {
      if (w.info.id == id) {
        address = w.info.data_address;
        alive = w.state == WorkerState::kAlive && !w.suspect;
      }
    }
    route->ids.push_back(id);
    route->addresses.push_back(address);
    route->alive.push_back(alive);
  }
  return route;
}

RemoteRoutedExperts::RemoteRoutedExperts(const ModelConfig& config,
                                         transport::Transport& transport,
                                         RemoteExpertsOptions options)
    : hidden_(config.hidden_size),
      granule_size_(CombineGranuleSize(config)),
      transport_(transport),
      options_(options),
      load_(config.num_hidden_layers, config.n_routed_experts) {}

void RemoteRoutedExperts::SetRoute(std::shared_ptr<const ExpertRoute> route) {
  if (route != nullptr) {
    const size_t workers = route->placement.worker_units.size();
    DSV2_CHECK(route->ids.size() == workers && route->addresses.size() == workers &&
               route->alive.size() == workers)
        << "an ExpertRoute names every placement worker's id, address and liveness";
  }
  MutexLock lock(&mutex_);
  route_ = std::move(route);
  suspect_until_.clear();  // A new map has the latest word on liveness.
}

RemoteRoutedExperts::Stats RemoteRoutedExperts::stats() const {
  MutexLock lock(&mutex_);
  return stats_;
}

void RemoteRoutedExperts::Suspect(const std::string& address) {
  MutexLock lock(&mutex_);
  suspect_until_[address] = absl::Now() + options_.suspect_time;
}

absl::Duration RemoteRoutedExperts::AttemptTimeout() {
  if (options_.attempt_timeout > absl::ZeroDuration()) return options_.attempt_timeout;
  MutexLock lock(&mutex_);
  if (round_trip_count_ == 0) return options_.timeout;  // Nothing measured yet.
  absl::Duration slowest = absl::ZeroDuration();
  const size_t n = std::min(round_trip_count_, round_trips_.size());
  for (size_t i = 0; i < n; ++i) slowest = std::max(slowest, round_trips_[i]);
  return std::clamp(slowest * options_.attempt_factor, options_.min_attempt_timeout,
                    options_.timeout);
}

void RemoteRoutedExperts::RecordAnswer(absl::Duration round_trip) {
  MutexLock lock(&mutex_);
  round_trips_[round_trip_count_++ % round_trips_.size()] = round_trip;
}

int32_t RemoteRoutedExperts::PickWorker(const ExpertRoute& route, int32_t unit, uint64_t turn,
                                        const std::vector<bool>& avoid) {
  std::vector<int32_t> candidates;
  const absl::Time now = absl::Now();
  MutexLock lock(&mutex_);
  // A worker counts if this call's route and the latest map both list it
  // alive and it is not suspect here: a newer map may already say that a
  // worker this call still counts on was given up on.
  auto alive_in_latest = [this](const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (route_ == nullptr) return false;
    for (size_t i = 0; i < route_->addresses.size(); ++i) {
      if (route_->addresses[i] == address) return static_cast<bool>(route_->alive[i]);
    }
    return false;
  };
  for (int32_t w : route.placement.unit_workers[unit]) {
    if (!route.alive[w] || avoid[w]) continue;
    const std::string& address = route.addresses[w];
    auto it = suspect_until_.find(address);
    if (it != suspect_until_.end() && it->second > now) continue;
    if (!alive_in_latest(address)) continue;
    candidates.push_back(w);
  }
  if (candidates.empty()) return -1;
  return candidates[(turn + unit) % candidates.size()];
}

absl::Status RemoteRoutedExperts::Compute(int64_t layer, const float* x, int64_t n, int64_t k,
                                          const int32_t* ids, const float* weights, float* out,
                                          absl::FunctionRef<void()> meanwhile) {
  load_.Record(layer, n, k, ids);
  const ExpertRows rows = GroupByGranule(n, k, ids, weights, granule_size_);
  const int64_t num_rows = rows.size();
  std::shared_ptr<const ExpertRoute> route;
  uint64_t turn;
  {
    MutexLock lock(&mutex_);
    route = route_;
    turn = turn_++;
  }
  bool ran_meanwhile = false;
  Stats call;  // This call's share of the stats.
  call.calls = 1;
  std::optional<absl::Time> waiting_since;  // When `meanwhile` returned after dispatching.
  auto finish = [&](absl::Status status) {
    if (!ran_meanwhile) meanwhile();
    if (waiting_since) call.wait.Observe(absl::ToDoubleSeconds(absl::Now() - *waiting_since));
    MutexLock lock(&mutex_);
    stats_.calls += call.calls;
    stats_.tokens += call.tokens;
    stats_.token_workers += call.token_workers;
    stats_.max_workers_per_token = std::max(stats_.max_workers_per_token, call.max_workers_per_token);
    stats_.workers_per_token.Add(call.workers_per_token);
    stats_.wait.Add(call.wait);
    stats_.dispatches += call.dispatches;
    stats_.resends += call.resends;
    stats_.attempt_timeouts += call.attempt_timeouts;
    stats_.failures += status.ok() ? 0 : 1;
    for (const auto& [id, peer] : call.peers) {
      PeerStats& into = stats_.peers[id];
      into.traffic += peer.traffic;
      into.round_trip.Add(peer.round_trip);
    }
    return status;
  };
  if (route == nullptr) {
    return finish(absl::UnavailableError("no expert placement yet (the cluster map has none)"));
  }

  const size_t num_workers = route->ids.size();
  std::vector<int32_t> unit(num_rows), worker(num_rows);
  for (int64_t r = 0; r < num_rows; ++r) {
    unit[r] = route->placement.UnitOf(static_cast<int32_t>(rows.granule[r] * granule_size_));
  }
  std::vector<float> partials(num_rows * hidden_);
  const absl::Time deadline = absl::Now() + options_.timeout;
  const int64_t act_bytes = hidden_ * DTypeSize(options_.dispatch_dtype);
  std::string last_failure;  // The latest worker failure, for the error.

  // One dispatch of some rows to one worker. An attempt past its deadline
  // is overdue: its rows go to another replica where there is one, and
  // whichever answers first is taken. So a worker that was only slow costs
  // nothing, and one that was not heard from by the end is the one given up
  // on.
  struct Attempt {
    int32_t worker;
    std::vector<int64_t> rows;  // Ascending.
    absl::Time sent, due;
    bool answered = false;
    bool overdue = false;
  };
  // The replies, with when each arrived (the round trip is measured there,
  // not when this thread gets to it). Shared with the transport's callbacks,
  // which may run after this call has returned.
  struct Reply {
    size_t attempt;
    absl::StatusOr<transport::Message> message;
    absl::Time at;
  };
  struct Inbox {
    Mutex mutex;
    std::vector<Reply> replies ABSL_GUARDED_BY(mutex);
  };
  auto inbox = std::make_shared<Inbox>();
  std::vector<Attempt> attempts;
  std::vector<bool> done(num_rows, false);
  std::vector<int32_t> sends(num_rows, 0);    // Attempts that carried the row.
  std::vector<int32_t> pending(num_rows, 0);  // Unanswered ones.
  std::vector<int32_t> on_time(num_rows, 0);  // Unanswered and not overdue.
  std::vector<bool> failed(num_workers, false);  // Answered an error in this call.
  int64_t rows_left = num_rows;

  // Sends every row that is neither done nor awaited in time to a worker
  // that has neither failed in this call nor an overdue attempt; a row
  // without one waits for its overdue attempts, or fails the call.
  auto dispatch = [&]() -> absl::Status {
    std::vector<bool> avoid = failed;
    for (const Attempt& a : attempts) {
      if (a.overdue && !a.answered) avoid[a.worker] = true;
    }
    std::map<int32_t, std::vector<int64_t>> by_worker;  // Rows ascending per worker.
    std::map<int32_t, int32_t> unit_worker;             // This round's pick per unit.
    for (int64_t r = 0; r < num_rows; ++r) {
      if (done[r] || on_time[r] > 0) continue;
      auto [pick, added] = unit_worker.try_emplace(unit[r]);
      if (added) pick->second = PickWorker(*route, unit[r], turn, avoid);
      const int32_t w = pick->second;
      if (w >= 0) {
        by_worker[w].push_back(r);
      } else if (pending[r] == 0) {
        const int32_t u = unit[r];
        return absl::UnavailableError(absl::StrCat(
            "experts [", route->placement.unit_begin[u], ", ", route->placement.unit_begin[u + 1],
            ") have no reachable expert worker",
            last_failure.empty() ? "" : absl::StrCat(" (last failure: ", last_failure, ")")));
      }
    }
    for (auto& [w, mine] : by_worker) {
      absl::StatusOr<transport::Message> message = transport::NewDispatch(
          {.step_id = turn, .layer = static_cast<uint32_t>(layer)},
          static_cast<uint32_t>(mine.size()), static_cast<uint32_t>(hidden_),
          static_cast<uint32_t>(k), options_.dispatch_dtype,
          [this](size_t bytes) { return transport_.AllocatePayload(bytes); });
      if (!message.ok()) return message.status();
      absl::StatusOr<transport::DispatchSpans> spans =
          transport::DispatchSpansOf(message->header, message->payload.span());
      if (!spans.ok()) return spans.status();
      for (size_t i = 0; i < mine.size(); ++i) {
        const int64_t r = mine[i];
        ConvertFromFloat(x + int64_t{rows.token[r]} * hidden_, hidden_, options_.dispatch_dtype,
                         spans->activations.data() + i * act_bytes);
        std::copy_n(&rows.ids[r * k], k, &spans->expert_ids[i * k]);
        std::copy_n(&rows.weights[r * k], k, &spans->weights[i * k]);
        call.resends += sends[r] > 0 ? 1 : 0;
        ++sends[r];
        ++pending[r];
        ++on_time[r];
      }
      transport::PeerTraffic& traffic = call.peers[route->ids[w]].traffic;
      ++traffic.messages_sent;
      traffic.bytes_sent +=
          static_cast<int64_t>(transport::kFrameHeaderSize + message->payload.size());
      const absl::Time sent = absl::Now();
      const size_t index = attempts.size();
      attempts.push_back({w, std::move(mine), sent, std::min(sent + AttemptTimeout(), deadline)});
      transport_.Call(route->addresses[w], *std::move(message), deadline,
                      [inbox, index](absl::StatusOr<transport::Message> message) {
                        const absl::Time at = absl::Now();
                        MutexLock lock(&inbox->mutex);
                        inbox->replies.push_back({index, std::move(message), at});
                      });
      ++call.dispatches;
    }
    return absl::OkStatus();
  };

  while (rows_left > 0) {
    if (absl::Status status = dispatch(); !status.ok()) return finish(status);
    if (!ran_meanwhile) {
      meanwhile();
      ran_meanwhile = true;
      waiting_since = absl::Now();
    }

    // Wait for a reply, the next attempt's deadline or the call's.
    absl::Time wake = deadline;
    for (const Attempt& a : attempts) {
      if (!a.answered && !a.overdue) wake = std::min(wake, a.due);
    }
    std::vector<Reply> replies;
    {
      MutexLock lock(&inbox->mutex);
      const auto replied = [&inbox]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(inbox->mutex) {
        return !inbox->replies.empty();
      };
      inbox->mutex.AwaitWithDeadline(absl::Condition(&replied), wake);
      replies.swap(inbox->replies);
    }

    for (Reply& reply_of : replies) {
      Attempt& a = attempts[reply_of.attempt];
      absl::StatusOr<transport::Message>& reply = reply_of.message;
      const std::string& id = route->ids[a.worker];
      absl::StatusOr<absl::Span<const uint8_t>> sums =
          reply.ok() ? transport::ParseCombine(reply->header, reply->payload.span())
                     : absl::StatusOr<absl::Span<const uint8_t>>(reply.status());
      // The call's own deadline passing is dealt with below, naming the
      // worker that was waited for.
      if (absl::IsDeadlineExceeded(sums.status())) continue;
      if (absl::IsCancelled(sums.status())) return finish(sums.status());  // Shutting down.
      a.answered = true;
      for (int64_t r : a.rows) {
        --pending[r];
        if (!a.overdue) --on_time[r];
      }
      if (reply.ok()) {
        PeerStats& peer = call.peers[id];
        ++peer.traffic.messages_received;
        peer.traffic.bytes_received +=
            static_cast<int64_t>(transport::kFrameHeaderSize + reply->payload.size());
        if (sums.ok()) peer.round_trip.Observe(absl::ToDoubleSeconds(reply_of.at - a.sent));
      }
      if (sums.ok()) {
        RecordAnswer(reply_of.at - a.sent);
        const int64_t row_bytes = hidden_ * DTypeSize(reply->header.dtype);
        for (size_t j = 0; j < a.rows.size(); ++j) {
          const int64_t r = a.rows[j];
          if (done[r]) continue;  // Another replica was first; the same numbers.
          ConvertToFloat(sums->data() + j * row_bytes, reply->header.dtype, hidden_,
                         &partials[r * hidden_]);
          done[r] = true;
          worker[r] = a.worker;
          --rows_left;
        }
      } else {
        // Unreachable, overloaded, or answering what it should not (an error
        // frame, a malformed reply: e.g. another model's worker). That
        // worker's failure, not this process's: its rows go to a replica.
        DSV2_LOG(WARNING) << "expert worker " << id << " failed; resending its rows: "
                          << sums.status();
        Suspect(route->addresses[a.worker]);
        failed[a.worker] = true;
        last_failure = absl::StrCat(id, ": ", sums.status().ToString());
      }
    }

    const absl::Time now = absl::Now();
    for (Attempt& a : attempts) {
      if (a.answered || a.overdue || now < a.due) continue;
      a.overdue = true;
      ++call.attempt_timeouts;
      for (int64_t r : a.rows) --on_time[r];
    }
    if (rows_left > 0 && now >= deadline) {
      // A worker with no replica to go to did not answer at all: it is
      // unreachable for this layer, whatever the cause.
      for (const Attempt& a : attempts) {
        if (a.answered ||
            std::all_of(a.rows.begin(), a.rows.end(), [&](int64_t r) { return done[r]; })) {
          continue;
        }
        const std::string& id = route->ids[a.worker];
        const std::string& address = route->addresses[a.worker];
        const std::string why =
            absl::StrCat("no answer within ", absl::FormatDuration(options_.timeout));
        Suspect(address);
        if (options_.on_suspect) options_.on_suspect(id, why);
        return finish(absl::UnavailableError(
            absl::StrCat("expert worker ", id, " (", address, "): ", why)));
      }
    }
  }

  // Workers still silent whose rows a replica answered: slow or hung.
  std::vector<bool> reported(num_workers, false);
  for (const Attempt& a : attempts) {
    if (!a.overdue || a.answered || reported[a.worker]) continue;
    reported[a.worker] = true;
    const std::string& id = route->ids[a.worker];
    const std::string why = absl::StrCat("no answer to a dispatch of layer ", layer, " within ",
                                         absl::FormatDuration(a.due - a.sent));
    DSV2_LOG(WARNING) << "expert worker " << id << ": " << why << "; its rows went to replicas";
    Suspect(route->addresses[a.worker]);
    if (options_.on_suspect) options_.on_suspect(id, why);
  }

  SumRowPartials(rows, partials.data(), n, hidden_, out);
  // Rows of a token are adjacent: count the distinct workers it reached.
  call.tokens = n;
  for (int64_t r = 0; r < num_rows;) {
    std::vector<int32_t> reached;
    const int32_t t = rows.token[r];
    for (; r < num_rows && rows.token[r] == t; ++r) {
      if (std::find(reached.begin(), reached.end(), worker[r]) == reached.end()) {
        reached.push_back(worker[r]);
      }
    }
    call.workers_per_token.Observe(static_cast<double>(reached.size()));
    call.token_workers += static_cast<int64_t>(reached.size());
    call.max_workers_per_token =
        std::max<int64_t>(call.max_workers_per_token, static_cast<int64_t>(reached.size()));
  }
  return finish(absl::OkStatus());
}

}  // namespace dsv2
