// Data-plane goodput and round-trip latency of UcxTransport::Call at the
// message sizes decode uses, next to ucx_perftest on the same UCX transport
// measured in the same run.
//
//   transport_bench [--transports tcp,shm,tcp+seal,shm+seal] [--hidden 2048,5120] [--tokens 1,8,32,64]
//                   [--top-k 6] [--reps 5] [--iters 200] [--window 8]
//                   [--busy-poll-us 0] [--no-perftest] [--json]
//
// For each transport and shape, a server process (this program with
// --serve) answers every dispatch of T tokens x H hidden bf16 (+ top-k ids
// and weights) with a bf16 combine of T x H, from its progress thread (no
// expert math: this measures the data plane). The client process measures
//   latency  median round trip of one Call at a time (--iters calls);
//   goodput  (dispatch + combine payload bytes) / time with --window calls
//            in flight (--iters calls);
// each repeated --reps times, medians reported. Right after each shape it
// runs ucx_perftest server and client on loopback with the same UCX_TLS:
//   ucp_am_lat at the dispatch frame size (one-way latency; the table shows
//              2x, a ping-pong round trip), and
//   ucp_am_bw  at the dispatch frame size (one direction streaming).
// tcp = UCX_TLS=tcp with the worker's tcp (ucx://) address; shm =
// UCX_TLS=sm with the local (ucx-local://) address; a "+seal" suffix
// (tcp+seal, shm+seal) seals every frame with AES-256-GCM as a keyed
// cluster does (docs/security.md) — list both to see what sealing costs.
// The ratio columns are ours / perftest's.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/stats.h"
#include "common/transport/ucx_transport.h"
#include "ucp/api/ucp.h"

namespace dsv2::bench {
namespace {

using transport::CallFuture;
using transport::DispatchLayout;
using transport::FrameType;
using transport::IncomingRequest;
using transport::Message;
using transport::UcxTransport;
using transport::UcxTransportOptions;

bool Sealed(const std::string& transport) { return absl::EndsWith(transport, "+seal"); }

UcxTransportOptions::Mode ModeFor(const std::string& transport) {
  return absl::StartsWith(transport, "shm") ? UcxTransportOptions::Mode::kLocal
                                            : UcxTransportOptions::Mode::kTcp;
}

const char* TlsFor(const std::string& transport) {
  return absl::StartsWith(transport, "shm") ? "sm" : "tcp";
}

// The key both processes seal with: a benchmark has no secret to keep.
void SetBenchKey(UcxTransport& transport) {
  transport::FrameKey key;
  key.id = 1;
  for (size_t i = 0; i < key.secret.size(); ++i) key.secret[i] = static_cast<uint8_t>(i * 37 + 11);
  transport.SetFrameKeys({key});
}

// --serve MODE: answer every dispatch with an (unfilled) combine of its shape.
int Serve(const std::string& transport, long busy_poll_us) {
  UcxTransportOptions options;
  options.id = 1;
  options.mode = ModeFor(transport);
  options.handler_threads = 0;  // Answer on the progress thread.
  options.busy_poll = absl::Microseconds(busy_poll_us);
  absl::StatusOr<std::unique_ptr<UcxTransport>> server = UcxTransport::Create(options);
  if (!server.ok()) {
    std::fprintf(stderr, "transport_bench --serve: %s\n", server.status().ToString().c_str());
    return 1;
  }
  if (Sealed(transport)) SetBenchKey(**server);
  (*server)->SetRequestHandler([](IncomingRequest request) {
    Message reply;
    reply.header = request.header();
    reply.header.type = FrameType::kCombine;
    reply.header.top_k = 0;
    reply.header.payload_length =
        uint64_t{request.header().token_count} * request.header().hidden_size * 2;
    reply.payload = request.AllocatePayload(reply.header.payload_length);
    request.TakePayload();
    (void)request.Respond(std::move(reply));
  });
  std::printf("%s\n", (*server)->address().c_str());
  std::fflush(stdout);
  char buffer[64];
  while (read(STDIN_FILENO, buffer, sizeof(buffer)) > 0) {
  }
  return 0;
}

// A child process running `argv` with UCX_TLS set, stdin/stdout piped.
class Child {
 public:
  Child(std::vector<std::string> argv, const char* tls) {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], STDIN_FILENO);
      dup2(out[1], STDOUT_FILENO);
      dup2(out[1], STDERR_FILENO);
      close(in[1]);
      close(out[0]);
      setenv("UCX_TLS", tls, 1);
      std::vector<char*> args;
      for (std::string& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    stdout_ = fdopen(out[0], "r");
  }
  ~Child() { Stop(); }

