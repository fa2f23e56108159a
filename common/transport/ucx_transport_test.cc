// UCX-specific behaviour: peers in other processes killed mid-call, the
// wire UCX selects for each address kind, listener and address parsing.
// (Behaviour common to every transport is in transport_conformance_test.cc.)
#include "common/transport/ucx_transport.h"

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/transport/transport_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifndef DSV2_UCX_TEST_PEER
#error "DSV2_UCX_TEST_PEER must name the ucx_test_peer binary"
#endif

namespace dsv2::transport {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::TestDispatch;

// Sets UCX_TLS for the scope (unset when `value` is null) and restores it.
class ScopedUcxTls {
 public:
  explicit ScopedUcxTls(const char* value) {
    if (const char* old = std::getenv("UCX_TLS")) saved_ = old;
    if (value != nullptr) {
      setenv("UCX_TLS", value, 1);
    } else {
      unsetenv("UCX_TLS");
    }
  }
  ~ScopedUcxTls() {
    if (saved_) {
      setenv("UCX_TLS", saved_->c_str(), 1);
    } else {
      unsetenv("UCX_TLS");
    }
  }

 private:
  std::optional<std::string> saved_;
};

// ucx_test_peer running in a child process, talking over pipes.
class PeerProcess {
 public:
  explicit PeerProcess(const char* mode) {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(to_child[0], STDIN_FILENO);
      dup2(from_child[1], STDOUT_FILENO);
      close(to_child[1]);
      close(from_child[0]);
      execl(DSV2_UCX_TEST_PEER, DSV2_UCX_TEST_PEER, mode, static_cast<char*>(nullptr));
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    stdin_ = to_child[1];
    stdout_ = from_child[0];
  }
  ~PeerProcess() {
    if (stdin_ >= 0) close(stdin_);  // The peer exits when its stdin closes...
    if (pid_ > 0) {
      kill(pid_, SIGCONT);
      const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
      pollfd exited{pidfd, POLLIN, 0};
      if (pidfd < 0 || poll(&exited, 1, 5000) != 1) kill(pid_, SIGKILL);  // ...or is made to.
      if (pidfd >= 0) close(pidfd);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_ >= 0) close(stdout_);
  }

  // The next line the peer prints, or nullopt after `timeout`.
  std::optional<std::string> ReadLine(absl::Duration timeout) {
    const absl::Time give_up = absl::Now() + timeout;
    for (;;) {
      if (const size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      const absl::Duration left = give_up - absl::Now();
      if (left <= absl::ZeroDuration()) return std::nullopt;
      pollfd fd{stdout_, POLLIN, 0};
      if (poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) <= 0) continue;
      char chunk[512];
      const ssize_t n = read(stdout_, chunk, sizeof(chunk));
      if (n <= 0) return std::nullopt;
      buffer_.append(chunk, n);
    }
  }

  void Signal(int sig) { kill(pid_, sig); }

  // SIGSTOP, returning once the peer has stopped (kill only queues the
  // signal; until it is delivered the peer may still answer).
  void Stop() {
    kill(pid_, SIGSTOP);
    int status = 0;
    waitpid(pid_, &status, WUNTRACED);
  }

