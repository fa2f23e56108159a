// The behaviour every Transport promises (transport.h), checked against each
// implementation: in-process, UCX over TCP between worker addresses (UCX_TLS=tcp) and
// UCX between local workers over shared memory (UCX_TLS=sm).
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <deque>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "common/base/mutex.h"
#include "common/transport/inprocess_transport.h"
#include "common/transport/transport_test_util.h"
#include "common/transport/ucx_transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2::transport {
namespace {

using testing::CountMismatches;
using ::testing::HasSubstr;
using testing::ServeToyExpert;
using testing::TestDispatch;
using testing::WaitUntil;

enum class Kind { kInProcess, kUcxTcp, kUcxLocal };

std::string KindName(const ::testing::TestParamInfo<Kind>& info) {
  switch (info.param) {
    case Kind::kInProcess:
      return "InProcess";
    case Kind::kUcxTcp:
      return "UcxTcp";
    case Kind::kUcxLocal:
      return "UcxSharedMemory";
  }
  return "?";
}

struct ServerOptions {
  int handler_threads = 1;
  size_t max_queued_requests = 4096;
};

// Requests a handler keeps unanswered until the test releases them.
class HeldRequests {
 public:
  void Add(IncomingRequest request) ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    held_.push_back(std::move(request));
  }
  // Waits (bounded) for `n` held requests.
  bool WaitFor(size_t n) ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    const auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return held_.size() >= n;
    };
    return mutex_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }
  std::optional<IncomingRequest> Take() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    if (held_.empty()) return std::nullopt;
    IncomingRequest r = std::move(held_.front());
    held_.pop_front();
    return r;
  }

 private:
  Mutex mutex_;
  std::deque<IncomingRequest> held_ ABSL_GUARDED_BY(mutex_);
};

class TransportConformanceTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    const char* old = std::getenv("UCX_TLS");
    if (old != nullptr) saved_tls_ = old;
    if (GetParam() == Kind::kUcxTcp) setenv("UCX_TLS", "tcp", 1);
    if (GetParam() == Kind::kUcxLocal) setenv("UCX_TLS", "sm", 1);
    network_ = InProcessNetwork::Create();
  }
  void TearDown() override {
    if (saved_tls_.has_value()) {
      setenv("UCX_TLS", saved_tls_->c_str(), 1);
    } else {
      unsetenv("UCX_TLS");
    }
  }

  std::unique_ptr<Transport> Make(PeerId id, ServerOptions server = {}) {
    switch (GetParam()) {
      case Kind::kInProcess: {
        InProcessTransportOptions options;
        options.id = id;
        options.handler_threads = server.handler_threads;
        options.max_queued_requests = server.max_queued_requests;
        auto t = InProcessTransport::Create(network_, options);
        EXPECT_TRUE(t.ok()) << t.status();
        return t.ok() ? *std::move(t) : nullptr;
      }
      case Kind::kUcxTcp:
      case Kind::kUcxLocal: {
        UcxTransportOptions options;
        options.id = id;
        options.mode = GetParam() == Kind::kUcxTcp ? UcxTransportOptions::Mode::kTcp
                                                   : UcxTransportOptions::Mode::kLocal;
        options.handler_threads = server.handler_threads;
        options.max_queued_requests = server.max_queued_requests;
        options.pool_bytes = 16 << 20;
        auto t = UcxTransport::Create(options);
        EXPECT_TRUE(t.ok()) << t.status();
        return t.ok() ? *std::move(t) : nullptr;
      }
    }
    return nullptr;
  }

  // Delivers raw bytes to `server` from a sender outside any call.
  absl::Status InjectRaw(Transport& server, absl::Span<const uint8_t> header,
                         absl::Span<const uint8_t> payload) {
    if (GetParam() == Kind::kInProcess) {
      return network_->SendRaw(server.address(), header, MessageBuffer::Copy(payload));
    }
    if (raw_sender_ == nullptr) raw_sender_ = Make(99);
    return static_cast<UcxTransport*>(raw_sender_.get())
        ->SendRawForTesting(server.address(), header, payload);
  }

  // An address at which nothing answers.
  std::string DeadAddress(Transport& live) {
    switch (GetParam()) {
      case Kind::kInProcess:
        return "inproc://nobody";
      case Kind::kUcxTcp: {
        // The address of a transport that has shut down: nothing listens.
        std::unique_ptr<Transport> gone = Make(98);
        const std::string address = gone->address();
        gone->Shutdown();
        return address;
      }
      case Kind::kUcxLocal: {
        // A live transport's address with the pid of a process that exited.
        const pid_t child = fork();
        if (child == 0) _exit(0);
        waitpid(child, nullptr, 0);
        const std::string address = live.address();
        return absl::StrCat("ucx-local://", child, address.substr(address.find('@')));
      }
    }
    return "";
  }

  std::shared_ptr<InProcessNetwork> network_;
  std::unique_ptr<Transport> raw_sender_;
  std::optional<std::string> saved_tls_;
};

