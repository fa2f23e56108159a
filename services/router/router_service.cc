#include "services/router/router_service.h"

#include <algorithm>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/rpc/grpc_options.h"

namespace dsv2 {
namespace {

// Prompt tokens per byte of text or chat are unknown before tokenization;
// byte-level BPE averages about this many bytes per token on prose.
constexpr int64_t kBytesPerToken = 4;
constexpr int64_t kDefaultMaxTokens = 16;  // As the public API documents.

// Prompt + output tokens a request may take: the basis of its KV charge.
int64_t EstimatedTokens(const v1::GenerateRequest& request) {
  int64_t prompt = 0;
  switch (request.input_case()) {
    case v1::GenerateRequest::kTokenIds:
      prompt = request.token_ids().ids_size();
      break;
    case v1::GenerateRequest::kText:
      prompt = static_cast<int64_t>(request.text().size()) / kBytesPerToken;
      break;
    case v1::GenerateRequest::kChat:
      for (const v1::ChatMessage& m : request.chat().messages()) {
        prompt += static_cast<int64_t>(m.content().size());
      }
      prompt /= kBytesPerToken;
      break;
    case v1::GenerateRequest::INPUT_NOT_SET:
      break;
  }
  const int64_t output =
      request.stopping().has_max_tokens() ? request.stopping().max_tokens() : kDefaultMaxTokens;
  return std::max<int64_t>(1, prompt + output);
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& address) {
  grpc::ChannelArguments args;
  // A restarted worker comes back at the same address: reconnect within a
  // second rather than after gRPC's default backoff of up to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  SetClientKeepalive(&args);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

grpc::Status Unavailable(std::string message) {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::move(message));
}

}  // namespace

struct RouterService::Worker {
  Worker(AttentionEndpoint endpoint, std::shared_ptr<grpc::Channel> channel)
      : endpoint(std::move(endpoint)),
        channel(std::move(channel)),
        generation(v1::Generation::NewStub(this->channel)),
        attention(internal::AttentionWorker::NewStub(this->channel)) {}

  bool Eligible() const { return load_known && load.serving() && !failed; }

  // Immutable, so used without the router's mutex.
  const AttentionEndpoint endpoint;
  const std::shared_ptr<grpc::Channel> channel;
  const std::unique_ptr<v1::Generation::Stub> generation;
  const std::unique_ptr<internal::AttentionWorker::Stub> attention;

  // Guarded by the router's mutex_.
  bool load_known = false;
  internal::Load load;
  bool failed = false;
  int64_t polls_started = 0;
  // polls_started when a call last failed: only a poll sent after that
  // (a higher sequence) shows the worker answers again.
  int64_t failed_after = 0;
  bool poll_in_flight = false;
  int64_t pending_blocks = 0;
  int64_t pending_requests = 0;
  int64_t active = 0;
  int64_t polls = 0;
};

struct RouterService::Poll {
  std::shared_ptr<Worker> worker;
  int64_t sequence = 0;
  // The worker's charges when the poll was sent: those requests were sent
  // before it, so its answer accounts for them.
  int64_t pending_blocks = 0;
  int64_t pending_requests = 0;
  grpc::ClientContext context;
  internal::GetLoadRequest request;
  internal::Load response;
};

RouterService::RouterService(RouterOptions options) : options_(options) {
  poller_ = std::thread([this] { PollLoop(); });
}

RouterService::~RouterService() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  poll_cv_.notify_all();
  poller_.join();
  // Callbacks of polls in flight touch this object; each ends within its
  // deadline.
  std::unique_lock<std::mutex> lock(mutex_);
  poll_cv_.wait(lock, [&] { return polls_in_flight_ == 0; });
}

