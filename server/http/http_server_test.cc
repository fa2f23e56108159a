// HttpServer on loopback ports chosen by the OS, driven by cpp-httplib's
// client and by raw sockets that behave as hostile clients do: garbage,
// oversized heads and bodies, slowloris, more connections than threads,
// clients that leave, and TLS with client certificates.
#include "server/http/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_certs.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using namespace std::chrono_literals;

using testutil::WaitUntil;

// A socket connected to 127.0.0.1:port.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawClient() { Close(); }
  bool connected() const { return connected_; }

  bool Send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  // Everything until the server closes the connection, or `timeout`.
  std::string ReadToClose(std::chrono::milliseconds timeout = 10s) {
    std::string out;
    const auto end = std::chrono::steady_clock::now() + timeout;
    char buffer[4096];
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }
  bool closed() const { return closed_; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
};

// A server with GET /hello, authenticated POST /echo (principal:body) and
// authenticated POST /wait (waits for its client to leave).
class TestServer {
 public:
  explicit TestServer(HttpServerOptions options) : server_(Defaults(std::move(options))) {
    server_.SetAuthenticate([](const httplib::Request& head,
                               const ClientConnection& connection) -> absl::StatusOr<std::string> {
      if (connection.certificate()) return "cert:" + connection.certificate()->name;
      if (head.get_header_value("Authorization") == "Bearer good") return std::string("alice");
      return absl::UnauthenticatedError("send the good token");
    });
    server_.SetErrorBody([](int status, const std::string& message, httplib::Response& response) {
      response.set_content(absl::StrCat("{\"status\":", status, ",\"message\":\"", message, "\"}"),
                           "application/json");
    });
    server_.Route("GET", "/hello", false, [](HttpRequest&, httplib::Response& response) {
      response.set_content("hi", "text/plain");
    });
    server_.Route("POST", "/echo", true, [](HttpRequest& request, httplib::Response& response) {
      response.set_content(request.principal + ":" + request.body, "text/plain");
    });
    server_.Route("POST", "/wait", true, [this](HttpRequest& request, httplib::Response& response) {
      const int never = eventfd(0, EFD_CLOEXEC);
      ++waiting_;
      const ClientConnection::Wake wake =
          request.connection.WaitReadable(never, absl::Now() + absl::Seconds(20));
      close(never);
      if (wake == ClientConnection::Wake::kClientGone) ++saw_gone_;
      response.set_content("waited", "text/plain");
    });
    const absl::Status started = server_.Start();
    EXPECT_TRUE(started.ok()) << started;
  }
  HttpServer& server() { return server_; }
  int port() const { return server_.port(); }
  int waiting() const { return waiting_; }
  int saw_gone() const { return saw_gone_; }

  // GET /hello on a new connection.
  bool Hello() {
    httplib::Client client("127.0.0.1", port());
    client.set_connection_timeout(5);
    auto result = client.Get("/hello");
    return result && result->status == 200 && result->body == "hi";
  }

 private:
  static HttpServerOptions Defaults(HttpServerOptions options) {
    if (options.listen.empty()) options.listen = "127.0.0.1:0";
    return options;
  }
  HttpServer server_;
  std::atomic<int> waiting_{0};
  std::atomic<int> saw_gone_{0};
};