absl::Time In(absl::Duration d) { return absl::Now() + d; }

TEST_P(TransportConformanceTest, DispatchIsAnsweredWithTheCombine) {
  auto server = Make(1);
  auto client = Make(2);
  server->SetRequestHandler([](IncomingRequest r) { ServeToyExpert(std::move(r)); });
  for (DType combine : {DType::kBF16, DType::kF32}) {
    server->SetRequestHandler(
        [combine](IncomingRequest r) { ServeToyExpert(std::move(r), combine); });
    absl::StatusOr<Message> reply =
        CallAndWait(*client, server->address(), *TestDispatch(*client, 8, 64, 6, 3, /*layer=*/5),
                    absl::Seconds(10));
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->header.type, FrameType::kCombine);
    EXPECT_EQ(reply->header.dtype, combine);
    EXPECT_EQ(reply->header.layer, 5u);
    EXPECT_EQ(reply->header.step_id, 3u);
    EXPECT_EQ(reply->header.sender, 1u);
    EXPECT_EQ(CountMismatches(*TestDispatch(*client, 8, 64, 6, 3), *reply), 0u);
  }
  const TransportCounters c = client->counters();
  const TransportCounters s = server->counters();
  EXPECT_EQ(c.calls_started, 2u);
  EXPECT_EQ(c.calls_succeeded, 2u);
  EXPECT_EQ(c.messages_sent, 2u);
  EXPECT_EQ(c.messages_received, 2u);
  EXPECT_EQ(s.messages_received, 2u);
  EXPECT_EQ(c.bytes_sent, s.bytes_received);
  EXPECT_TRUE(WaitUntil([&] { return server->counters().bytes_sent == c.bytes_received; }));
}

TEST_P(TransportConformanceTest, ManyConcurrentCallsFromSeveralThreadsAndClients) {
  std::atomic<int> served{0};
  auto server = Make(100, {.handler_threads = 2});
  server->SetRequestHandler([&](IncomingRequest r) {
    ++served;
    ServeToyExpert(std::move(r));
  });
  constexpr int kClients = 3, kThreadsPerClient = 2, kBatches = 5, kInFlight = 8;
  std::vector<std::unique_ptr<Transport>> clients;
  for (int c = 0; c < kClients; ++c) clients.push_back(Make(c));
  std::atomic<int> ok{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    for (int t = 0; t < kThreadsPerClient; ++t) {
      threads.emplace_back([&, c, t] {
        Transport& client = *clients[c];
        for (int b = 0; b < kBatches; ++b) {
          std::vector<std::pair<uint32_t, std::future<absl::StatusOr<Message>>>> pending;
          for (int i = 0; i < kInFlight; ++i) {
            // Distinct contents per call, so a reply routed to the wrong call shows.
            const uint32_t seed = ((c * kThreadsPerClient + t) * kBatches + b) * kInFlight + i;
            const uint32_t tokens = 1 + seed % 9;
            pending.emplace_back(seed, CallFuture(client, server->address(),
                                                  *TestDispatch(client, tokens, 128, 4, seed),
                                                  In(absl::Seconds(30))));
          }
          for (auto& [seed, future] : pending) {
            absl::StatusOr<Message> reply = future.get();
            if (reply.ok() &&
                CountMismatches(*TestDispatch(client, 1 + seed % 9, 128, 4, seed), *reply) == 0) {
              ++ok;
            } else {
              ++wrong;
              ADD_FAILURE() << "call " << seed << ": " << reply.status();
            }
          }
        }
      });
    }
  }
  for (auto& thread : threads) thread.join();
  const int total = kClients * kThreadsPerClient * kBatches * kInFlight;
  EXPECT_EQ(ok.load(), total);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(served.load(), total);
  EXPECT_EQ(server->counters().messages_received, static_cast<uint64_t>(total));
  uint64_t succeeded = 0;
  for (auto& client : clients) succeeded += client->counters().calls_succeeded;
  EXPECT_EQ(succeeded, static_cast<uint64_t>(total));
}

