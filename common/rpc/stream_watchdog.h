// Cuts off streaming calls whose client stops reading.
//
// A server's write on a stream completes only when the client has room for
// it (HTTP/2 flow control); a client that never reads would hold the call,
// its request's resources and its output forever. A reactor arms the
// watchdog when it starts a write and disarms it when the write completes;
// a write still pending after `timeout` has its call cancelled (the client
// gets CANCELLED; the reactor sees OnCancel and a failed write).
//
//   StreamWatchdog watchdog(absl::Seconds(30));
//   auto guard = watchdog.NewGuard(context);     // once per call
//   watchdog.Arm(guard); StartWrite(&buffer);    // each write
//   ... OnWriteDone: watchdog.Disarm(guard);      OnDone: watchdog.Disarm(guard);
//
// Thread safety: thread-safe. Cancelling runs on the watchdog's thread,
// never while a caller holds its lock.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "common/base/mutex.h"
#include "grpcpp/server_context.h"

namespace dsv2 {

class StreamWatchdog {
 public:
  // One call's handle: keeps the context to cancel until the call is done.
  class Guard {
   public:
    explicit Guard(grpc::CallbackServerContext* context) : context_(context) {}

   private:
    friend class StreamWatchdog;
    Mutex mutex_;
    grpc::CallbackServerContext* context_ ABSL_GUARDED_BY(mutex_);  // Null once done.
  };

  explicit StreamWatchdog(absl::Duration timeout);
  ~StreamWatchdog();
  StreamWatchdog(const StreamWatchdog&) = delete;
  StreamWatchdog& operator=(const StreamWatchdog&) = delete;

  std::shared_ptr<Guard> NewGuard(grpc::CallbackServerContext* context) {
    return std::make_shared<Guard>(context);
  }
  // A write started: cancel the call unless Disarm comes within the timeout.
  void Arm(const std::shared_ptr<Guard>& guard);
  void Disarm(const std::shared_ptr<Guard>& guard);
  // The call is done: never touch its context again. Also disarms.
  void Forget(const std::shared_ptr<Guard>& guard);
  // Cancels the call now (unless it is done), e.g. when its client is
  // found not to read another way. Counted with the timeouts.
  void CancelNow(const std::shared_ptr<Guard>& guard);

  int64_t cancelled() const;  // Calls cut off so far.
  absl::Duration timeout() const { return timeout_; }

 private:
  void Loop();
  void DisarmLocked(const std::shared_ptr<Guard>& guard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const absl::Duration timeout_;
  mutable Mutex mutex_;
  // The armed guards by deadline, and each one's deadline (an entry in both
  // or in neither; armed_ keeps the guard alive while it is keyed here).
  std::set<std::pair<absl::Time, std::shared_ptr<Guard>>> armed_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<const Guard*, absl::Time> deadlines_ ABSL_GUARDED_BY(mutex_);
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  int64_t cancelled_ ABSL_GUARDED_BY(mutex_) = 0;
  std::thread thread_;
};

}  // namespace dsv2
