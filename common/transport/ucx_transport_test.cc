// UCX-specific behaviour: peers in other processes killed mid-call, the
// wire UCX selects for each address kind, what listens and that garbage
// cannot kill it, sealed frames, and address parsing.
// (Behaviour common to every transport is in transport_conformance_test.cc.)
#include "common/transport/ucx_transport.h"

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/base/mutex.h"
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
      MakeClient(local ? UcxTransportOptions::Mode::kLocal : UcxTransportOptions::Mode::kTcp);
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
      MakeClient(local ? UcxTransportOptions::Mode::kLocal : UcxTransportOptions::Mode::kTcp,
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

INSTANTIATE_TEST_SUITE_P(BothModes, UcxPeerDeathTest, ::testing::Values("tcp", "local"));

TEST(UcxTransportTest, ServerShutdownFailsCallsInFlightUnavailable) {
  ScopedUcxTls tls("tcp");
  std::promise<void> got;
  Mutex mutex;
  std::vector<IncomingRequest> held;
  auto server = MakeClient(UcxTransportOptions::Mode::kTcp, 1);
  auto client = MakeClient(UcxTransportOptions::Mode::kTcp, 2);
  server->SetRequestHandler([&](IncomingRequest r) {
    MutexLock lock(&mutex);
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

TEST(UcxTransportTest, TcpModeUsesTcpAndLocalUsesSharedMemory) {
  ScopedUcxTls tls(nullptr);  // Each mode's own choice.
  for (auto mode : {UcxTransportOptions::Mode::kTcp, UcxTransportOptions::Mode::kLocal}) {
    auto server = MakeClient(mode, 1);
    auto client = MakeClient(mode, 2);
    server->SetRequestHandler([](IncomingRequest r) { testing::ServeToyExpert(std::move(r)); });
    ASSERT_TRUE(CallAndWait(*client, server->address(), *TestDispatch(*client, 2, 64, 2, 0),
                            absl::Seconds(20))
                    .ok());
    absl::StatusOr<std::string> lanes = client->DescribeConnection(server->address());
    ASSERT_TRUE(lanes.ok()) << lanes.status();
    std::printf("%s: %s\n", mode == UcxTransportOptions::Mode::kLocal ? "local" : "tcp",
                lanes->c_str());
    if (mode == UcxTransportOptions::Mode::kTcp) {
      EXPECT_THAT(*lanes, HasSubstr("tcp/"));
    } else {
      EXPECT_THAT(*lanes, ::testing::AnyOf(HasSubstr("sysv/"), HasSubstr("posix/")));
      EXPECT_THAT(*lanes, ::testing::Not(HasSubstr("tcp/")));
    }
  }
}

TEST(UcxTransportTest, TcpModeReportsTheBoundAddress) {
  auto t = MakeClient(UcxTransportOptions::Mode::kTcp);
  EXPECT_THAT(t->address(), StartsWith("ucx://127.0.0.1:"));
  EXPECT_THAT(t->address(), ::testing::Not(StartsWith("ucx://127.0.0.1:0/")));
  auto local = MakeClient(UcxTransportOptions::Mode::kLocal);
  EXPECT_THAT(local->address(), StartsWith(absl::StrCat("ucx-local://", getpid(), "@")));
}

TEST(UcxTransportTest, BadListenAddressesAreErrors) {
  for (const char* bad : {"no-port", "127.0.0.1:70000", "127.0.0.1:x", "[::1:5", "0.0.0.0:0",
                          "192.0.2.123:0", "localhost:0"}) {
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
       {std::string("ucx://"), std::string("ucx://127.0.0.1"), std::string("ucx://127.0.0.1:5/"),
        std::string("ucx://127.0.0.1:5/xyz"), std::string("ucx-local://12"),
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

// This process's TCP sockets in LISTEN state, as "IP:PORT" (IPv4) from
// /proc/net/tcp, limited to those whose inode is one of our descriptors.
std::set<std::string> ListeningSockets() {
  std::set<std::string> inodes;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(fd.path(), ec).string();
    if (target.starts_with("socket:[")) inodes.insert(target.substr(8, target.size() - 9));
  }
  std::set<std::string> listening;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string sl, local, remote, state, queues, tr, retr, uid, timeout, inode;
      fields >> sl >> local >> remote >> state >> queues >> tr >> retr >> uid >> timeout >> inode;
      if (state != "0A" || !inodes.contains(inode)) continue;
      const std::string hex_ip = local.substr(0, local.find(':'));
      const int port = std::stoi(local.substr(local.find(':') + 1), nullptr, 16);
      if (hex_ip.size() == 8) {
        const uint32_t ip = static_cast<uint32_t>(std::stoul(hex_ip, nullptr, 16));
        listening.insert(absl::StrCat(ip & 0xff, ".", (ip >> 8) & 0xff, ".", (ip >> 16) & 0xff,
                                      ".", ip >> 24, ":", port));
      } else {
        listening.insert(absl::StrCat("[v6]:", port));
      }
    }
  }
  return listening;
}

// "IP:PORT" of a ucx:// address.
std::string HostPort(const std::string& address) {
  const std::string rest = address.substr(std::strlen("ucx://"));
  return rest.substr(0, rest.find('/'));
}

// Connects to `host_port` over plain TCP, sends `bytes` and closes.
void SendGarbage(const std::string& host_port, const std::string& bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(host_port.substr(host_port.find(':') + 1))));
  inet_pton(AF_INET, host_port.substr(0, host_port.find(':')).c_str(), &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    [[maybe_unused]] ssize_t n = write(fd, bytes.data(), bytes.size());
  }
  close(fd);
}

TEST(UcxTransportTest, TcpModeListensOnItsAddressOnlyAndGarbageCannotKillIt) {
  ScopedUcxTls tls(nullptr);  // The mode's own choice: TCP on the address's interface.
  const std::set<std::string> before = ListeningSockets();
  auto server = MakeClient(UcxTransportOptions::Mode::kTcp, 1);
  auto client = MakeClient(UcxTransportOptions::Mode::kTcp, 2);
  server->SetRequestHandler([](IncomingRequest r) { testing::ServeToyExpert(std::move(r)); });
  ASSERT_TRUE(CallAndWait(*client, server->address(), *TestDispatch(*client, 2, 64, 2, 0),
                          absl::Seconds(20))
                  .ok());
  // Exactly the two published addresses listen, on 127.0.0.1 only (the
  // connection-manager listener that a few bytes crashed is gone).
  std::set<std::string> added;
  for (const std::string& s : ListeningSockets()) {
    if (!before.contains(s)) added.insert(s);
  }
  EXPECT_EQ(added, (std::set<std::string>{HostPort(server->address()), HostPort(client->address())}));

  // The 16 bytes that aborted UCX 1.13's connection manager, then every
  // first byte with lengths around the header sizes, then random bytes.
  std::vector<std::string> attacks = {
      std::string("\xff\xff\xff\xff\xff\xff\xff\xff\x01\x01\x01\x01\x01\x01\x01\x01", 16)};
  std::mt19937 rng(11);
  for (int first = 0; first < 256; first += 5) {
    for (uint32_t length : {0u, 1u, 8u, 64u, 4096u, 0x7fffffffu, 0xffffffffu}) {
      std::string bytes(1, static_cast<char>(first));
      bytes.append(reinterpret_cast<const char*>(&length), 4);
      for (int i = 0; i < 64; ++i) bytes.push_back(static_cast<char>(rng()));
      attacks.push_back(bytes);
    }
  }
  for (int i = 0; i < 50; ++i) {
    std::string bytes(1 + rng() % 3000, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    attacks.push_back(bytes);
  }
  for (const std::string& bytes : attacks) SendGarbage(HostPort(server->address()), bytes);
  // Still serving, from an existing and from a new connection.
  EXPECT_TRUE(CallAndWait(*client, server->address(), *TestDispatch(*client, 2, 64, 2, 1),
                          absl::Seconds(20))
                  .ok());
  auto another = MakeClient(UcxTransportOptions::Mode::kTcp, 3);
  EXPECT_TRUE(CallAndWait(*another, server->address(), *TestDispatch(*another, 2, 64, 2, 2),
                          absl::Seconds(20))
                  .ok());
}

TEST(UcxTransportTest, LocalModeOpensNoSocket) {
  ScopedUcxTls tls(nullptr);
  const std::set<std::string> before = ListeningSockets();
  auto server = MakeClient(UcxTransportOptions::Mode::kLocal, 1);
  auto client = MakeClient(UcxTransportOptions::Mode::kLocal, 2);
  server->SetRequestHandler([](IncomingRequest r) { testing::ServeToyExpert(std::move(r)); });
  ASSERT_TRUE(CallAndWait(*client, server->address(), *TestDispatch(*client, 2, 64, 2, 0),
                          absl::Seconds(20))
                  .ok());
  EXPECT_EQ(ListeningSockets(), before);
}

FrameKey Key(uint64_t id, uint8_t fill) {
  FrameKey key{.id = id};
  key.secret.fill(fill);
  return key;
}

class UcxSealTest : public ::testing::TestWithParam<UcxTransportOptions::Mode> {};

TEST_P(UcxSealTest, OnlyFramesSealedWithTheClusterKeyAreServed) {
  ScopedUcxTls tls(GetParam() == UcxTransportOptions::Mode::kTcp ? "tcp" : "sm");
  auto server = MakeClient(GetParam(), 1);
  auto member = MakeClient(GetParam(), 2);
  auto outsider = MakeClient(GetParam(), 3);
  auto plain = MakeClient(GetParam(), 4);
  server->SetRequestHandler([](IncomingRequest r) { testing::ServeToyExpert(std::move(r)); });
  server->SetFrameKeys({Key(5, 0xa5)});
  member->SetFrameKeys({Key(5, 0xa5)});
  outsider->SetFrameKeys({Key(5, 0x5a)});  // Knows the id, not the key.

  // A member's sealed call is served (bf16 and f32, eager and rendezvous).
  for (uint32_t tokens : {1u, 64u}) {
    absl::StatusOr<Message> reply = CallAndWait(
        *member, server->address(), *TestDispatch(*member, tokens, 5120, 2, tokens), absl::Seconds(20));
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(testing::CountMismatches(*TestDispatch(*member, tokens, 5120, 2, tokens), *reply), 0u);
  }
  // Unsealed and wrongly sealed requests never reach the handler; their
  // callers time out.
  for (UcxTransport* caller : {outsider.get(), plain.get()}) {
    for (uint32_t tokens : {1u, 64u}) {
      const absl::Status status = CallAndWait(*caller, server->address(),
                                              *TestDispatch(*caller, tokens, 5120, 2, 0),
                                              absl::Milliseconds(500))
                                      .status();
      EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    }
  }
  // A raw unsealed frame, and one that says sealed with a forged seal.
  const Message valid = *TestDispatch(*plain, 1, 64, 1, 0);
  const EncodedHeader header = EncodeHeader(valid.header);
  ASSERT_TRUE(plain->SendRawForTesting(server->address(), header, valid.payload.span()).ok());
  FrameHeader forged_header = valid.header;
  forged_header.flags = kFrameFlagSealed;
  const EncodedHeader forged = EncodeHeader(forged_header);
  std::vector<uint8_t> with_seal(forged.begin(), forged.end());
  with_seal.insert(with_seal.end(), kSealBytes, 0x42);
  ASSERT_TRUE(plain->SendRawForTesting(server->address(), with_seal, valid.payload.span()).ok());
  EXPECT_TRUE(testing::WaitUntil([&] { return server->counters().unauthenticated_dropped >= 6; }));
  EXPECT_EQ(server->counters().unauthenticated_dropped, 6u);
  // The server serves members on.
  EXPECT_TRUE(CallAndWait(*member, server->address(), *TestDispatch(*member, 1, 64, 1, 9),
                          absl::Seconds(20))
                  .ok());
}

TEST_P(UcxSealTest, KeyRotationKeepsServingAcrossEpochs) {
  ScopedUcxTls tls(GetParam() == UcxTransportOptions::Mode::kTcp ? "tcp" : "sm");
  auto server = MakeClient(GetParam(), 1);
  auto client = MakeClient(GetParam(), 2);
  server->SetRequestHandler([](IncomingRequest r) { testing::ServeToyExpert(std::move(r)); });
  server->SetFrameKeys({Key(1, 1)});
  client->SetFrameKeys({Key(1, 1)});
  auto call = [&](uint32_t seed, absl::Duration timeout) {
    return CallAndWait(*client, server->address(), *TestDispatch(*client, 1, 64, 1, seed), timeout)
        .status();
  };
  ASSERT_TRUE(call(0, absl::Seconds(20)).ok());
  // A new epoch reaches the server first: it opens both keys and answers
  // with the key the request came with, which the client (old key only)
  // opens.
  server->SetFrameKeys({Key(2, 2), Key(1, 1)});
  EXPECT_TRUE(call(1, absl::Seconds(20)).ok());
  // The client gets it, held: it still seals with the old key...
  client->SetFrameKeys({Key(2, 2), Key(1, 1)}, absl::Milliseconds(300));
  EXPECT_TRUE(call(2, absl::Seconds(20)).ok());
  // ...and after the hold with the new one, which a server that dropped the
  // old key opens.
  absl::SleepFor(absl::Milliseconds(400));  // The hold is real time by design.
  server->SetFrameKeys({Key(2, 2)});
  EXPECT_TRUE(call(3, absl::Seconds(20)).ok());
  // A client with only the old key is now an outsider.
  client->SetFrameKeys({Key(1, 1)});
  EXPECT_EQ(call(4, absl::Milliseconds(500)).code(), absl::StatusCode::kDeadlineExceeded);
}

INSTANTIATE_TEST_SUITE_P(BothModes, UcxSealTest,
                         ::testing::Values(UcxTransportOptions::Mode::kTcp,
                                           UcxTransportOptions::Mode::kLocal),
                         [](const auto& info) {
                           return info.param == UcxTransportOptions::Mode::kTcp ? "Tcp" : "Local";
                         });

TEST(UcxTransportTest, RepliesGoOnlyToTheAddressTheMapNames) {
  ScopedUcxTls tls("tcp");
  auto server = MakeClient(UcxTransportOptions::Mode::kTcp, 1);
  auto client = MakeClient(UcxTransportOptions::Mode::kTcp, 2);
  auto impostor = MakeClient(UcxTransportOptions::Mode::kTcp, 2);  // Claims id 2.
  server->SetRequestHandler([](IncomingRequest r) { testing::ServeToyExpert(std::move(r)); });
  server->SetAllowedPeers({{2, client->address()}});
  EXPECT_TRUE(
      CallAndWait(*client, server->address(), *TestDispatch(*client, 1, 64, 1, 0), absl::Seconds(20))
          .ok());
  // Same sender id, another reply address: refused, never answered.
  EXPECT_EQ(CallAndWait(*impostor, server->address(), *TestDispatch(*impostor, 1, 64, 1, 0),
                        absl::Milliseconds(500))
                .status()
                .code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(server->counters().disallowed_dropped, 1u);
}

}  // namespace
}  // namespace dsv2::transport