  void Kill() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
  std::string buffer_;
};

std::unique_ptr<UcxTransport> MakeClient(UcxTransportOptions::Mode mode, PeerId id = 2,
                                         absl::Duration send_timeout = absl::Seconds(10)) {
  UcxTransportOptions options;
  options.id = id;
  options.mode = mode;
  options.pool_bytes = 32 << 20;
  options.send_timeout = send_timeout;
  absl::StatusOr<std::unique_ptr<UcxTransport>> t = UcxTransport::Create(options);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

class UcxPeerDeathTest : public ::testing::TestWithParam<const char*> {};

TEST_P(UcxPeerDeathTest, PeerKilledMidCallFailsUnavailableWithinTheDeadline) {
  const bool local = std::string(GetParam()) == "local";
  ScopedUcxTls tls(local ? "sm" : "tcp");
  PeerProcess peer(GetParam());
  std::optional<std::string> address = peer.ReadLine(absl::Seconds(20));
  ASSERT_TRUE(address.has_value()) << "ucx_test_peer did not start";
  auto client =
      MakeClient(local ? UcxTransportOptions::Mode::kLocal : UcxTransportOptions::Mode::kListener);
  // The peer serves...
  absl::StatusOr<Message> reply =
      CallAndWait(*client, *address, *TestDispatch(*client, 4, 256, 2, 1), absl::Seconds(20));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(testing::CountMismatches(*TestDispatch(*client, 4, 256, 2, 1), *reply), 0u);

  // ...then dies holding a call (a large one, still mid-protocol for some).
  const absl::Duration deadline = absl::Seconds(30);
  auto held = CallFuture(*client, *address, *TestDispatch(*client, 64, 5120, 6, 2, 999),
                         absl::Now() + deadline);
  auto small = CallFuture(*client, *address, *TestDispatch(*client, 1, 64, 1, 3, 999),
                          absl::Now() + deadline);
  ASSERT_EQ(peer.ReadLine(absl::Seconds(20)), "held");
  const absl::Time killed = absl::Now();
  peer.Kill();
  for (auto* call : {&held, &small}) {
    ASSERT_EQ(call->wait_for(std::chrono::seconds(10)), std::future_status::ready)
        << "no answer 10 s after the peer died";
    const absl::Status status = call->get().status();
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  }
  const absl::Duration took = absl::Now() - killed;
  EXPECT_LT(took, absl::Seconds(5));
  std::printf("calls failed %s after SIGKILL\n", absl::FormatDuration(took).c_str());
  EXPECT_EQ(client->counters().peer_failures, 2u);
  EXPECT_EQ(client->counters().timeouts, 0u);

  // A later call to the dead address fails fast too, and the client lives on.
  const absl::Time again = absl::Now();
  EXPECT_EQ(CallAndWait(*client, *address, *TestDispatch(*client, 1, 64, 1, 0), absl::Seconds(20))
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - again, absl::Seconds(10));
}

TEST_P(UcxPeerDeathTest, SendsToAStoppedPeerTimeOutAndFailTheConnection) {
  // A peer that is alive but not progressing (SIGSTOP): sends to it cannot
  // complete, so after send_timeout the connection is failed and its calls
  // end UNAVAILABLE, long before their own deadline.
  const bool local = std::string(GetParam()) == "local";
  ScopedUcxTls tls(local ? "sm" : "tcp");
  PeerProcess peer(GetParam());
  std::optional<std::string> address = peer.ReadLine(absl::Seconds(20));
  ASSERT_TRUE(address.has_value()) << "ucx_test_peer did not start";
  auto client =
      MakeClient(local ? UcxTransportOptions::Mode::kLocal : UcxTransportOptions::Mode::kListener,
                 2, /*send_timeout=*/absl::Milliseconds(500));
  ASSERT_TRUE(
      CallAndWait(*client, *address, *TestDispatch(*client, 1, 64, 1, 0), absl::Seconds(20)).ok());
  peer.Stop();
  // Enough 640 KiB dispatches to fill any socket buffer, so some sends stay pending.
  const absl::Time start = absl::Now();
  std::vector<std::future<absl::StatusOr<Message>>> calls;
  for (uint32_t seed = 0; seed < 24; ++seed) {
    calls.push_back(CallFuture(*client, *address, *TestDispatch(*client, 64, 5120, 6, seed),
                               absl::Now() + absl::Seconds(30)));
  }
  for (auto& call : calls) {
    ASSERT_EQ(call.wait_for(std::chrono::seconds(15)), std::future_status::ready);
    EXPECT_EQ(call.get().status().code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_GE(client->counters().send_timeouts, 1u);
  EXPECT_EQ(client->counters().timeouts, 0u);
  peer.Signal(SIGCONT);
}

INSTANTIATE_TEST_SUITE_P(BothModes, UcxPeerDeathTest, ::testing::Values("listener", "local"));

TEST(UcxTransportTest, ServerShutdownFailsCallsInFlightUnavailable) {
  ScopedUcxTls tls("tcp");
  std::promise<void> got;
  std::mutex mutex;
  std::vector<IncomingRequest> held;
  auto server = MakeClient(UcxTransportOptions::Mode::kListener, 1);
  auto client = MakeClient(UcxTransportOptions::Mode::kListener, 2);
  server->SetRequestHandler([&](IncomingRequest r) {
    std::lock_guard<std::mutex> lock(mutex);
    held.push_back(std::move(r));
    if (held.size() == 1) got.set_value();
  });
  auto call = CallFuture(*client, server->address(), *TestDispatch(*client, 1, 64, 1, 0),
                         absl::Now() + absl::Seconds(30));
  ASSERT_EQ(got.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  server->Shutdown();
  ASSERT_EQ(call.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(call.get().status().code(), absl::StatusCode::kUnavailable);
}

TEST(UcxTransportTest, ListenerUsesTcpAndLocalUsesSharedMemory) {
  ScopedUcxTls tls(nullptr);  // UCX's own choice among everything available.
  for (auto mode : {UcxTransportOptions::Mode::kListener, UcxTransportOptions::Mode::kLocal}) {
    auto server = MakeClient(mode, 1);
    auto client = MakeClient(mode, 2);
    server->SetRequestHandler([](IncomingRequest r) { testing::ServeToyExpert(std::move(r)); });
    ASSERT_TRUE(CallAndWait(*client, server->address(), *TestDispatch(*client, 2, 64, 2, 0),
                            absl::Seconds(20))
                    .ok());
    absl::StatusOr<std::string> lanes = client->DescribeConnection(server->address());
    ASSERT_TRUE(lanes.ok()) << lanes.status();
    std::printf("%s: %s\n", mode == UcxTransportOptions::Mode::kLocal ? "local" : "listener",
                lanes->c_str());
    if (mode == UcxTransportOptions::Mode::kListener) {
      EXPECT_THAT(*lanes, HasSubstr("tcp/"));
    } else {
      EXPECT_THAT(*lanes, ::testing::AnyOf(HasSubstr("sysv/"), HasSubstr("posix/")));
      EXPECT_THAT(*lanes, ::testing::Not(HasSubstr("tcp/")));
    }
  }
}

TEST(UcxTransportTest, ListenerReportsTheBoundAddress) {
  auto t = MakeClient(UcxTransportOptions::Mode::kListener);
  EXPECT_THAT(t->address(), StartsWith("ucx://127.0.0.1:"));
  EXPECT_NE(t->address(), "ucx://127.0.0.1:0");
  auto local = MakeClient(UcxTransportOptions::Mode::kLocal);
  EXPECT_THAT(local->address(), StartsWith(absl::StrCat("ucx-local://", getpid(), "@")));
}

TEST(UcxTransportTest, BadListenAddressesAreErrors) {
  for (const char* bad : {"no-port", "127.0.0.1:70000", "127.0.0.1:x", "[::1:5"}) {
    UcxTransportOptions options;
    options.listen_address = bad;
    options.pool_bytes = 0;
    EXPECT_EQ(UcxTransport::Create(options).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
  // A port someone else holds.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  UcxTransportOptions taken;
  taken.listen_address = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  taken.pool_bytes = 0;
  EXPECT_EQ(UcxTransport::Create(taken).status().code(), absl::StatusCode::kUnavailable);
  close(fd);
}

TEST(UcxTransportTest, BadPeerAddressesFailTheCall) {
  auto client = MakeClient(UcxTransportOptions::Mode::kLocal);
  const std::string good = client->address();
  const std::string boot = good.substr(good.find('@') + 1, good.find('/', 12) - good.find('@') - 1);
  const std::string other_host =
      absl::StrCat("ucx-local://", getpid(), "@", std::string(boot.size(), '0'),
                   good.substr(good.find('/', 12)));
  for (const std::string& bad :
       {std::string("ucx://"), std::string("ucx://127.0.0.1"), std::string("ucx-local://12"),
        absl::StrCat("ucx-local://", getpid(), "@", boot, "/zz"), other_host,
        std::string("tcp://127.0.0.1:5")}) {
    const absl::Status status =
        CallAndWait(*client, bad, *TestDispatch(*client, 1, 16, 1, 0), absl::Seconds(5)).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << status;
  }
  EXPECT_THAT(
      CallAndWait(*client, other_host, *TestDispatch(*client, 1, 16, 1, 0), absl::Seconds(5))
          .status()
          .message(),
      HasSubstr("another host"));
}

}  // namespace
}  // namespace dsv2::transport
