// A fixed set of worker threads for data-parallel loops in the compute
// kernels. ParallelFor splits [0, n) into contiguous chunks; every index is
// handled by exactly one call, so a kernel that writes each output from one
// index gives the same result for any number of threads.
//
// Thread safety: ParallelFor may be called from several threads; calls are
// serialized. It must not be called from inside a ParallelFor body.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

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
  void WorkerLoop(int index);
  void RunChunks();

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // Serializes ParallelFor calls.
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 0;
  int64_t next_chunk_ = 0;  // Guarded by mutex_.
  int64_t num_chunks_ = 0;
  int pending_workers_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace dsv2
