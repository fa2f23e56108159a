#include "common/base/process.h"

#include <signal.h>

#include <cerrno>
#include <filesystem>
#include <fstream>

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
