// What every server process does the same way: take SIGINT/SIGTERM on one
// thread (sigwait) instead of in a handler, and tell scripts and tests the
// port it bound.
#pragma once

#include <string>

#include "absl/time/time.h"

namespace dsv2 {

// Blocks SIGINT and SIGTERM in the calling thread and the threads it starts
// later; call first thing in main, so that WaitForTerminationSignal takes
// them.
void BlockTerminationSignals();

// Waits for SIGINT or SIGTERM (blocked by BlockTerminationSignals) and
// returns it; returns 0 when `timeout` passes first.
int WaitForTerminationSignal(absl::Duration timeout = absl::InfiniteDuration());

// "SIGINT" or "SIGTERM", for logs.
const char* TerminationSignalName(int signal);

// Writes `port` to `path` atomically (no-op for an empty path).
void WritePortFile(const std::string& path, int port);

}  // namespace dsv2
