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

// A thread that changes state and then waits (a gate: "I am here; wait to
// be let through") releases the mutex inside Await, not through Unlock; a
// waiter for that state must still see it.
TEST(MutexTest, AwaitThatStartsWaitingWakesWaitersForWhatItChanged) {
  struct Gate {
    Mutex mutex;
    bool entered ABSL_GUARDED_BY(mutex) = false;
    bool open ABSL_GUARDED_BY(mutex) = false;
  } gate;
  std::thread passer;
  {
    MutexLock lock(&gate.mutex);
    // Started with the mutex held, so it enters only once this thread waits.
    passer = std::thread([&] {
      MutexLock passer_lock(&gate.mutex);
      gate.entered = true;
      gate.mutex.Await(absl::Condition(&gate.open));
    });
    const absl::Time start = absl::Now();
    EXPECT_TRUE(gate.mutex.AwaitWithTimeout(absl::Condition(&gate.entered), absl::Seconds(10)));
    // At the timeout the condition holds too: woken is what is checked.
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "woken only by the timeout";
    gate.open = true;
  }
  passer.join();
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
