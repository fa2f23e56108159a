#include "common/base/thread_pool.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

TEST(ThreadPoolTest, EveryIndexVisitedExactlyOnce) {
  ThreadPool pool(4);
  for (int64_t n : {1, 3, 17, 1000, 4097}) {
    std::vector<std::atomic<int>> visits(n);
    pool.ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) visits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(visits[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

TEST(ThreadPoolTest, RespectsMinimumChunk) {
  ThreadPool pool(3);
  std::atomic<int> calls{0};
  pool.ParallelFor(100, 60, [&](int64_t begin, int64_t end) {
    EXPECT_TRUE(end - begin >= 60 || end == 100);
    calls.fetch_add(1);
  });
  EXPECT_LE(calls.load(), 2);
}

TEST(ThreadPoolTest, ConcurrentCallersAreSerialized) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int r = 0; r < 50; ++r) {
        pool.ParallelFor(64, 1, [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 4 * 50 * 64);
}

TEST(ThreadPoolTest, WorkersPollingOrAsleepBothTakeTheNextCall) {
  // Idle workers poll for a while, then sleep: calls back to back, a little
  // apart, and far apart (asleep) all run every index once, and a plain
  // (non-atomic) write in a body is seen by the caller when the call returns.
  ThreadPool pool(3);
  for (auto gap : {std::chrono::microseconds(0), std::chrono::microseconds(100),
                   std::chrono::microseconds(3000)}) {
    for (int call = 0; call < 20; ++call) {
      std::this_thread::sleep_for(gap);
      std::vector<int> visits(96, 0);
      pool.ParallelFor(96, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) visits[i] += 1;
      });
      for (int64_t i = 0; i < 96; ++i) {
        ASSERT_EQ(visits[i], 1) << "gap " << gap.count() << " us, call " << call << ", i " << i;
      }
    }
  }
}

TEST(ThreadPoolTest, DestroyedWhileItsWorkersPoll) {
  for (int round = 0; round < 20; ++round) {
    ThreadPool pool(2);
    std::atomic<int64_t> total{0};
    pool.ParallelFor(8, 1, [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
    EXPECT_EQ(total.load(), 8);
  }  // Joins its workers, which are still polling for the next call.
}

}  // namespace
}  // namespace dsv2
