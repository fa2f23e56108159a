// What every server process does the same way: parse its command line
// (with --check_flags for deployment checks), take SIGINT/SIGTERM on one
// thread (sigwait) instead of in a handler, and tell scripts and tests the
// port it bound.
#pragma once

#include <string>

#include "absl/time/time.h"

namespace dsv2 {

// Sets the usage message and parses the command line (absl flags): an
// unknown flag or a malformed value ends the process with a message naming
// it (absl's exit status 1), a stray positional argument with status 2. With --check_flags the
// process prints "PROGRAM: flags ok" and exits 0 after parsing, starting
// nothing: how a deployment (the Helm chart's test) checks that every flag
// it passes is one the binary takes.
void ParseServerFlags(int argc, char** argv, const char* usage);

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