void RouterService::SetWorkers(std::vector<AttentionEndpoint> endpoints) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::map<std::string, std::shared_ptr<Worker>> workers;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels;
  for (AttentionEndpoint& endpoint : endpoints) {
    if (workers.contains(endpoint.id)) {
      DSV2_LOG(WARNING) << "attention worker " << endpoint.id << " listed twice; using the first";
      continue;
    }
    const auto old = workers_.find(endpoint.id);
    if (old != workers_.end() && old->second->endpoint.grpc_address == endpoint.grpc_address) {
      workers.emplace(endpoint.id, old->second);
      channels.emplace(endpoint.grpc_address, old->second->channel);
      continue;
    }
    std::shared_ptr<grpc::Channel>& channel = channels[endpoint.grpc_address];
    if (channel == nullptr) {
      const auto cached = channels_.find(endpoint.grpc_address);
      channel = cached != channels_.end() ? cached->second : NewChannel(endpoint.grpc_address);
    }
    DSV2_LOG(INFO) << "attention worker " << endpoint.id << " at " << endpoint.grpc_address
                   << (old != workers_.end() ? " (moved)" : " added");
    const std::string id = endpoint.id;
    workers.emplace(id, std::make_shared<Worker>(std::move(endpoint), channel));
    poll_now_ = true;
  }
  for (const auto& [id, worker] : workers_) {
    if (!workers.contains(id)) DSV2_LOG(INFO) << "attention worker " << id << " removed";
  }
  workers_.swap(workers);
  channels_.swap(channels);
  if (poll_now_) poll_cv_.notify_all();
}

void RouterService::SetServing(bool serving) {
  std::lock_guard<std::mutex> lock(mutex_);
  serving_ = serving;
}

void RouterService::StopAccepting() {
  std::lock_guard<std::mutex> lock(mutex_);
  accepting_ = false;
}

int64_t RouterService::active_streams() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return active_streams_;
}

std::vector<RouterWorkerView> RouterService::workers() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<RouterWorkerView> views;
  for (const auto& [id, w] : workers_) {
    views.push_back({.endpoint = w->endpoint,
                     .load_known = w->load_known,
                     .load = w->load,
                     .failed = w->failed,
                     .eligible = w->Eligible(),
                     .pending_blocks = w->pending_blocks,
                     .pending_requests = w->pending_requests,
                     .active = w->active,
                     .polls = w->polls});
  }
  return views;
}

RouterCounters RouterService::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

std::shared_ptr<RouterService::Worker> RouterService::ChooseLocked(
    const std::set<std::string>& exclude, int64_t tokens) {
  std::shared_ptr<Worker> best;
  int64_t best_room = 0;
  int64_t best_queue = 0;
  // workers_ is ordered by id, so only a strictly better worker replaces
  // the best so far and ties go to the smaller id.
  for (const auto& [id, w] : workers_) {
    if (!w->Eligible() || exclude.contains(id)) continue;
    const int64_t room = w->load.kv_blocks_free() + w->load.kv_blocks_cached() - w->pending_blocks;
    const int64_t queue = w->load.running() + w->load.waiting() + w->pending_requests;
    if (best == nullptr || room > best_room || (room == best_room && queue < best_queue)) {
      best = w;
      best_room = room;
      best_queue = queue;
    }
  }
  if (best != nullptr && tokens > 0) {
    const int64_t block_size = std::max<int64_t>(1, best->load.block_size());
    // A request larger than the whole cache is refused there, so its charge
    // stops at the cache's size.
    best->pending_blocks +=
        std::min((tokens + block_size - 1) / block_size, best->load.kv_blocks_total());
    ++best->pending_requests;
  }
  return best;
}

void RouterService::MarkFailed(Worker& worker, const grpc::Status& status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++counters_.failures[worker.endpoint.id];
  if (!worker.failed) {
    DSV2_LOG(WARNING) << "attention worker " << worker.endpoint.id
                      << " failed a call (UNAVAILABLE: " << status.error_message()
                      << "); not chosen until it answers a poll";
  }
  worker.failed = true;
  worker.failed_after = worker.polls_started;
}

std::unique_ptr<grpc::ClientContext> RouterService::ForwardContext(grpc::ServerContext* context,
                                                                   bool bounded) const {
  // A child of the incoming call: gRPC gives it the incoming deadline and
  // cancels it when the incoming call is cancelled, so the worker aborts the
  // request however the client goes away.
  std::unique_ptr<grpc::ClientContext> forward = grpc::ClientContext::FromServerContext(*context);
  // The child keeps the earlier of this and the incoming deadline.
  if (bounded) forward->set_deadline(std::chrono::system_clock::now() + options_.unary_timeout);
  return forward;
}

