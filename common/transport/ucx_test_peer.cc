// A UCX data-plane server in a process of its own, for the tests that kill
// a peer (ucx_transport_test.cc).
//
//   ucx_test_peer tcp|local
//
// Prints its address as the first line of standard output, then serves the
// toy expert; a dispatch for layer 999 is held unanswered and announced with
// a line "held". Exits when standard input closes.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "common/base/mutex.h"
#include "common/transport/transport_test_util.h"
#include "common/transport/ucx_transport.h"

int main(int argc, char** argv) {
  using namespace dsv2::transport;
  UcxTransportOptions options;
  options.id = 1000;
  options.pool_bytes = 8 << 20;
  options.mode = argc > 1 && std::strcmp(argv[1], "local") == 0
                     ? UcxTransportOptions::Mode::kLocal
                     : UcxTransportOptions::Mode::kTcp;
  absl::StatusOr<std::unique_ptr<UcxTransport>> transport = UcxTransport::Create(options);
  if (!transport.ok()) {
    std::fprintf(stderr, "ucx_test_peer: %s\n", std::string(transport.status().message()).c_str());
    return 1;
  }
  dsv2::Mutex mutex;
  std::vector<IncomingRequest> held;
  (*transport)->SetRequestHandler([&](IncomingRequest request) {
    if (request.header().layer == 999) {
      dsv2::MutexLock lock(&mutex);
      held.push_back(std::move(request));
      std::printf("held\n");
      std::fflush(stdout);
      return;
    }
    testing::ServeToyExpert(std::move(request));
  });
  std::printf("%s\n", (*transport)->address().c_str());
  std::fflush(stdout);
  char buffer[64];
  while (read(STDIN_FILENO, buffer, sizeof(buffer)) > 0) {
  }
  return 0;
}
