#include "common/base/mutex.h"

#include <thread>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

struct Counter {
  Mutex mutex;
  int value ABSL_GUARDED_BY(mutex) = 0;
};

bool AtLeastThree(int* value) { return *value >= 3; }

TEST(MutexTest, AwaitReturnsOnceAnotherThreadMakesTheConditionTrue) {
  Counter c;
  std::thread incrementer([&] {
    for (int i = 0; i < 5; ++i) {
      MutexLock lock(&c.mutex);
      ++c.value;
    }
  });
  {
    MutexLock lock(&c.mutex);
    c.mutex.Await(absl::Condition(&AtLeastThree, &c.value));
    EXPECT_GE(c.value, 3);
  }
  incrementer.join();
}

TEST(MutexTest, AwaitWithTimeoutGivesUpAndSaysSo) {
  Counter c;
  MutexLock lock(&c.mutex);
  const absl::Time start = absl::Now();
  EXPECT_FALSE(c.mutex.AwaitWithTimeout(absl::Condition(&AtLeastThree, &c.value),
                                        absl::Milliseconds(50)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  c.value = 3;
  EXPECT_TRUE(c.mutex.AwaitWithTimeout(absl::Condition(&AtLeastThree, &c.value),
                                       absl::Milliseconds(50)));
}

TEST(MutexTest, NotifyWaitersWakesAWaiterOnAnAtomic) {
  Mutex mutex;
  std::atomic<bool> flag{false};
  std::thread setter([&] {
    flag = true;
    mutex.NotifyWaiters();
  });
  {
    MutexLock lock(&mutex);
    EXPECT_TRUE(mutex.AwaitWithTimeout(
        absl::Condition(+[](std::atomic<bool>* f) { return f->load(); }, &flag), absl::Seconds(10)));
  }
  setter.join();
}

}  // namespace
}  // namespace dsv2