  std::optional<std::string> ReadLine() {
    char line[4096];
    if (stdout_ == nullptr || std::fgets(line, sizeof(line), stdout_) == nullptr)
      return std::nullopt;
    std::string s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
  }
  std::string ReadAll() {
    std::string all;
    while (std::optional<std::string> line = ReadLine()) all += *line + "\n";
    return all;
  }
  void Stop() {
    if (stdin_ >= 0) close(stdin_);
    stdin_ = -1;
    if (pid_ > 0) {
      int status;
      // Give it a moment to exit on its own, then insist.
      for (int i = 0; i < 200 && waitpid(pid_, &status, WNOHANG) == 0; ++i) usleep(10000);
      if (waitpid(pid_, &status, WNOHANG) == 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
      }
      pid_ = -1;
    }
    if (stdout_ != nullptr) std::fclose(stdout_);
    stdout_ = nullptr;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  FILE* stdout_ = nullptr;
};

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

struct PerftestResult {
  double latency_us = 0;      // 50th percentile, one way.
  double bandwidth_mb_s = 0;  // Overall, MB = 2^20 bytes.
  bool ok = false;
};

// Runs ucx_perftest server + client on loopback and parses the client's
// final line: iterations, p50, average, overall latency (us), bandwidth
// average, overall (MB/s), message rate average, overall.
PerftestResult RunPerftest(const char* test, uint64_t size, const char* tls, long iters) {
  PerftestResult result;
  const std::string port = absl::StrCat(FreePort());
  Child server({"ucx_perftest", "-p", port}, tls);
  std::string output;
  for (int attempt = 0; attempt < 50; ++attempt) {
    // The server needs a moment to listen; the client fails fast until then.
    Child client({"ucx_perftest", "127.0.0.1", "-p", port, "-t", test, "-s", absl::StrCat(size),
                  "-n", absl::StrCat(iters), "-w", absl::StrCat(std::max(10L, iters / 10)), "-f"},
                 tls);
    output = client.ReadAll();
    client.Stop();
    if (output.find("Final") != std::string::npos || output.find("iterations") != std::string::npos)
      break;
    usleep(100000);
  }
  server.Stop();
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    std::vector<double> numbers;
    for (absl::string_view field : absl::StrSplit(line, ' ', absl::SkipWhitespace())) {
      double v;
      if (absl::SimpleAtod(field, &v)) numbers.push_back(v);
    }
    if (numbers.size() >= 8) {
      result.latency_us = numbers[1];
      result.bandwidth_mb_s = numbers[5];
      result.ok = true;
    }
  }
  if (!result.ok)
    std::fprintf(stderr, "ucx_perftest %s %llu: no result:\n%s\n", test,
                 static_cast<unsigned long long>(size), output.c_str());
  return result;
}

struct Row {
  std::string transport;
  long hidden, tokens;
  uint64_t dispatch_bytes, combine_bytes;
  double rtt_us, goodput_gb_s;
  PerftestResult perftest;
};

absl::StatusOr<Message> Dispatch(UcxTransport& client, long tokens, long hidden, long top_k) {
  absl::StatusOr<DispatchLayout> layout =
      transport::ComputeDispatchLayout(tokens, hidden, top_k, DType::kBF16);
  if (!layout.ok()) return layout.status();
  Message m;
  m.header.type = FrameType::kDispatch;
  m.header.dtype = DType::kBF16;
  m.header.token_count = tokens;
  m.header.hidden_size = hidden;
  m.header.top_k = top_k;
  m.header.payload_length = layout->total_bytes;
  // Pool slots are reused and stay warm; their contents do not matter to
  // the transport, so they are not written (that would be the attention
  // worker's work, competing for the same cores).
  m.payload = client.AllocatePayload(layout->total_bytes);
  return m;
}

std::string LoadAverage() {
  FILE* f = std::fopen("/proc/loadavg", "r");
  if (f == nullptr) return "?";
  char text[128] = {};
  const bool ok = std::fgets(text, sizeof(text), f) != nullptr;
  std::fclose(f);
  std::string s = ok ? text : "?";
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

int Main(int argc, char** argv) {
  Flags flags(argc, argv);
  const long busy_poll_us = flags.GetInt("busy-poll-us", 0, 0, 1000000);
  if (flags.Has("serve") && flags.error().empty()) {
    return Serve(flags.Get("serve", "tcp"), busy_poll_us);
  }
  const std::vector<long> hiddens = flags.GetList("hidden", "2048,5120", 1, 1 << 16);
  const std::vector<long> token_counts = flags.GetList("tokens", "1,8,32,64", 1, 4096);
  const long top_k = flags.GetInt("top-k", 6, 1, 256);
  const int reps = static_cast<int>(flags.GetInt("reps", 5, 1, 1000));
  const long iters = flags.GetInt("iters", 200, 1, 1000000);
  const long window = flags.GetInt("window", 8, 1, 1024);
  if (const std::optional<int> stop = flags.StopForUsage(
          "transport_bench",
          {"transports", "hidden", "tokens", "top-k", "reps", "iters", "window", "busy-poll-us",
           "no-perftest", "json"},
          "usage: transport_bench [--transports tcp,shm] [--hidden 2048,5120] "
          "[--tokens 1,8,32,64] [--top-k 6] [--reps 5] [--iters 200] [--window 8] "
          "[--busy-poll-us 0] [--no-perftest] [--json]\n")) {
    return *stop;
  }
  const std::vector<std::string> transports =
      absl::StrSplit(flags.Get("transports", "tcp,shm"), ',', absl::SkipEmpty());
  for (const std::string& name : transports) {
    if (name != "tcp" && name != "shm" && name != "tcp+seal" && name != "shm+seal") {
      std::fprintf(stderr, "unknown transport %s (tcp, shm, tcp+seal, shm+seal)\n", name.c_str());
      return 2;
    }
  }
  const bool perftest = !flags.Has("no-perftest");
  const std::string self = "/proc/self/exe";

  const std::string load_before = LoadAverage();
  std::vector<Row> rows;
  for (const std::string& name : transports) {
    setenv("UCX_TLS", TlsFor(name), 1);
    Child server({self, "--serve", name, "--busy-poll-us", absl::StrCat(busy_poll_us)},
                 TlsFor(name));
    std::optional<std::string> address = server.ReadLine();
    if (!address || address->rfind("ucx", 0) != 0) {
      std::fprintf(stderr, "server for %s did not start: %s\n", name.c_str(),
                   address.value_or("(nothing)").c_str());
      return 1;
    }
    UcxTransportOptions options;
    options.id = 2;
    options.mode = ModeFor(name);
    options.busy_poll = absl::Microseconds(busy_poll_us);
    absl::StatusOr<std::unique_ptr<UcxTransport>> client = UcxTransport::Create(options);
    if (!client.ok()) {
      std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
      return 1;
    }
    UcxTransport& c = **client;
    if (Sealed(name)) SetBenchKey(c);
    for (long hidden : hiddens) {
      for (long tokens : token_counts) {
        Row row{name, hidden, tokens, 0, 0, 0, 0, {}};
        row.dispatch_bytes = Dispatch(c, tokens, hidden, top_k)->payload.size();
        row.combine_bytes = static_cast<uint64_t>(tokens) * hidden * 2;
        // Warm up: connection, pool slots, rendezvous registration.
        for (int i = 0; i < 20; ++i) {
          if (!transport::CallAndWait(c, *address, *Dispatch(c, tokens, hidden, top_k),
                                      absl::Seconds(10))
                   .ok()) {
            std::fprintf(stderr, "warm-up call failed\n");
            return 1;
          }
        }
        std::vector<double> rtts, goodputs;
        for (int rep = 0; rep < reps; ++rep) {
          std::vector<double> samples;
          for (long i = 0; i < iters; ++i) {
            Message m = *Dispatch(c, tokens, hidden, top_k);
            const double start = NowSeconds();
            absl::StatusOr<Message> reply =
                transport::CallAndWait(c, *address, std::move(m), absl::Seconds(10));
            samples.push_back((NowSeconds() - start) * 1e6);
            if (!reply.ok()) {
              std::fprintf(stderr, "call failed: %s\n", reply.status().ToString().c_str());
              return 1;
            }
          }
          rtts.push_back(Median(samples));
          const double start = NowSeconds();
          std::vector<std::future<absl::StatusOr<Message>>> in_flight;
          long issued = 0, done = 0;
          while (done < iters) {
            while (issued < iters && static_cast<long>(in_flight.size()) < window) {
              in_flight.push_back(CallFuture(c, *address, *Dispatch(c, tokens, hidden, top_k),
                                             absl::Now() + absl::Seconds(10)));
              ++issued;
            }
            if (!in_flight.front().get().ok()) {
              std::fprintf(stderr, "windowed call failed\n");
              return 1;
            }
            in_flight.erase(in_flight.begin());
            ++done;
          }
          const double seconds = NowSeconds() - start;
          goodputs.push_back(static_cast<double>(iters) * (row.dispatch_bytes + row.combine_bytes) /
                             seconds / 1e9);
        }
        row.rtt_us = Median(rtts);
        row.goodput_gb_s = Median(goodputs);
        if (perftest) {
          // Right after ours, so both see the same machine (our server
          // idles in epoll meanwhile).
          const uint64_t frame = row.dispatch_bytes + transport::kFrameHeaderSize;
          const PerftestResult lat =
              RunPerftest("ucp_am_lat", frame, TlsFor(name), std::max(1000L, iters * 5));
          const PerftestResult bw =
              RunPerftest("ucp_am_bw", frame, TlsFor(name), std::max(2000L, iters * 10));
          row.perftest.latency_us = lat.latency_us;
          row.perftest.bandwidth_mb_s = bw.bandwidth_mb_s;
          row.perftest.ok = lat.ok && bw.ok;
        }
        rows.push_back(row);
      }
    }
    c.Shutdown();
    server.Stop();
  }
  if (flags.Has("json")) {
    std::printf(
        "{\"top_k\": %ld, \"reps\": %d, \"iters\": %ld, \"window\": %ld, \"busy_poll_us\": %ld, "
        "\"loadavg_before\": \"%s\", \"loadavg_after\": \"%s\", \"rows\": [",
        top_k, reps, iters, window, busy_poll_us, load_before.c_str(), LoadAverage().c_str());
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf(
          "%s{\"transport\": \"%s\", \"hidden\": %ld, \"tokens\": %ld, \"dispatch_bytes\": %llu, "
          "\"combine_bytes\": %llu, \"rtt_us\": %.2f, \"goodput_gb_s\": %.3f, "
          "\"perftest_rtt_us\": %.2f, \"perftest_bw_gb_s\": %.3f}",
          i ? ", " : "", r.transport.c_str(), r.hidden, r.tokens,
          static_cast<unsigned long long>(r.dispatch_bytes),
          static_cast<unsigned long long>(r.combine_bytes), r.rtt_us, r.goodput_gb_s,
          2 * r.perftest.latency_us, r.perftest.bandwidth_mb_s * 1048576.0 / 1e9);
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf(
      "UcxTransport::Call vs ucx_perftest (UCX %s), top-%ld, bf16 dispatch and combine, "
      "medians of %d reps x %ld calls, window %ld, busy-poll %ld us\n",
      ucp_get_version_string(), top_k, reps, iters, window, busy_poll_us);
  std::printf("%-8s %6s %6s %10s %10s | %9s %9s %6s | %9s %9s %6s\n", "tl", "hidden", "tokens",
              "dispatch B", "combine B", "RTT us", "perftest", "ratio", "GB/s", "perftest",
              "ratio");
  for (const Row& r : rows) {
    const double p_rtt = 2 * r.perftest.latency_us;
    const double p_bw = r.perftest.bandwidth_mb_s * 1048576.0 / 1e9;
    std::printf("%-8s %6ld %6ld %10llu %10llu | %9.1f %9.1f %6.2f | %9.3f %9.3f %6.2f\n",
                r.transport.c_str(), r.hidden, r.tokens,
                static_cast<unsigned long long>(r.dispatch_bytes),
                static_cast<unsigned long long>(r.combine_bytes), r.rtt_us, p_rtt,
                p_rtt > 0 ? r.rtt_us / p_rtt : 0.0, r.goodput_gb_s, p_bw,
                p_bw > 0 ? r.goodput_gb_s / p_bw : 0.0);
  }
  std::printf(
      "RTT: one Call at a time (perftest: 2 x ucp_am_lat p50 at the dispatch frame size).\n"
      "GB/s: (dispatch + combine payload) per second with the window in flight "
      "(perftest: ucp_am_bw overall, one direction, dispatch frame size).\n"
      "load average before: %s, after: %s\n",
      load_before.c_str(), LoadAverage().c_str());
  return 0;
}

}  // namespace
}  // namespace dsv2::bench

int main(int argc, char** argv) { return dsv2::bench::Main(argc, argv); }