RouterService::Attempt RouterService::Stream(grpc::ServerContext* context,
                                             const v1::GenerateRequest& request,
                                             grpc::ServerWriter<v1::GenerateResponse>* writer,
                                             Worker& worker) {
  Attempt attempt;
  std::unique_ptr<grpc::ClientContext> forward = ForwardContext(context, /*bounded=*/false);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      worker.generation->Generate(forward.get(), request);
  v1::GenerateResponse response;
  bool client_gone = false;
  while (reader->Read(&response)) {
    if (client_gone) continue;  // Drained until the cancellation lands.
    if (response.has_error()) {
      // The last message: held until the status says whether the call is
      // tried again elsewhere.
      attempt.error = response;
      continue;
    }
    attempt.wrote = true;
    attempt.completed = response.has_complete();
    if (!writer->Write(response)) {
      // Propagation cancels the child when the incoming call is cancelled;
      // this also covers a write that failed for another reason.
      client_gone = true;
      forward->TryCancel();
    }
  }
  attempt.status = reader->Finish();
  return attempt;
}

grpc::Status RouterService::Generate(grpc::ServerContext* context,
                                     const v1::GenerateRequest* request,
                                     grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const std::string& id = request->request_id();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!accepting_) return Unavailable("the router is draining");
    if (!serving_) {
      return Unavailable("cluster not ready: the cluster map is not complete");
    }
    // Ids must be unique among active calls across the cluster, not only on
    // one worker, so that Abort finds one. An empty id is left to the
    // worker, which rejects it.
    if (!id.empty() && !calls_.emplace(id, ActiveCall{}).second) {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("request_id '", id, "' is already in use by an active request"));
    }
    ++active_streams_;
  }
  absl::Cleanup done = [&] {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!id.empty()) calls_.erase(id);
    --active_streams_;
  };

  const int64_t tokens = EstimatedTokens(*request);
  std::set<std::string> tried;
  grpc::Status failure;
  for (int round = 0; round < 2; ++round) {
    std::shared_ptr<Worker> worker;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!id.empty() && calls_[id].aborted) {
        // Aborted before it reached a worker (or between attempts).
        v1::GenerateResponse aborted;
        aborted.mutable_complete()->set_finish_reason(v1::FINISH_REASON_ABORT);
        writer->Write(aborted);
        return grpc::Status::OK;
      }
      worker = ChooseLocked(tried, tokens);
      if (worker == nullptr) {
        if (round > 0) break;
        ++counters_.no_worker;
        return Unavailable(
            absl::StrCat("no attention worker is serving (", workers_.size(), " known)"));
      }
      if (round > 0) ++counters_.retries;
      ++counters_.forwarded[worker->endpoint.id];
      ++worker->active;
      if (!id.empty()) calls_[id].worker = worker;
    }
    tried.insert(worker->endpoint.id);
    Attempt attempt = Stream(context, *request, writer, *worker);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --worker->active;
    }
    const grpc::Status& status = attempt.status;
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) MarkFailed(*worker, status);
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && !attempt.wrote) {
      // Nothing reached the client, so another worker can serve the request
      // from the start.
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!id.empty()) calls_[id].worker = nullptr;
      }
      failure = Unavailable(absl::StrCat("attention worker ", worker->endpoint.id,
                                         " is unavailable: ", status.error_message()));
      if (round == 0) {
        DSV2_LOG(WARNING) << "request " << id << ": " << failure.error_message()
                          << "; trying another worker";
      }
      continue;
    }
    if (attempt.error) {
      // The worker's own account of the failure: passed on as it is.
      writer->Write(*attempt.error);
      return status;
    }
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return status;
    // The worker went away after part of the output reached the client.
    if (attempt.completed) return grpc::Status::OK;  // All of it, in fact.
    // Trying again elsewhere would repeat the output, so the stream ends
    // with the failure, as an Error message and as the call's status.
    const std::string message = absl::StrCat("attention worker ", worker->endpoint.id,
                                             " failed mid-stream: ", status.error_message());
    v1::GenerateResponse error;
    error.mutable_error()->set_code(grpc::StatusCode::UNAVAILABLE);
    error.mutable_error()->set_message(message);
    writer->Write(error);
    return Unavailable(message);
  }
  return failure;
}

