// A fixed set of worker threads for data-parallel loops in the compute
// kernels. ParallelFor splits [0, n) into contiguous chunks; every index is
// handled by exactly one call, so a kernel that writes each output from one
// index gives the same result for any number of threads.
//
// Thread safety: ParallelFor may be called from several threads; calls are
// serialized. It must not be called from inside a ParallelFor body.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/base/mutex.h"

namespace dsv2 {

class ThreadPool {
 public:
  // `num_threads` counts the calling thread; 0 means one per hardware core.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls body(begin, end) over chunks of [0, n) of at least `min_chunk`
  // indices each, and returns when all have finished.
  void ParallelFor(int64_t n, int64_t min_chunk,
                   const std::function<void(int64_t begin, int64_t end)>& body);

  // The process-wide pool used by the kernels (DSV2_NUM_THREADS or all cores).
  static ThreadPool& Default();

 private:
  // One ParallelFor call's work. Workers copy it when they see a new
  // generation, so they read it without the lock while they run chunks.
  struct Job {
    const std::function<void(int64_t, int64_t)>* body = nullptr;
    int64_t n = 0;
    int64_t chunk = 0;
    int64_t num_chunks = 0;
  };

  void WorkerLoop(int index);
  // Runs chunks of `job` until every chunk has been taken.
  void RunChunks(const Job& job);

  std::vector<std::thread> workers_;
  Mutex call_mutex_;  // Serializes ParallelFor calls.
  // Idle workers wait on it for a new job (generation_ moves) or stop_.
  Mutex mutex_;
  Job job_ ABSL_GUARDED_BY(mutex_);  // The last job; read with a new generation only.
  uint64_t generation_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  // The next chunk of the current job, and the workers still running it.
  // Atomics rather than fields under mutex_: every Unlock of a Mutex wakes
  // its waiters, and taking a chunk or finishing must not wake the idle
  // workers. Reset before the job is published under mutex_.
  std::atomic<int64_t> next_chunk_{0};
  std::atomic<int> pending_workers_{0};
  // ParallelFor waits on it for pending_workers_ to reach zero; the last
  // worker to finish wakes it.
  Mutex done_mutex_;
  // generation_, also readable without the lock: before they sleep, idle
  // workers poll it for kSpin (thread_pool.cc), as ParallelFor polls
  // pending_workers_, since waking a sleeping thread costs tens of
  // microseconds: as much as a whole small Linear.
  std::atomic<uint64_t> published_generation_{0};
};

}  // namespace dsv2