TEST_P(TransportConformanceTest, LargeDispatchesAndCombines) {
  // DeepSeek-V2 decode: 64 tokens x 5120 hidden bf16 with top-6 routing is
  // a 640 KiB dispatch (UCX sends it by rendezvous); f32 combines are 1.25 MiB.
  auto server = Make(1);
  auto client = Make(2);
  for (DType combine : {DType::kBF16, DType::kF32}) {
    server->SetRequestHandler(
        [combine](IncomingRequest r) { ServeToyExpert(std::move(r), combine); });
    std::vector<std::future<absl::StatusOr<Message>>> pending;
    for (uint32_t seed = 0; seed < 4; ++seed) {
      pending.push_back(CallFuture(*client, server->address(),
                                   *TestDispatch(*client, 64, 5120, 6, seed),
                                   In(absl::Seconds(30))));
    }
    for (uint32_t seed = 0; seed < 4; ++seed) {
      absl::StatusOr<Message> reply = pending[seed].get();
      ASSERT_TRUE(reply.ok()) << reply.status();
      EXPECT_EQ(reply->payload.size(), 64u * 5120 * DTypeSize(combine));
      EXPECT_EQ(CountMismatches(*TestDispatch(*client, 64, 5120, 6, seed), *reply), 0u);
    }
  }
}

TEST_P(TransportConformanceTest, DeadlineExceededAndTheLateReplyIsDropped) {
  HeldRequests held;  // Declared first: outlives the transports whose handler fills it.
  auto server = Make(1);
  auto client = Make(2);
  server->SetRequestHandler([&](IncomingRequest r) { held.Add(std::move(r)); });
  const absl::Duration timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  std::future<absl::StatusOr<Message>> call =
      CallFuture(*client, server->address(), *TestDispatch(*client, 2, 32, 2, 1), start + timeout);
  ASSERT_TRUE(held.WaitFor(1));
  absl::StatusOr<Message> reply = call.get();
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kDeadlineExceeded) << reply.status();
  EXPECT_GE(took, timeout - absl::Milliseconds(1));
  EXPECT_LT(took, timeout + absl::Seconds(2));
  EXPECT_EQ(client->counters().timeouts, 1u);

  // The expert answers after all: the reply is dropped and counted.
  ServeToyExpert(*held.Take());
  EXPECT_TRUE(WaitUntil([&] { return client->counters().late_replies_dropped == 1; }))
      << client->counters().ToString();
  EXPECT_EQ(client->counters().calls_succeeded, 0u);
  // And the transports still serve.
  server->SetRequestHandler([](IncomingRequest r) { ServeToyExpert(std::move(r)); });
  EXPECT_TRUE(CallAndWait(*client, server->address(), *TestDispatch(*client, 2, 32, 2, 1),
                          absl::Seconds(10))
                  .ok());
}

TEST_P(TransportConformanceTest, PeersOutsideTheAllowedSetAreDroppedAndCounted) {
  std::atomic<int> served{0};
  auto server = Make(1);
  auto member = Make(7);
  auto stranger = Make(8);
  server->SetRequestHandler([&](IncomingRequest r) {
    ++served;
    ServeToyExpert(std::move(r));
  });
  server->SetAllowedPeers({{7, ""}});
  absl::StatusOr<Message> refused = CallAndWait(
      *stranger, server->address(), *TestDispatch(*stranger, 1, 16, 1, 0), absl::Milliseconds(300));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDeadlineExceeded) << refused.status();
  EXPECT_TRUE(WaitUntil([&] { return server->counters().disallowed_dropped == 1; }));
  EXPECT_EQ(served.load(), 0);
  EXPECT_TRUE(CallAndWait(*member, server->address(), *TestDispatch(*member, 1, 16, 1, 0),
                          absl::Seconds(10))
                  .ok());
  server->SetAllowedPeers({{7, ""}, {8, ""}});
  EXPECT_TRUE(CallAndWait(*stranger, server->address(), *TestDispatch(*stranger, 1, 16, 1, 0),
                          absl::Seconds(10))
                  .ok());
  server->SetAllowedPeers({});
  EXPECT_FALSE(CallAndWait(*member, server->address(), *TestDispatch(*member, 1, 16, 1, 0),
                           absl::Milliseconds(100))
                   .ok());
  server->AllowAllPeers();
  EXPECT_TRUE(CallAndWait(*member, server->address(), *TestDispatch(*member, 1, 16, 1, 0),
                          absl::Seconds(10))
                  .ok());
  EXPECT_EQ(served.load(), 3);
  EXPECT_EQ(server->counters().disallowed_dropped, 2u);
}

