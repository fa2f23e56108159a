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

void RequestStream::Push(GenerationOutput output) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (output.finish) finished_ = true;
    events_.push_back(std::move(output));
  }
  ready_.notify_all();
}

std::optional<GenerationOutput> RequestStream::Next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!ready_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  GenerationOutput output = std::move(events_.front());
  events_.pop_front();
  return output;
}

bool RequestStream::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

}  // namespace dsv2
