#include "common/rpc/stream_watchdog.h"

#include <vector>

namespace dsv2 {

StreamWatchdog::StreamWatchdog(absl::Duration timeout)
    : timeout_(timeout), thread_([this] { Loop(); }) {}

StreamWatchdog::~StreamWatchdog() {
  {
    MutexLock lock(&mutex_);
    stop_ = true;
  }
  thread_.join();
}

void StreamWatchdog::DisarmLocked(const std::shared_ptr<Guard>& guard) {
  auto it = deadlines_.find(guard.get());
  if (it == deadlines_.end()) return;
  armed_.erase({it->second, guard});
  deadlines_.erase(it);
}

void StreamWatchdog::Arm(const std::shared_ptr<Guard>& guard) {
  MutexLock lock(&mutex_);
  DisarmLocked(guard);
  const absl::Time deadline = absl::Now() + timeout_;
  deadlines_.emplace(guard.get(), deadline);
  armed_.insert({deadline, guard});
}

void StreamWatchdog::Disarm(const std::shared_ptr<Guard>& guard) {
  MutexLock lock(&mutex_);
  DisarmLocked(guard);
}

void StreamWatchdog::Forget(const std::shared_ptr<Guard>& guard) {
  Disarm(guard);
  MutexLock lock(&guard->mutex_);
  guard->context_ = nullptr;
}

void StreamWatchdog::CancelNow(const std::shared_ptr<Guard>& guard) {
  Disarm(guard);
  {
    MutexLock lock(&mutex_);
    ++cancelled_;
  }
  MutexLock lock(&guard->mutex_);
  if (guard->context_ != nullptr) guard->context_->TryCancel();
}

int64_t StreamWatchdog::cancelled() const {
  MutexLock lock(&mutex_);
  return cancelled_;
}

void StreamWatchdog::Loop() {
  MutexLock lock(&mutex_);
  while (!stop_) {
    const absl::Time next = armed_.empty() ? absl::Now() + absl::Milliseconds(200)
                                           : armed_.begin()->first;
    mutex_.AwaitWithDeadline(absl::Condition(&stop_), std::min(next, absl::Now() + absl::Seconds(1)));
    if (stop_) break;
    std::vector<std::shared_ptr<Guard>> expired;
    const absl::Time now = absl::Now();
    while (!armed_.empty() && armed_.begin()->first <= now) {
      expired.push_back(armed_.begin()->second);
      deadlines_.erase(expired.back().get());
      armed_.erase(armed_.begin());
      ++cancelled_;
    }
    mutex_.Unlock();
    for (const std::shared_ptr<Guard>& guard : expired) {
      MutexLock guard_lock(&guard->mutex_);
      if (guard->context_ != nullptr) guard->context_->TryCancel();
    }
    mutex_.Lock();
  }
}

}  // namespace dsv2