template <typename Call>
grpc::Status RouterService::ForwardUnary(grpc::ServerContext* context, const char* method,
                                         Call call) {
  std::set<std::string> tried;
  grpc::Status failure;
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::shared_ptr<Worker> worker;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      worker = ChooseLocked(tried, /*tokens=*/0);
      if (worker == nullptr) {
        if (attempt > 0) break;
        ++counters_.no_worker;
        return Unavailable(
            absl::StrCat("no attention worker is serving (", workers_.size(), " known)"));
      }
    }
    tried.insert(worker->endpoint.id);
    const grpc::Status status = call(*worker, ForwardContext(context, /*bounded=*/true).get());
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return status;
    MarkFailed(*worker, status);
    failure = Unavailable(absl::StrCat(method, " on attention worker ", worker->endpoint.id,
                                       " failed: ", status.error_message()));
  }
  return failure;
}

grpc::Status RouterService::Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                                  v1::AbortResponse* response) {
  std::shared_ptr<Worker> worker;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = calls_.find(request->request_id());
    if (it == calls_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("no active request '", request->request_id(), "'"));
    }
    // Remembered, so that a call not on a worker right now is not sent to one.
    it->second.aborted = true;
    worker = it->second.worker;
  }
  if (worker == nullptr) return grpc::Status::OK;
  return worker->generation->Abort(ForwardContext(context, /*bounded=*/true).get(), *request,
                                   response);
}

grpc::Status RouterService::Tokenize(grpc::ServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) {
  return ForwardUnary(context, "Tokenize", [&](Worker& worker, grpc::ClientContext* forward) {
    response->Clear();
    return worker.generation->Tokenize(forward, *request, response);
  });
}

grpc::Status RouterService::GetModelInfo(grpc::ServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) {
  return ForwardUnary(context, "GetModelInfo", [&](Worker& worker, grpc::ClientContext* forward) {
    response->Clear();
    return worker.generation->GetModelInfo(forward, *request, response);
  });
}

void RouterService::PollLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    std::vector<std::unique_ptr<Poll>> polls;
    const auto deadline = std::chrono::system_clock::now() + options_.load_timeout;
    for (const auto& [id, worker] : workers_) {
      // A worker slower than the interval keeps one poll in flight, never a
      // pile of them.
      if (worker->poll_in_flight) continue;
      worker->poll_in_flight = true;
      auto poll = std::make_unique<Poll>();
      poll->worker = worker;
      poll->sequence = ++worker->polls_started;
      poll->pending_blocks = worker->pending_blocks;
      poll->pending_requests = worker->pending_requests;
      poll->context.set_deadline(deadline);
      polls.push_back(std::move(poll));
    }
    polls_in_flight_ += static_cast<int64_t>(polls.size());
    poll_now_ = false;
    // The callback may run on this thread before GetLoad returns, and it
    // takes the mutex.
    lock.unlock();
    for (std::unique_ptr<Poll>& owned : polls) {
      Poll* poll = owned.release();
      poll->worker->attention->async()->GetLoad(
          &poll->context, &poll->request, &poll->response,
          [this, poll](grpc::Status status) { OnPolled(poll, status); });
    }
    lock.lock();
    poll_cv_.wait_for(lock, options_.load_interval, [&] { return stop_ || poll_now_; });
  }
}

void RouterService::OnPolled(Poll* raw, const grpc::Status& status) {
  // Declared before the lock, so it is freed after the lock is released
  // (it may hold the last reference to a removed worker and its channel).
  std::unique_ptr<Poll> poll(raw);
  std::lock_guard<std::mutex> lock(mutex_);
  Worker& w = *poll->worker;
  w.poll_in_flight = false;
  if (status.ok()) {
    if (!w.load_known) {
      DSV2_LOG(INFO) << "attention worker " << w.endpoint.id
                     << " answers: " << (poll->response.serving() ? "serving" : "not serving")
                     << ", " << poll->response.kv_blocks_total() << " KV blocks";
    }
    w.load_known = true;
    w.load = poll->response;
    ++w.polls;
    w.pending_blocks = std::max<int64_t>(0, w.pending_blocks - poll->pending_blocks);
    w.pending_requests = std::max<int64_t>(0, w.pending_requests - poll->pending_requests);
    if (w.failed && poll->sequence > w.failed_after) w.failed = false;
  } else {
    if (w.load_known || poll->sequence == 1) {
      DSV2_LOG(WARNING) << "GetLoad on attention worker " << w.endpoint.id << " ("
                        << w.endpoint.grpc_address << ") failed: " << status.error_message()
                        << "; not chosen until it answers";
    }
    w.load_known = false;
  }
  --polls_in_flight_;
  poll_cv_.notify_all();
}

}  // namespace dsv2