TEST_P(TransportConformanceTest, MalformedMessagesAreDroppedAndTheServerKeepsServing) {
  std::atomic<int> served{0};
  auto server = Make(1);
  auto client = Make(2);
  server->SetRequestHandler([&](IncomingRequest r) {
    ++served;
    ServeToyExpert(std::move(r));
  });
  Message good = *TestDispatch(*client, 2, 16, 2, 0);
  const EncodedHeader header = EncodeHeader(good.header);
  const absl::Span<const uint8_t> payload = good.payload.span();

  std::vector<uint8_t> garbage(10, 0xAB);
  EncodedHeader bad_magic = header;
  bad_magic[0] = 'X';
  EncodedHeader bad_crc = header;
  bad_crc[61] ^= 1;
  std::vector<uint8_t> too_long(header.begin(), header.end());
  too_long.push_back(0);
  ASSERT_TRUE(InjectRaw(*server, garbage, payload).ok());
  ASSERT_TRUE(InjectRaw(*server, bad_magic, payload).ok());
  ASSERT_TRUE(InjectRaw(*server, bad_crc, payload).ok());
  ASSERT_TRUE(InjectRaw(*server, too_long, payload).ok());
  ASSERT_TRUE(InjectRaw(*server, header, payload.subspan(0, payload.size() - 4)).ok());  // Short.
  ASSERT_TRUE(InjectRaw(*server, {}, {}).ok());                                          // Empty.
  // A well-formed reply nobody asked for.
  Message stray = *NewCombine(good.header, DType::kBF16, nullptr);
  stray.header.request_id = 12345;
  ASSERT_TRUE(InjectRaw(*server, EncodeHeader(stray.header), stray.payload.span()).ok());
  EXPECT_TRUE(WaitUntil([&] {
    const TransportCounters c = server->counters();
    return c.malformed_dropped == 6 && c.unexpected_dropped == 1;
  })) << server->counters().ToString();
  EXPECT_EQ(served.load(), 0);
  EXPECT_EQ(server->counters().messages_received, 0u);

  // A valid dispatch from the raw sender is served (its answer has no call to go to).
  ASSERT_TRUE(InjectRaw(*server, header, payload).ok());
  EXPECT_TRUE(WaitUntil([&] { return served.load() == 1; }));
  // The server still answers real calls.
  absl::StatusOr<Message> reply = CallAndWait(
      *client, server->address(), *TestDispatch(*client, 2, 16, 2, 0), absl::Seconds(10));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(CountMismatches(*TestDispatch(*client, 2, 16, 2, 0), *reply), 0u);
}

TEST_P(TransportConformanceTest, UnreachablePeerFailsUnavailableBeforeTheDeadline) {
  auto client = Make(2);
  const absl::Time start = absl::Now();
  absl::StatusOr<Message> reply = CallAndWait(
      *client, DeadAddress(*client), *TestDispatch(*client, 1, 16, 1, 0), absl::Seconds(20));
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kUnavailable) << reply.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(client->counters().peer_failures, 1u);

  reply = CallAndWait(*client, "carrier-pigeon://loft", *TestDispatch(*client, 1, 16, 1, 0),
                      absl::Seconds(5));
  EXPECT_TRUE(absl::IsUnavailable(reply.status()) || absl::IsInvalidArgument(reply.status()))
      << reply.status();
}

TEST_P(TransportConformanceTest, InvalidRequestsFailWithoutBeingSentAndNeverInline) {
  auto server = Make(1);
  auto client = Make(2);
  server->SetRequestHandler([](IncomingRequest r) { ServeToyExpert(std::move(r)); });
  Message combine = *NewCombine(TestDispatch(*client, 1, 16, 1, 0)->header, DType::kBF16, nullptr);
  const std::thread::id caller = std::this_thread::get_id();
  std::promise<std::pair<absl::Status, std::thread::id>> result;
  client->Call(server->address(), std::move(combine), In(absl::Seconds(5)),
               [&](absl::StatusOr<Message> r) {
                 result.set_value({r.status(), std::this_thread::get_id()});
               });
  auto [status, thread] = result.get_future().get();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(thread, caller);

  Message truncated = *TestDispatch(*client, 2, 16, 1, 0);
  truncated.payload = MessageBuffer::Heap(truncated.payload.size() - 1);
  EXPECT_EQ(CallAndWait(*client, server->address(), std::move(truncated), absl::Seconds(5))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->counters().messages_sent, 0u);
  EXPECT_EQ(server->counters().messages_received, 0u);
}

