// The /metrics server: its port, 404s and bind errors, hostile clients
// (garbage, a TLS hello, a 1 MiB request line, a slow sender, a crowd of
// idle connections) bounded and cut off, and TLS with client certificates.
#include "server/metrics/metrics_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/base/test_util.h"
#include "common/metrics/metrics_registry.h"
#include "common/metrics/metrics_test_util.h"
#include "common/metrics/process_metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_certs.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;
using testutil::Sample;

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads until the peer closes or `timeout` passes; *closed says which.
std::string ReadUntilClosed(int fd, std::chrono::milliseconds timeout, bool* closed) {
  std::string data;
  const auto end = std::chrono::steady_clock::now() + timeout;
  *closed = false;
  char buf[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return data;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) {
      *closed = true;
      return data;
    }
    data.append(buf, static_cast<size_t>(n));
  }
}

// One HTTP/1.0 request; the whole response ("" when the connection fails).
std::string Http(int port, const std::string& request) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  (void)!write(fd, request.data(), request.size());
  bool closed = false;
  std::string response = ReadUntilClosed(fd, 10s, &closed);
  close(fd);
  return response;
}

std::string Scrape(int port) { return Http(port, "GET /metrics HTTP/1.0\r\n\r\n"); }

TEST(MetricsServerTest, ServesMetricsOnItsPortAndNothingElse) {
  auto registry = std::make_shared<MetricsRegistry>();
  auto server = MetricsServer::Start({.listen = "127.0.0.1:0"}, registry);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->address(), "127.0.0.1:" + std::to_string((*server)->port()));
  const std::string response = Scrape((*server)->port());
  EXPECT_THAT(response, HasSubstr("200 OK"));
  EXPECT_THAT(response, HasSubstr("# TYPE process_cpu_seconds_total counter"));
  EXPECT_THAT(Http((*server)->port(), "GET /other HTTP/1.0\r\n\r\n"), HasSubstr("404"));
  // The port is taken: a second server cannot have it.
  auto clash =
      MetricsServer::Start({.listen = "127.0.0.1:" + std::to_string((*server)->port())}, registry);
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(MetricsServer::Start({.listen = "no-port"}, registry).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsServer::Start({.listen = "127.0.0.1:99999"}, registry).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Whoever reaches the port: garbage, an endless request line, a slow
// sender and a crowd of idle connections neither crash the process nor
// grow its threads beyond the server's fixed pool, and a scrape still
// succeeds once they are cut off.
TEST(MetricsServerTest, HostileClientsAreBoundedAndCutOff) {
  auto registry = std::make_shared<MetricsRegistry>();
  auto server = MetricsServer::Start({.listen = "127.0.0.1:0"}, registry);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  const double threads_before = Sample(Scrape(port), "process_threads");
  ASSERT_GT(threads_before, 0);

  // Garbage bytes, including NULs and a non-HTTP first line.
  std::string garbage;
  for (int i = 0; i < 4096; ++i) garbage.push_back(static_cast<char>((i * 131 + 7) & 0xff));
  Http(port, garbage);
  Http(port, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");  // A TLS ClientHello start.
  // A request line far beyond the bound: refused, the connection closed.
  const std::string huge = "GET /" + std::string(1 << 20, 'a') + " HTTP/1.0\r\n\r\n";
  EXPECT_THAT(Http(port, huge), Not(HasSubstr("200 OK")));

  // Slowloris: one header byte a second never completes a request; the
  // server cuts it off within its request timeout (plus slack).
  const int slow = Connect(port);
  ASSERT_GE(slow, 0);
  const auto start = std::chrono::steady_clock::now();
  bool slow_closed = false;
  const std::string head = "GET /metrics HTTP/1.0\r\nX-A: ";
  for (size_t i = 0; i < head.size() && !slow_closed; ++i) {
    if (write(slow, &head[i], 1) != 1) break;
    ReadUntilClosed(slow, 1000ms, &slow_closed);
    if (std::chrono::steady_clock::now() - start >
        absl::ToChronoMilliseconds(MetricsServer::kRequestTimeout + absl::Seconds(5)))
      break;
  }
  if (!slow_closed) {
    const std::string x(1, 'x');
    while (!slow_closed &&
           std::chrono::steady_clock::now() - start <
               absl::ToChronoMilliseconds(MetricsServer::kRequestTimeout + absl::Seconds(5))) {
      if (write(slow, x.data(), 1) != 1) {
        slow_closed = true;
        break;
      }
      ReadUntilClosed(slow, 1000ms, &slow_closed);
    }
  }
  EXPECT_TRUE(slow_closed) << "a slow sender held its connection";
  close(slow);

  // Many idle connections at once: the server holds kMaxConnections of
  // them (a thread each), answers the rest 503 at once, and serves again
  // once the held ones time out.
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) {
    const int fd = Connect(port);
    if (fd >= 0) idle.push_back(fd);
  }
  EXPECT_GE(idle.size(), 16u);
  std::vector<prometheus::MetricFamily> families;
  CollectProcessMetrics(&families);
  for (const auto& f : families) {
    if (f.name == "process_threads") {
      EXPECT_LE(f.metric[0].gauge.value, threads_before + MetricsServer::kMaxConnections);
    }
  }
  std::string after;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (after.find("200 OK") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    after = Scrape(port);
  }
  EXPECT_THAT(after, HasSubstr("200 OK"));
  EXPECT_LE(Sample(after, "process_threads"), threads_before + MetricsServer::kMaxConnections);
  for (int fd : idle) close(fd);
}

// With TLS and the cluster CA: HTTPS only, and only for a scraper with a
// certificate of that CA; a stranger's certificate fails the handshake.
TEST(MetricsServerTest, TlsAsksScrapersForACertificateOfTheClusterCa) {
  testutil::TestCerts certs(testutil::NewTestDir("metrics_tls"));
  ASSERT_TRUE(certs.Make("expert", "expert-1"));
  ASSERT_TRUE(certs.Make("operator", "prometheus"));
  testutil::TestCerts strangers(testutil::NewTestDir("metrics_tls_other"));
  ASSERT_TRUE(strangers.Make("operator", "prometheus"));
  auto registry = std::make_shared<MetricsRegistry>();
  auto server =
      MetricsServer::Start({.listen = "127.0.0.1:0", .tls = certs.Files("expert-1")}, registry);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  EXPECT_EQ((*server)->url(), "https://127.0.0.1:" + std::to_string(port) + "/metrics");

  auto get = [&](const testutil::TestCerts* client) {
    std::unique_ptr<httplib::SSLClient> c =
        client ? std::make_unique<httplib::SSLClient>("127.0.0.1", port, client->Cert("prometheus"),
                                                      client->Key("prometheus"))
               : std::make_unique<httplib::SSLClient>("127.0.0.1", port);
    c->set_ca_cert_path(certs.ca().c_str());
    c->enable_server_certificate_verification(true);
    return c->Get("/metrics");
  };
  auto scraped = get(&certs);
  ASSERT_TRUE(scraped) << httplib::to_string(scraped.error());
  EXPECT_EQ(scraped->status, 200);
  EXPECT_THAT(scraped->body, HasSubstr("# TYPE process_cpu_seconds_total counter"));
  auto anonymous = get(nullptr);
  ASSERT_TRUE(anonymous) << httplib::to_string(anonymous.error());
  EXPECT_EQ(anonymous->status, 401);
  EXPECT_THAT(anonymous->body, HasSubstr("client certificate of the cluster CA is required"));
  EXPECT_FALSE(get(&strangers));  // Not of the CA: no handshake.
  // Plaintext on the TLS port: closed without an answer.
  EXPECT_THAT(Scrape(port), Not(HasSubstr("200")));
  // The server still serves.
  EXPECT_TRUE(get(&certs));

  // A TLS file that does not exist is an error that names it.
  TlsFiles missing = certs.Files("expert-1");
  missing.key = certs.dir() + "/nope.key";
  auto bad = MetricsServer::Start({.listen = "127.0.0.1:0", .tls = missing}, registry);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("nope.key"));
}
}  // namespace
}  // namespace dsv2
