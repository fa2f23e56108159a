#include "common/experts/expert_server.h"

#include <map>
#include <numeric>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/mutex.h"
#include "common/model/routed_experts.h"

namespace dsv2 {

using transport::IncomingRequest;

// Shared with the transport's handler, which may outlive the server.
struct ExpertServer::Queue {
  Mutex mutex;
  std::deque<IncomingRequest> requests ABSL_GUARDED_BY(mutex);
  size_t bytes ABSL_GUARDED_BY(mutex) = 0;  // Payload bytes of `requests`.
  bool stopped ABSL_GUARDED_BY(mutex) = false;
  Stats stats ABSL_GUARDED_BY(mutex);
};

ExpertServer::ExpertServer(const DeepseekV2Model& model, transport::Transport& transport,
                           ExpertServerOptions options)
    : model_(model), options_(options), queue_(std::make_shared<Queue>()) {
  transport.SetRequestHandler([queue = queue_, limit = options.max_queued_bytes](
                                  IncomingRequest request) {
    absl::Status refused;
    {
      MutexLock lock(&queue->mutex);
      transport::PeerTraffic& traffic = queue->stats.peers[request.peer()];
      ++traffic.messages_received;
      traffic.bytes_received +=
          static_cast<int64_t>(transport::kFrameHeaderSize + request.payload().size());
      if (queue->stopped) {
        refused = absl::UnavailableError("expert server stopped");
      } else if (queue->bytes + request.payload().size() > limit && !queue->requests.empty()) {
        ++queue->stats.overloaded;
        refused = absl::ResourceExhaustedError(
            absl::StrCat("expert server queue full (", limit, " bytes waiting)"));
      } else {
        queue->bytes += request.payload().size();
        queue->requests.push_back(std::move(request));
        return;
      }
    }
    request.RespondError(refused);
  });
  thread_ = std::thread([this] { Loop(); });
}

ExpertServer::~ExpertServer() {
  std::deque<IncomingRequest> left;
  {
    MutexLock lock(&queue_->mutex);
    queue_->stopped = true;
    left.swap(queue_->requests);
    queue_->bytes = 0;
  }
  thread_.join();
  for (IncomingRequest& request : left) {
    request.RespondError(absl::UnavailableError("expert server stopped"));
  }
}

ExpertServer::Stats ExpertServer::stats() const {
  MutexLock lock(&queue_->mutex);
  Stats stats = queue_->stats;
  stats.queued = static_cast<int64_t>(queue_->requests.size());
  return stats;
}

void ExpertServer::Loop() {
  Queue& q = *queue_;
  while (true) {
    std::deque<IncomingRequest> batch;
    {
      MutexLock lock(&q.mutex);
      auto work = [&q]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(q.mutex) {
        return q.stopped || !q.requests.empty();
      };
      q.mutex.Await(absl::Condition(&work));
      if (q.stopped) return;
      if (options_.batch_window > absl::ZeroDuration()) {
        q.mutex.AwaitWithTimeout(absl::Condition(&q.stopped), options_.batch_window);
        if (q.stopped) return;
      }
      batch.swap(q.requests);
      q.bytes = 0;
    }
    ComputeBatch(batch);
  }
}

void ExpertServer::ComputeBatch(std::deque<IncomingRequest>& batch) {
  const ModelConfig& config = model_.config();
  const int64_t hidden = config.hidden_size;
  struct Valid {
    IncomingRequest* request;
    transport::DispatchView view;
  };
  std::map<uint32_t, std::vector<Valid>> by_layer;
  for (IncomingRequest& request : batch) {
    const transport::FrameHeader& header = request.header();
    absl::StatusOr<transport::DispatchView> view =
        transport::ParseDispatch(header, request.payload());
    absl::Status status = view.status();
    if (status.ok() && header.hidden_size != hidden) {
      status = absl::InvalidArgumentError(absl::StrCat("dispatch hidden size ", header.hidden_size,
                                                       " != the model's ", hidden));
    }
    if (status.ok() && (header.layer >= config.num_hidden_layers ||
                        !model_.weights().layers[header.layer].is_moe)) {
      status = absl::InvalidArgumentError(
          absl::StrCat("dispatch for layer ", header.layer, ", which has no routed experts"));
    }
    if (status.ok()) status = transport::ValidateRouting(*view, config.n_routed_experts);
    if (!status.ok()) {
      {
        MutexLock lock(&queue_->mutex);
        ++queue_->stats.invalid_requests;
      }
      request.RespondError(status);
      continue;
    }
    by_layer[header.layer].push_back({&request, *view});
  }

  std::vector<float> x, weights, partials;
  std::vector<int32_t> ids;
  for (auto& [layer, requests] : by_layer) {
    // One K for the batch: the widest; narrower requests' rows are padded.
    uint32_t k = 0;
    int64_t rows = 0;
    for (const Valid& v : requests) {
      k = std::max(k, v.request->header().top_k);
      rows += v.request->header().token_count;
    }
    x.resize(rows * hidden);
    ids.assign(rows * k, -1);
    weights.assign(rows * k, 0.0f);
    int64_t row = 0;
    for (const Valid& v : requests) {
      const transport::FrameHeader& h = v.request->header();
      ConvertToFloat(v.view.activations.data(), h.dtype, int64_t{h.token_count} * hidden,
                     &x[row * hidden]);
      for (uint32_t t = 0; t < h.token_count; ++t) {
        std::copy_n(&v.view.expert_ids[t * h.top_k], h.top_k, &ids[(row + t) * k]);
        std::copy_n(&v.view.weights[t * h.top_k], h.top_k, &weights[(row + t) * k]);
      }
      row += h.token_count;
    }
    std::vector<int32_t> source(rows);
    std::iota(source.begin(), source.end(), 0);
    partials.resize(rows * hidden);
    ComputeExpertRows(model_.backend(), model_.weights().layers[layer], x.data(), rows, source, k,
                      ids.data(), weights.data(), partials.data());
    {
      // Counted before answering, so a caller that has its answer sees it.
      MutexLock lock(&queue_->mutex);
      queue_->stats.requests += static_cast<int64_t>(requests.size());
      queue_->stats.rows += rows;
    }
    row = 0;
    for (const Valid& v : requests) {
      const transport::FrameHeader& h = v.request->header();
      absl::StatusOr<transport::Message> reply = v.request->NewCombine(h.dtype);
      if (!reply.ok()) {
        v.request->RespondError(reply.status());
      } else {
        ConvertFromFloat(&partials[row * hidden], int64_t{h.token_count} * hidden, h.dtype,
                         reply->payload.data());
        {
          MutexLock lock(&queue_->mutex);
          transport::PeerTraffic& traffic = queue_->stats.peers[v.request->peer()];
          ++traffic.messages_sent;
          traffic.bytes_sent +=
              static_cast<int64_t>(transport::kFrameHeaderSize + reply->payload.size());
        }
        if (absl::Status s = v.request->Respond(*std::move(reply)); !s.ok()) {
          DSV2_LOG(WARNING) << "expert server: cannot answer a dispatch: " << s;
        }
      }
      row += h.token_count;
    }
  }
  MutexLock lock(&queue_->mutex);
  ++queue_->stats.batches;
}

}  // namespace dsv2
