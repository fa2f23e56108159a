// Test helpers: a fresh directory of its own for each caller, and waiting
// for a condition.
//
// ctest runs the tests of one binary as separate processes in parallel, so a
// fixed name under testing::TempDir() is shared by tests that run at the same
// time; mkdtemp makes the name unique across processes and threads.
#ifndef DSV2_COMMON_BASE_TEST_UTIL_H_
#define DSV2_COMMON_BASE_TEST_UTIL_H_

#include <stdlib.h>

#include <chrono>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace dsv2::testutil {

// A new empty directory under testing::TempDir() whose name starts with
// `prefix`. Fails the test if it cannot be made.
inline std::string NewTestDir(const std::string& prefix) {
  std::string pattern = ::testing::TempDir();
  if (pattern.empty() || pattern.back() != '/') pattern += '/';
  pattern += prefix + "_XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp " << pattern << " failed";
  return pattern;
}

// Polls `condition` every 5 ms until it holds (true) or `timeout` passes
// (false).
template <typename Condition>
bool WaitUntil(Condition condition,
               std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace dsv2::testutil

#endif  // DSV2_COMMON_BASE_TEST_UTIL_H_
