// Test helper: a fresh directory of its own for each caller.
//
// ctest runs the tests of one binary as separate processes in parallel, so a
// fixed name under testing::TempDir() is shared by tests that run at the same
// time; mkdtemp makes the name unique across processes and threads.
#ifndef DSV2_COMMON_BASE_TEST_DIR_H_
#define DSV2_COMMON_BASE_TEST_DIR_H_

#include <stdlib.h>

#include <string>

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

}  // namespace dsv2::testutil

#endif  // DSV2_COMMON_BASE_TEST_DIR_H_
