#include "common/base/process.h"

#include <signal.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"

ABSL_FLAG(bool, check_flags, false,
          "Parse the command line, print 'PROGRAM: flags ok' and exit 0 without starting "
          "anything (deployment checks).");

namespace dsv2 {
namespace {

sigset_t TerminationSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  return signals;
}

}  // namespace

void ParseServerFlags(int argc, char** argv, const char* usage) {
  absl::SetProgramUsageMessage(usage);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  const std::string program = std::filesystem::path(argv[0]).filename().string();
  if (positional.size() > 1) {
    std::cerr << program << ": unexpected argument '" << positional[1]
              << "' (flags are --name=value)\n";
    std::exit(2);
  }
  if (absl::GetFlag(FLAGS_check_flags)) {
    std::cout << program << ": flags ok\n";
    std::exit(0);
  }
}

void BlockTerminationSignals() {
  const sigset_t signals = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

int WaitForTerminationSignal(absl::Duration timeout) {
  const sigset_t signals = TerminationSignals();
  if (timeout == absl::InfiniteDuration()) {
    int signal = 0;
    sigwait(&signals, &signal);
    return signal;
  }
  const timespec wait = absl::ToTimespec(timeout);
  const int signal = sigtimedwait(&signals, nullptr, &wait);
  return signal > 0 ? signal : 0;
}

const char* TerminationSignalName(int signal) { return signal == SIGINT ? "SIGINT" : "SIGTERM"; }

void WritePortFile(const std::string& path, int port) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << port << "\n";
  std::filesystem::rename(tmp, path);
}

}  // namespace dsv2
