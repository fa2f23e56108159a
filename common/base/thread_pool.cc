#include "common/base/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

namespace dsv2 {
namespace {

// How long a thread polls for what it waits on before it sleeps. The kernels
// issue one ParallelFor after another with a few microseconds of serial work
// between them (a decode step of the Lite model makes several hundred); a
// futex wake-up costs 10-70 us, more under virtualization. Polling for a
// while keeps the workers awake through a step and costs at most this much
// CPU time after the last call.
constexpr std::chrono::microseconds kSpin{500};

// Polls `done` until it holds or kSpin has passed; returns whether it holds.
template <typename Done>
bool Poll(Done done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1; !done(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return done();
  }
  return true;
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    MutexLock lock(&mutex_);
    stop_ = true;
  }
  for (auto& worker : workers_) worker.join();
}

ThreadPool& ThreadPool::Default() {
  static ThreadPool* pool = [] {
    const char* env = std::getenv("DSV2_NUM_THREADS");
    return new ThreadPool(env ? std::atoi(env) : 0);
  }();
  return *pool;
}

void ThreadPool::RunChunks(const Job& job) {
  while (true) {
    // Each index of [0, num_chunks) is taken once; the job was published
    // (under mutex_) after the counter was reset.
    const int64_t chunk = next_chunk_.fetch_add(1, std::memory_order_relaxed);
    if (chunk >= job.num_chunks) return;
    const int64_t begin = chunk * job.chunk;
    (*job.body)(begin, std::min(job.n, begin + job.chunk));
  }
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    Job job;
    Poll([&] { return published_generation_.load(std::memory_order_relaxed) != seen; });
    {
      MutexLock lock(&mutex_);
      const auto woken = [this, &seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stop_ || generation_ != seen;
      };
      mutex_.Await(absl::Condition(&woken));
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    RunChunks(job);
    // Release: the caller sees this worker's outputs once the count is zero.
    if (pending_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      done_mutex_.NotifyWaiters();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t min_chunk,
                             const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  const int threads = num_threads();
  if (threads == 1 || n <= min_chunk) {
    body(0, n);
    return;
  }
  MutexLock call_lock(&call_mutex_);
  // A few chunks per thread balance uneven cores without much locking.
  const int64_t target_chunks = static_cast<int64_t>(threads) * 4;
  const int64_t chunk = std::max(min_chunk, (n + target_chunks - 1) / target_chunks);
  const Job job{&body, n, chunk, (n + chunk - 1) / chunk};
  // The previous call's workers have all finished: nobody reads these now.
  next_chunk_.store(0, std::memory_order_relaxed);
  pending_workers_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    MutexLock lock(&mutex_);
    job_ = job;
    ++generation_;
    published_generation_.store(generation_, std::memory_order_relaxed);
  }
  RunChunks(job);
  // Acquire: the workers' outputs are visible once the count is zero.
  constexpr auto all_done =
      +[](std::atomic<int>* pending) { return pending->load(std::memory_order_acquire) == 0; };
  if (Poll([&] { return all_done(&pending_workers_); })) return;
  MutexLock lock(&done_mutex_);
  done_mutex_.Await(absl::Condition(all_done, &pending_workers_));
}

}  // namespace dsv2
