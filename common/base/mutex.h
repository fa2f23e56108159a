// The project's mutex: std::mutex (pthreads) with clang's thread-safety
// annotations and absl::Mutex's way of waiting for a condition.
//
//   Mutex mutex_;
//   int pending_ ABSL_GUARDED_BY(mutex_) = 0;
//   ...
//   MutexLock lock(&mutex_);
//   mutex_.Await(absl::Condition(+[](int* n) { return *n == 0; }, &pending_));
//
// Why not absl::Mutex itself: Debian's abseil is not built with
// ThreadSanitizer, so TSan cannot see absl::Mutex's locking (it happens in
// the shared library) and reports every access it guards as a race. A
// pthread mutex is intercepted by every sanitizer, and the annotations give
// the same compile-time checks (-Wthread-safety).
//
// Waiting: Await blocks, with the mutex released, until `condition` holds;
// every Unlock, and every Await that starts waiting, wakes the waiters to
// re-evaluate theirs (waits are rare and short here, so the simplicity is
// worth the extra wake-ups).
//
// Thread safety: thread-safe, as a mutex is.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace dsv2 {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mutex_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    const bool wake = waiters_ > 0;
    mutex_.unlock();
    if (wake) changed_.notify_all();
  }
  // For the analysis only: the caller holds the mutex.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

  // Blocks until `condition` holds (evaluated with the mutex held).
  void Await(const absl::Condition& condition) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    AwaitWithDeadline(condition, absl::InfiniteFuture());
  }
  // As Await, giving up at `deadline`; whether `condition` holds.
  bool AwaitWithDeadline(const absl::Condition& condition, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this);
  bool AwaitWithTimeout(const absl::Condition& condition, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    return AwaitWithDeadline(condition, absl::Now() + timeout);
  }
  // Wakes every waiter to re-evaluate its condition, e.g. after state a
  // condition reads changed without this mutex (an atomic). Must not be
  // called with the mutex held.
  void NotifyWaiters() ABSL_LOCKS_EXCLUDED(this) {
    { std::lock_guard<std::mutex> lock(mutex_); }  // A waiter is either waiting or not yet evaluated.
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int waiters_ = 0;  // Threads in AwaitWithDeadline; read and written with mutex_ held.
};

// Holds a Mutex for its scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mutex) ABSL_EXCLUSIVE_LOCK_FUNCTION(mutex) : mutex_(mutex) {
    mutex_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mutex_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mutex_;
};

inline bool Mutex::AwaitWithDeadline(const absl::Condition& condition, absl::Time deadline) {
  // The caller holds mutex_; the wait borrows it.
  std::unique_lock<std::mutex> lock(mutex_, std::adopt_lock);
  ++waiters_;
  bool held = condition.Eval();
  // Waiting releases the mutex as Unlock does, after the caller may have
  // changed what other waiters' conditions read: they look again.
  if (!held && waiters_ > 1) changed_.notify_all();
  while (!held) {
    if (deadline == absl::InfiniteFuture()) {
      changed_.wait(lock);
    } else if (changed_.wait_until(lock, absl::ToChronoTime(deadline)) ==
               std::cv_status::timeout) {
      held = condition.Eval();
      break;
    }
    held = condition.Eval();
  }
  --waiters_;
  lock.release();  // Still held, by the caller.
  return held;
}

}  // namespace dsv2