TEST(HttpServerTest, RoutesAuthenticationAndErrorsInTheirShape) {
  TestServer test({});
  ASSERT_GT(test.port(), 0);
  EXPECT_TRUE(test.Hello());
  httplib::Client client("127.0.0.1", test.port());
  client.set_keep_alive(true);
  auto refused = client.Post("/echo", "payload", "text/plain");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  EXPECT_EQ(refused->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(refused->body, "{\"status\":401,\"message\":\"send the good token\"}");
  auto echoed = client.Post("/echo", {{"Authorization", "Bearer good"}}, "payload", "text/plain");
  ASSERT_TRUE(echoed);
  EXPECT_EQ(echoed->status, 200);
  EXPECT_EQ(echoed->body, "alice:payload");
  auto missing = client.Get("/nothing-here");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_THAT(missing->body, HasSubstr("no such route: GET /nothing-here"));
  auto wrong_method = client.Get("/echo");
  ASSERT_TRUE(wrong_method);
  EXPECT_EQ(wrong_method->status, 405);
  EXPECT_EQ(wrong_method->get_header_value("Allow"), "POST");
  // Keep-alive: the client's connection served every request but the
  // refused one, whose unread body closed it.
  EXPECT_EQ(test.server().stats().connections, 3);  // Hello's and the client's two.
}

TEST(HttpServerTest, BodiesOverTheLimitAre413AndNeverRead) {
  TestServer test({.max_body_bytes = 1024});
  // Declared too large: answered at once, nothing of the body sent.
  RawClient declared(test.port());
  ASSERT_TRUE(declared.Send(
      "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: "
      "1000000000\r\n\r\n"));
  const std::string answer = declared.ReadToClose();
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 413"));
  EXPECT_THAT(answer, HasSubstr("the request body is 1000000000 bytes; at most 1024"));
  EXPECT_TRUE(declared.closed());
  // Chunked: cut off at the limit.
  RawClient chunked(test.port());
  std::string request =
      "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nTransfer-Encoding: "
      "chunked\r\n\r\n";
  for (int i = 0; i < 4; ++i) request += "200\r\n" + std::string(512, 'a') + "\r\n";
  request += "0\r\n\r\n";
  ASSERT_TRUE(chunked.Send(request));
  EXPECT_THAT(chunked.ReadToClose(), StartsWith("HTTP/1.1 413"));
  // At the limit it is served.
  httplib::Client client("127.0.0.1", test.port());
  auto full = client.Post("/echo", {{"Authorization", "Bearer good"}}, std::string(1024, 'b'),
                          "text/plain");
  ASSERT_TRUE(full);
  EXPECT_EQ(full->status, 200);
  EXPECT_EQ(full->body.size(), std::string("alice:").size() + 1024);
}

TEST(HttpServerTest, GarbageMalformedAndOversizedHeadsAreRefused) {
  // Garbage without a line end waits for more, until the read timeout.
  TestServer test({.read_timeout = absl::Seconds(1)});
  const std::string tls_hello("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  std::string random(4096, '\0');
  for (size_t i = 0; i < random.size(); ++i) random[i] = static_cast<char>((i * 7919 + 13) % 251);
  const std::vector<std::string> attacks = {
      std::string(16, '\0'),
      "\r\n\r\n\r\n",
      tls_hello,
      random,
      "GET /hello HTTP/1.1\r\n" + std::string(100 << 10, 'x') + "\r\n\r\n",
      "GET /hello HTTP/1.1\r\nHost: x\r\n" +
          [] {
            std::string many;
            for (int i = 0; i < 5000; ++i) many += "X-Header-" + std::to_string(i) + ": v\r\n";
            return many;
          }() + "\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: abc\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: 3\r\n"
      "Transfer-Encoding: chunked\r\n\r\n",
  };
  for (const std::string& attack : attacks) {
    RawClient client(test.port());
    ASSERT_TRUE(client.connected());
    client.Send(attack);
    const std::string answer = client.ReadToClose();
    EXPECT_TRUE(client.closed()) << attack.substr(0, 40);
    if (!answer.empty()) {
      EXPECT_THAT(answer, StartsWith("HTTP/1.1 4")) << attack.substr(0, 40);
    }
    EXPECT_TRUE(test.Hello()) << "after " << attack.substr(0, 40);
  }
}

// Slowloris: a head or body that trickles in is cut off at the read
// timeout, while other clients are served.
TEST(HttpServerTest, SlowClientsAreCutOffAndOthersServed) {
  TestServer test({.read_timeout = absl::Seconds(1)});
  RawClient slow_head(test.port());
  RawClient slow_body(test.port());
  ASSERT_TRUE(slow_head.Send("GET /hello HTTP/1.1\r\n"));
  ASSERT_TRUE(slow_body.Send(
      "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: 100\r\n\r\n"
      "0123456789"));
  const auto start = std::chrono::steady_clock::now();
  std::atomic<bool> done{false};
  std::thread trickle([&] {
    // One header byte every 100 ms: each read succeeds, the whole never does.
    while (!done && slow_head.Send("X")) std::this_thread::sleep_for(100ms);
  });
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(test.Hello());
  const std::string head_answer = slow_head.ReadToClose(5s);
  done = true;
  trickle.join();
  const std::string body_answer = slow_body.ReadToClose(5s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(slow_head.closed());
  EXPECT_TRUE(slow_body.closed());
  EXPECT_THAT(head_answer, StartsWith("HTTP/1.1 408"));
  EXPECT_THAT(body_answer, StartsWith("HTTP/1.1 408"));
  EXPECT_LT(seconds, 4.0);
  EXPECT_EQ(test.server().stats().read_timeouts, 2);
  EXPECT_TRUE(test.Hello());
}

TEST(HttpServerTest, ConnectionsBeyondTheLimitAreRefusedAtOnceWithBoundedThreads) {
  TestServer test({.max_connections = 2, .idle_timeout = absl::Seconds(30)});
  // Two clients that connect and say nothing hold both threads.
  RawClient idle1(test.port());
  RawClient idle2(test.port());
  ASSERT_TRUE(idle1.connected() && idle2.connected());
  ASSERT_TRUE(WaitUntil([&] { return test.server().stats().open == 2; }));
  for (int i = 0; i < 20; ++i) {
    RawClient extra(test.port());
    extra.Send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    const std::string answer = extra.ReadToClose(5s);
    EXPECT_THAT(answer, StartsWith("HTTP/1.1 503")) << i;
    EXPECT_THAT(answer, HasSubstr("2 connections open"));
  }
  EXPECT_EQ(test.server().stats().threads, 2);
  EXPECT_EQ(test.server().stats().refused_busy, 20);
  idle1.Close();
  idle2.Close();
  ASSERT_TRUE(WaitUntil([&] { return test.server().stats().open == 0; }));
  EXPECT_TRUE(test.Hello());
  EXPECT_EQ(test.server().stats().threads, 2);
}

TEST(HttpServerTest, HandlersLearnTheirClientLeftAndStopWakesThem) {
  auto test = std::make_unique<TestServer>(HttpServerOptions{});
  {
    RawClient client(test->port());
    client.Send("POST /wait HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\n"
                "Content-Length: 0\r\n\r\n");
    ASSERT_TRUE(WaitUntil([&] { return test->waiting() == 1; }));
  }  // Closed.
  ASSERT_TRUE(WaitUntil([&] { return test->saw_gone() == 1; }));
  // A handler still waiting and an idle connection end when the server stops.
  RawClient waiting(test->port());
  waiting.Send("POST /wait HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\n"
               "Content-Length: 0\r\n\r\n");
  RawClient idle(test->port());
  ASSERT_TRUE(WaitUntil([&] { return test->waiting() == 2; }));
  const auto start = std::chrono::steady_clock::now();
  test->server().Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  EXPECT_EQ(test->saw_gone(), 2);
  idle.ReadToClose(2s);
  EXPECT_TRUE(idle.closed());
}

TEST(HttpServerTest, TlsWithClientCertificatesFromFiles) {
  testutil::TestCerts certs(testutil::NewTestDir("http_tls"));
  ASSERT_TRUE(certs.Make("router", "server"));
  ASSERT_TRUE(certs.Make("expert", "expert-1"));
  TlsFiles files = certs.Files("server");  // With the CA: client certificates are asked for.
  TestServer test({.tls = files});
  ASSERT_GT(test.port(), 0);
  {
    httplib::SSLClient client("127.0.0.1", test.port(), certs.Cert("expert-1"),
                              certs.Key("expert-1"));
    client.set_ca_cert_path(certs.ca().c_str());
    client.enable_server_certificate_verification(true);
    auto result = client.Post("/echo", "x", "text/plain");
    ASSERT_TRUE(result) << httplib::to_string(result.error());
    EXPECT_EQ(result->body, "cert:spiffe://dsv2/expert/expert-1:x");
  }
  {
    httplib::SSLClient client("127.0.0.1", test.port());
    client.set_ca_cert_path(certs.ca().c_str());
    client.enable_server_certificate_verification(true);
    auto anonymous = client.Post("/echo", "x", "text/plain");
    ASSERT_TRUE(anonymous) << httplib::to_string(anonymous.error());
    EXPECT_EQ(anonymous->status, 401);
    auto with_token = client.Post("/echo", {{"Authorization", "Bearer good"}}, "y", "text/plain");
    ASSERT_TRUE(with_token);
    EXPECT_EQ(with_token->body, "alice:y");
  }
  // Plaintext on the TLS port: no handshake, closed, counted.
  RawClient plaintext(test.port());
  plaintext.Send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  plaintext.ReadToClose();
  EXPECT_TRUE(plaintext.closed());
  EXPECT_TRUE(WaitUntil([&] { return test.server().stats().tls_failures >= 1; }));
}

TEST(HttpServerTest, AnAddressInUseIsAnError) {
  TestServer first({});
  HttpServer second({.listen = "127.0.0.1:" + std::to_string(first.port())});
  const absl::Status status = second.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("cannot listen on 127.0.0.1:"));
  HttpServer bad({.listen = "no-port"});
  EXPECT_EQ(bad.Start().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dsv2
