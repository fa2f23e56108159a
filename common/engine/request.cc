#include "common/engine/request.h"

namespace dsv2 {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kTimeLimit: return "time_limit";
    case FinishReason::kError: return "error";
  }
  return "?";
}

namespace {

size_t EventBytes(const GenerationOutput& output) {
  size_t bytes = output.text.size() + output.token_ids.size() * sizeof(int32_t);
  for (const auto* list : {&output.logprobs, &output.prompt_logprobs}) {
    for (const TokenLogprobs& lp : *list) {
      bytes += sizeof(TokenLogprobs) + lp.top.size() * sizeof(TokenLogprob);
    }
  }
  return bytes;
}

}  // namespace

void RequestStream::Push(GenerationOutput output) {
  {
    MutexLock lock(&mutex_);
    if (output.finish) finished_ = true;
    backlog_bytes_ += EventBytes(output);
    events_.push_back(std::move(output));
  }
  MutexLock lock(&listener_mutex_);
  if (listener_) listener_();
}

std::optional<GenerationOutput> RequestStream::Next(std::chrono::milliseconds timeout) {
  MutexLock lock(&mutex_);
  const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return !events_.empty(); };
  if (!mutex_.AwaitWithTimeout(absl::Condition(&ready), absl::FromChrono(timeout))) {
    return std::nullopt;
  }
  GenerationOutput output = std::move(events_.front());
  events_.pop_front();
  backlog_bytes_ -= EventBytes(output);
  return output;
}

std::optional<GenerationOutput> RequestStream::TryNext() {
  MutexLock lock(&mutex_);
  if (events_.empty()) return std::nullopt;
  GenerationOutput output = std::move(events_.front());
  events_.pop_front();
  backlog_bytes_ -= EventBytes(output);
  return output;
}

bool RequestStream::finished() const {
  MutexLock lock(&mutex_);
  return finished_;
}

size_t RequestStream::backlog_bytes() const {
  MutexLock lock(&mutex_);
  return backlog_bytes_;
}

void RequestStream::SetListener(std::function<void()> listener) {
  bool queued;
  {
    MutexLock lock(&mutex_);
    queued = !events_.empty();
  }
  MutexLock lock(&listener_mutex_);
  listener_ = std::move(listener);
  if (listener_ && queued) listener_();
}

}  // namespace dsv2