TEST_P(TransportConformanceTest, HandlerErrorsReachTheCaller) {
  auto server = Make(1);
  auto client = Make(2);
  server->SetRequestHandler([](IncomingRequest r) {
    switch (r.header().layer) {
      case 1:
        r.RespondError(absl::NotFoundError("layer 1 has no experts here"));
        break;
      case 2:
        break;   // Dropped unanswered.
      case 3: {  // A reply of the wrong shape.
        FrameHeader wrong = r.header();
        wrong.token_count += 1;
        EXPECT_FALSE(r.Respond(*NewCombine(wrong, DType::kBF16, nullptr)).ok());
        break;
      }
    }
  });
  auto call = [&](uint32_t layer) {
    return CallAndWait(*client, server->address(), *TestDispatch(*client, 1, 16, 1, 0, layer),
                       absl::Seconds(10))
        .status();
  };
  const absl::Status not_found = call(1);
  EXPECT_EQ(not_found.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(not_found.message(), HasSubstr("layer 1 has no experts here"));
  EXPECT_THAT(call(2).message(), HasSubstr("unanswered"));
  EXPECT_THAT(call(3).message(), HasSubstr("invalid reply"));
  EXPECT_TRUE(WaitUntil([&] { return server->counters().error_replies_sent == 3; }));
}

TEST_P(TransportConformanceTest, AFullHandlerQueueAnswersResourceExhausted) {
  Mutex mutex;
  bool release = false;
  int entered = 0;
  auto server = Make(1, {.handler_threads = 1, .max_queued_requests = 1});
  auto client = Make(2);
  server->SetRequestHandler([&](IncomingRequest r) {
    {
      MutexLock lock(&mutex);
      ++entered;
      mutex.AwaitWithTimeout(absl::Condition(&release), absl::Seconds(20));
    }
    ServeToyExpert(std::move(r));
  });
  // The first occupies the handler thread, the second waits in the queue...
  auto first = CallFuture(*client, server->address(), *TestDispatch(*client, 1, 16, 1, 0),
                          In(absl::Seconds(30)));
  {
    MutexLock lock(&mutex);
    const auto one_entered = [&] { return entered == 1; };
    ASSERT_TRUE(mutex.AwaitWithTimeout(absl::Condition(&one_entered), absl::Seconds(10)));
  }
  auto second = CallFuture(*client, server->address(), *TestDispatch(*client, 1, 16, 1, 1),
                           In(absl::Seconds(30)));
  ASSERT_TRUE(WaitUntil([&] { return server->counters().messages_received == 2; }));
  // ...and the third finds it full.
  absl::StatusOr<Message> third = CallAndWait(
      *client, server->address(), *TestDispatch(*client, 1, 16, 1, 2), absl::Seconds(10));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_EQ(server->counters().overload_dropped, 1u);
  {
    MutexLock lock(&mutex);
    release = true;
  }
  EXPECT_TRUE(first.get().ok());
  EXPECT_TRUE(second.get().ok());
}

TEST_P(TransportConformanceTest, ShutdownCancelsCallsInFlight) {
  HeldRequests held;
  auto server = Make(1);
  auto client = Make(2);
  server->SetRequestHandler([&](IncomingRequest r) { held.Add(std::move(r)); });
  auto call = CallFuture(*client, server->address(), *TestDispatch(*client, 1, 16, 1, 0),
                         In(absl::Seconds(30)));
  ASSERT_TRUE(held.WaitFor(1));
  client->Shutdown();
  ASSERT_EQ(call.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(call.get().status().code(), absl::StatusCode::kCancelled);
  // After shutdown, calls fail at once.
  EXPECT_EQ(
      CallAndWait(*client, server->address(), *TestDispatch(*client, 1, 16, 1, 0), absl::Seconds(5))
          .status()
          .code(),
      absl::StatusCode::kCancelled);
  held.Take();  // Answering to a shut-down caller is harmless.
}

INSTANTIATE_TEST_SUITE_P(AllTransports, TransportConformanceTest,
                         ::testing::Values(Kind::kInProcess, Kind::kUcxTcp, Kind::kUcxLocal),
                         KindName);

}  // namespace
}  // namespace dsv2::transport
