// Decode throughput of the disaggregated loopback cluster against
// dsv2-standalone, the data-plane bytes per token per MoE layer against the
// theoretical 2 x hidden x E bytes x workers reached (E: 4 for f32, 2 for
// bf16), and UcxTransport goodput
// at the message sizes the cluster used against ucx_perftest — all measured
// in one run.
//
//   cluster_bench [--model DIR] [--batches 32,64] [--micro-batches 1,2] [--tokens 32]
//                 [--prompt 8] [--warmup-tokens 4] [--attention 1] [--experts 2]
//                 [--kv-cache-mib 256] [--dtype f32|bf16] [--build DIR] [--state DIR] [--reps 1]
//                 [--transport-reps 3] [--transport-iters 100]
//                 [--no-standalone] [--no-cluster] [--no-transport] [--json]
//
// Run from the repository root (it runs deploy/local/cluster.sh). For each
// m in --micro-batches it starts dsv2-standalone (--micro_batches=m), warms
// it up, measures every batch B of --batches, stops it; then starts the
// cluster (controller, --experts expert workers, --attention attention
// workers with --micro_batches=m, router) with deploy/local/cluster.sh and
// measures the same through the router. Both get the same --kv_cache_mib
// and --max_num_seqs, and --data_plane_dtype --dtype (default f32, the
// servers' default). A measurement sends B concurrent greedy streams
// (distinct random token-id prompts of --prompt tokens, ignore_eos,
// max_tokens --tokens) and timestamps every streamed chunk (--reps times
// per configuration on the same servers; the median by throughput counts):
//
//   decode tokens/s  B / (mean time between a stream's consecutive tokens),
//                    over the window in which every stream has its first
//                    token (prefill over) and none has its last: every step
//                    in it decodes exactly B tokens, so prefill and the tails
//                    are excluded.
//   data plane       the attention workers' GetLoad (Load.data_plane) at the
//                    start and end of that window (standalone: its
//                    in-process data plane, same counters); per token per
//                    MoE layer = Δ(bytes_sent + bytes_received) / Δtokens
//                    (tokens count once per MoE layer and micro-batch), the
//                    theory 2 x hidden x E x Δtoken_workers / Δtokens.
//                    Dispatched rows are derived from the combine bytes:
//                    rows = (Δbytes_received - 64 x Δmessages) / (E x hidden).
//   same tokens      streams whose cluster output equals standalone's.
//
// Then it runs bench/transport_bench (UCX_TLS=tcp, the listener transport
// the workers use) at the mean rows per dispatch the cluster sent, with
// ucx_perftest beside it, and prints the cluster's own data-plane rate
// during decode next to them.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/stats.h"
#include "common/base/mutex.h"
#include "common/base/process.h"
#include "common/model/config.h"
#include "dsv2/internal/attention.grpc.pb.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"

namespace dsv2::bench {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kHeaderBytes = 64;  // transport::kFrameHeaderSize.

void Log(const std::string& line) {
  std::fprintf(stderr, "[cluster_bench %.0f s] %s\n", NowSeconds(), line.c_str());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

std::string LoadAverage() { return Trim(ReadFile("/proc/loadavg")); }

// fork + exec with stdout and stderr to `log` (appended), signals unblocked
// and `env` added; with `own_group`, in a new process group (whose id is its
// pid). Returns the pid (or -1).
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log,
            const std::vector<std::pair<std::string, std::string>>& env = {},
            const std::string& stdout_path = "", bool own_group = false) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (own_group) setpgid(0, 0);
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_UNBLOCK, &all, nullptr);
    const int err = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    const int out =
        stdout_path.empty() ? err : open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int null = open("/dev/null", O_RDONLY);
    dup2(null, STDIN_FILENO);
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// The child Run is waiting for, so that an interrupt can stop it first
// (negative: its process group).
std::atomic<pid_t> foreground{0};
// Set on SIGINT/SIGTERM; the signal thread then stops the servers and exits.
std::atomic<bool> interrupted{false};

// A measurement failed: exit 1, unless it failed because of an interrupt,
// in which case the signal thread is stopping the servers and will exit.
int Failed() {
  while (interrupted) pause();
  return 1;
}

// Runs to completion; the exit status (-1 if it did not exit normally). A
// child in its own group is stopped with its children on an interrupt.
int Run(const std::vector<std::string>& argv, const std::string& log,
        const std::vector<std::pair<std::string, std::string>>& env = {},
        const std::string& stdout_path = "", bool own_group = false) {
  const pid_t pid = Spawn(argv, log, env, stdout_path, own_group);
  if (pid < 0) return -1;
  foreground = own_group ? -pid : pid;
  int status = 0;
  waitpid(pid, &status, 0);
  foreground = 0;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// SIGTERM, then SIGKILL after `grace_s`.
void Stop(pid_t pid, double grace_s = 30) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  int status;
  for (int i = 0; i < grace_s * 100; ++i) {
    // Reaped now, or already (by the other thread that stops servers).
    const pid_t reaped = waitpid(pid, &status, WNOHANG);
    if (reaped == pid || reaped < 0) return;
    usleep(10000);
  }
  Log(absl::StrCat("pid ", pid, " did not stop; killing it"));
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
}

bool WaitHealthy(const std::string& address, double timeout_s) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  const double until = NowSeconds() + timeout_s;
  while (NowSeconds() < until) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    if (stub->Check(&context, request, &response).ok() &&
        response.status() == grpc::health::v1::HealthCheckResponse::SERVING)
      return true;
    usleep(200000);
  }
  return false;
}

// ---------------------------------------------------------------------------
// The systems under test.

struct Options {
  std::string model, build, state, cluster_script;
  int attention = 1, experts = 2;
  long kv_cache_mib = 256, max_num_seqs = 64;
  std::string dtype = "f32";  // --data_plane_dtype.
  int ElementBytes() const { return dtype == "bf16" ? 2 : 4; }
};

class System {
 public:
  virtual ~System() = default;
  virtual std::string name() const = 0;
  // Starts it with `micro_batches`; false on failure (logged).
  virtual bool Up(int micro_batches) = 0;
  virtual void Down() = 0;
  virtual std::string generation_address() const = 0;
  // The processes whose Load.data_plane counts the MoE traffic.
  virtual std::vector<std::string> load_addresses() const = 0;
  // Its processes by role ("attention", "expert", ...), for CPU accounting.
  virtual std::vector<std::pair<std::string, pid_t>> processes() const = 0;
};

std::vector<std::string> EngineFlags(const Options& o, int micro_batches) {
  return {absl::StrCat("--micro_batches=", micro_batches),
          absl::StrCat("--kv_cache_mib=", o.kv_cache_mib),
          absl::StrCat("--max_num_seqs=", o.max_num_seqs),
          absl::StrCat("--data_plane_dtype=", o.dtype)};
}

class Standalone final : public System {
 public:
  explicit Standalone(const Options& o) : o_(o) {}
  ~Standalone() override { Down(); }
  std::string name() const override { return "standalone"; }
  bool Up(int micro_batches) override {
    const std::string port_file = o_.state + "/standalone.port";
    fs::remove(port_file);
    std::vector<std::string> argv = {o_.build + "/services/standalone/dsv2-standalone",
                                     "--model",
                                     o_.model,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--port_file",
                                     port_file,
                                     "--http_listen="};
    for (const std::string& f : EngineFlags(o_, micro_batches)) argv.push_back(f);
    const pid_t pid = Spawn(argv, o_.state + "/standalone.log");
    pid_ = pid;
    for (int i = 0; i < 3000 && Trim(ReadFile(port_file)).empty(); ++i) {
      int status;
      if (waitpid(pid, &status, WNOHANG) != 0) {  // Exited (or reaped by Down).
        pid_ = -1;
        Log("dsv2-standalone exited; see " + o_.state + "/standalone.log");
        return false;
      }
      usleep(100000);
    }
    address_ = "127.0.0.1:" + Trim(ReadFile(port_file));
    if (!WaitHealthy(address_, 300)) {
      Log("dsv2-standalone did not turn healthy; see " + o_.state + "/standalone.log");
      return false;
    }
    return true;
  }
  void Down() override {
    Stop(pid_.exchange(-1));  // Once, whichever thread comes first.
  }
  std::string generation_address() const override { return address_; }
  std::vector<std::string> load_addresses() const override { return {address_}; }
  std::vector<std::pair<std::string, pid_t>> processes() const override {
    return {{"standalone", pid_}};
  }

 private:
  const Options& o_;
  std::atomic<pid_t> pid_{-1};
  std::string address_;
};

class Cluster final : public System {
 public:
  explicit Cluster(const Options& o) : o_(o) {}
  ~Cluster() override { Down(); }
  std::string name() const override { return "cluster"; }
  bool Up(int micro_batches) override {
    const std::string state = o_.state + "/cluster";
    fs::create_directories(state);
    const std::string out = o_.state + "/cluster-up.out";
    up_ = true;  // From here on, Down stops whatever `up` started.
    const int code = Run(
        {o_.cluster_script, "up", "--model", o_.model, "--attention", absl::StrCat(o_.attention),
         "--experts", absl::StrCat(o_.experts), "--state", state, "--timeout", "300",
         "--attention-flags", absl::StrJoin(EngineFlags(o_, micro_batches), " ")},
        o_.state + "/cluster-up.log", {{"BUILD_DIR", o_.build}}, out);
    if (code != 0) {
      Log(absl::StrCat("cluster.sh up failed (", code, "); see ", o_.state, "/cluster-up.log and ",
                       state, "/*.log"));
      return false;
    }
    std::vector<std::string> lines = absl::StrSplit(Trim(ReadFile(out)), '\n');
    router_ = lines.empty() ? "" : Trim(lines.back());
    attention_.clear();
    processes_.clear();
    for (const char* role : {"controller", "router"}) {
      processes_.push_back({role, std::atoi(ReadFile(state + "/" + role + ".pid").c_str())});
    }
    for (int i = 1; i <= o_.experts; ++i) {
      processes_.push_back(
          {"expert", std::atoi(ReadFile(absl::StrCat(state, "/expert-", i, ".pid")).c_str())});
    }
    for (int i = 1; i <= o_.attention; ++i) {
      processes_.push_back(
          {"attention",
           std::atoi(ReadFile(absl::StrCat(state, "/attention-", i, ".pid")).c_str())});
      attention_.push_back("127.0.0.1:" +
                           Trim(ReadFile(absl::StrCat(state, "/attention-", i, ".port"))));
    }
    return !router_.empty();
  }
  void Down() override {
    if (!up_.exchange(false)) return;  // Once, whichever thread comes first.
    Run({o_.cluster_script, "down", "--state", o_.state + "/cluster"}, o_.state + "/cluster-up.log",
        {{"BUILD_DIR", o_.build}});
  }
  std::string generation_address() const override { return router_; }
  std::vector<std::string> load_addresses() const override { return attention_; }
  std::vector<std::pair<std::string, pid_t>> processes() const override { return processes_; }

 private:
  const Options& o_;
  std::atomic<bool> up_{false};
  std::string router_;
  std::vector<std::string> attention_;
  std::vector<std::pair<std::string, pid_t>> processes_;
};

// ---------------------------------------------------------------------------
// One measurement: B concurrent streams.

// CPU seconds (user + system, all threads) a process has used.
double CpuSeconds(pid_t pid) {
  const std::string stat =
      ReadFile(pid == 0 ? "/proc/self/stat" : absl::StrCat("/proc/", pid, "/stat"));
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  // Fields after the command: state (3rd field) ... utime (14th), stime (15th).
  std::vector<std::string> fields = absl::StrSplit(stat.substr(paren + 2), ' ');
  if (fields.size() < 13) return 0;
  return (std::atof(fields[11].c_str()) + std::atof(fields[12].c_str())) / sysconf(_SC_CLK_TCK);
}

// CPU seconds the whole machine spent busy (user, nice, system, irq,
// softirq: every process, ours and other tenants') and stolen by the host.
std::pair<double, double> MachineCpuSeconds() {
  std::istringstream line(ReadFile("/proc/stat"));
  std::string cpu;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  line >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  const double tick = sysconf(_SC_CLK_TCK);
  return {(user + nice + system + irq + softirq) / tick, steal / tick};
}

struct DataPlane {
  int64_t calls = 0, tokens = 0, token_workers = 0, max_workers = 0, messages = 0;
  int64_t bytes_sent = 0, bytes_received = 0, generated = 0;
  double time = 0;
  std::map<std::string, double> cpu;           // CPU seconds by role; "client" is this process.
  double machine_busy = 0, machine_steal = 0;  // CPU seconds of the whole machine.
};

DataPlane operator-(const DataPlane& a, const DataPlane& b) {
  return {a.calls - b.calls,
          a.tokens - b.tokens,
          a.token_workers - b.token_workers,
          std::max(a.max_workers, b.max_workers),
          a.messages - b.messages,
          a.bytes_sent - b.bytes_sent,
          a.bytes_received - b.bytes_received,
          a.generated - b.generated,
          a.time - b.time,
          [&] {
            std::map<std::string, double> cpu = a.cpu;
            for (const auto& [role, seconds] : b.cpu) cpu[role] -= seconds;
            return cpu;
          }(),
          a.machine_busy - b.machine_busy,
          a.machine_steal - b.machine_steal};
}

std::optional<DataPlane> Snapshot(const System& system) {
  DataPlane sum;
  const double start = NowSeconds();
  for (const auto& [role, pid] : system.processes()) sum.cpu[role] += CpuSeconds(pid);
  sum.cpu["client"] = CpuSeconds(0);
  std::tie(sum.machine_busy, sum.machine_steal) = MachineCpuSeconds();
  const std::vector<std::string> addresses = system.load_addresses();
  for (const std::string& address : addresses) {
    auto stub = internal::AttentionWorker::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    internal::Load load;
    const grpc::Status status = stub->GetLoad(&context, internal::GetLoadRequest(), &load);
    if (!status.ok()) {
      Log("GetLoad " + address + ": " + status.error_message());
      return std::nullopt;
    }
    const internal::DataPlaneStats& d = load.data_plane();
    sum.calls += d.moe_calls();
    sum.tokens += d.tokens();
    sum.token_workers += d.token_workers();
    sum.max_workers = std::max<int64_t>(sum.max_workers, d.max_workers_per_token());
    sum.messages += static_cast<int64_t>(d.messages_sent());
    sum.bytes_sent += static_cast<int64_t>(d.bytes_sent());
    sum.bytes_received += static_cast<int64_t>(d.bytes_received());
    sum.generated += load.generation_tokens();
  }
  sum.time = 0.5 * (start + NowSeconds());
  return sum;
}

struct Measurement {
  bool ok = false;
  double tokens_per_s = 0, step_ms = 0;
  double e2e_tokens_per_s = 0;  // All generated tokens over the whole run, prefill included.
  double window_s = 0;
  int64_t window_steps = 0;  // Mean tokens per stream inside the window.
  DataPlane dp;              // Over the window.
  std::vector<std::vector<int32_t>> outputs;
};

std::vector<int32_t> Prompt(int64_t batch, int64_t stream, int64_t length, int64_t vocab,
                            uint64_t salt) {
  std::mt19937_64 rng(salt * 1000003ull + batch * 1009ull + stream);
  std::vector<int32_t> ids(length);
  for (int32_t& id : ids) id = static_cast<int32_t>(100 + rng() % (vocab - 200));
  return ids;
}

// How far a measurement's streams are: told by the streams' threads,
// waited on by the thread that snapshots the data plane.
class StreamProgress {
 public:
  explicit StreamProgress(int64_t streams) : streams_(streams) {}

  // Releases the streams, which wait in WaitGo.
  void Go() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    go_ = true;
  }
  void WaitGo() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(&go_));
  }
  // A stream received its first token, its last, or both.
  void Count(bool first, bool last) ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    started_ += first ? 1 : 0;
    finished_ += last ? 1 : 0;
  }
  void Fail() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    ++failed_;
  }
  // Waits until every stream has its first token; false if one failed.
  bool WaitAllStarted() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    const auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return started_ == streams_ || failed_ > 0;
    };
    mutex_.Await(absl::Condition(&done));
    return failed_ == 0;
  }
  // Waits until a stream has its last token; false if one failed.
  bool WaitOneFinished() ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    const auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return finished_ > 0 || failed_ > 0;
    };
    mutex_.Await(absl::Condition(&done));
    return failed_ == 0;
  }

 private:
  const int64_t streams_;
  Mutex mutex_;
  int64_t started_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t finished_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t failed_ ABSL_GUARDED_BY(mutex_) = 0;
  bool go_ ABSL_GUARDED_BY(mutex_) = false;
};

Measurement Measure(const System& system, int64_t batch, int64_t prompt_len, int64_t max_tokens,
                    int64_t vocab, uint64_t salt) {
  Measurement m;
  auto channel =
      grpc::CreateChannel(system.generation_address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  struct Arrival {
    double time;
    int64_t cumulative;
  };
  struct Stream {
    std::vector<Arrival> arrivals;
    std::vector<int32_t> tokens;
    grpc::Status status;
  };
  std::vector<Stream> streams(batch);
  StreamProgress progress(batch);

  // Snapshots of the data plane when every stream has its first token and
  // when the first stream has its last.
  std::optional<DataPlane> first, last;
  std::thread monitor([&] {
    if (!progress.WaitAllStarted()) return;
    first = Snapshot(system);
    if (!progress.WaitOneFinished()) return;
    last = Snapshot(system);
  });

  std::vector<std::thread> threads;
  const double begin = NowSeconds();
  for (int64_t s = 0; s < batch; ++s) {
    threads.emplace_back([&, s] {
      v1::GenerateRequest request;
      request.set_request_id(absl::StrCat("bench-", salt, "-", batch, "-", s));
      for (int32_t id : Prompt(batch, s, prompt_len, vocab, salt))
        request.mutable_token_ids()->add_ids(id);
      request.mutable_sampling()->set_temperature(0);
      request.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(max_tokens));
      request.mutable_stopping()->set_ignore_eos(true);
      progress.WaitGo();
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
      auto reader = stub->Generate(&context, request);
      Stream& st = streams[s];
      v1::GenerateResponse response;
      bool counted_first = false, counted_last = false;
      while (reader->Read(&response)) {
        const double now = NowSeconds();
        const auto& ids =
            response.has_chunk() ? response.chunk().token_ids() : response.complete().token_ids();
        if (ids.empty()) continue;
        st.tokens.insert(st.tokens.end(), ids.begin(), ids.end());
        st.arrivals.push_back({now, static_cast<int64_t>(st.tokens.size())});
        const bool now_last = static_cast<int64_t>(st.tokens.size()) >= max_tokens;
        if ((!counted_first) || (now_last && !counted_last)) {
          progress.Count(!counted_first, now_last && !counted_last);
          counted_first = true;
          counted_last = counted_last || now_last;
        }
      }
      st.status = reader->Finish();
      if (!st.status.ok() || static_cast<int64_t>(st.tokens.size()) != max_tokens) {
        progress.Fail();
      }
    });
  }
  progress.Go();
  for (std::thread& t : threads) t.join();
  const double end = NowSeconds();
  monitor.join();
  for (int64_t s = 0; s < batch; ++s) {
    if (!streams[s].status.ok() || static_cast<int64_t>(streams[s].tokens.size()) != max_tokens) {
      Log(absl::StrCat(system.name(), " stream ", s, " failed: ", streams[s].status.error_message(),
                       " (", streams[s].tokens.size(), " tokens)"));
      return m;
    }
  }

  // The window: every stream has its first token, none its last.
  double t0 = 0, t1 = 1e300;
  for (const Stream& st : streams) {
    t0 = std::max(t0, st.arrivals.front().time);
    t1 = std::min(t1, st.arrivals.back().time);
  }
  int64_t tokens = 0;
  double span = 0;
  for (const Stream& st : streams) {
    const Arrival* a = nullptr;
    const Arrival* b = nullptr;
    for (const Arrival& x : st.arrivals) {
      if (x.time < t0 || x.time > t1) continue;
      if (a == nullptr) a = &x;
      b = &x;
    }
    if (a != nullptr && b != a) {
      tokens += b->cumulative - a->cumulative;
      span += b->time - a->time;
    }
  }
  m.e2e_tokens_per_s = batch * max_tokens / (end - begin);
  m.ok = true;  // The streams succeeded; the window may still be empty (a warm-up).
  if (tokens == 0 || span <= 0) {
    m.window_steps = 0;
    return m;
  }
  m.step_ms = 1e3 * span / tokens;
  m.tokens_per_s = batch * tokens / span;
  m.window_s = t1 - t0;
  m.window_steps = tokens / batch;
  if (first && last) m.dp = *last - *first;
  for (Stream& st : streams) m.outputs.push_back(std::move(st.tokens));
  return m;
}

// ---------------------------------------------------------------------------

struct Result {
  std::string system;
  int micro_batches;
  int64_t batch;
  Measurement m;
};

struct TransportRow {
  long rows;
  double dispatch_bytes, combine_bytes, rtt_us, perftest_rtt_us, gb_s, perftest_gb_s;
};

int Main(int argc, char** argv) {
  Flags flags(argc, argv);
  Options o;
  o.attention = static_cast<int>(flags.GetInt("attention", 1, 1, 64));
  o.experts = static_cast<int>(flags.GetInt("experts", 2, 1, 64));
  o.kv_cache_mib = flags.GetInt("kv-cache-mib", 256, 1, 1 << 20);
  const std::vector<long> batches = flags.GetList("batches", "32,64", 1, 4096);
  const std::vector<long> micro = flags.GetList("micro-batches", "1,2", 1, 4);
  const int64_t max_tokens = flags.GetInt("tokens", 32, 4, 1 << 20);
  const int64_t prompt_len = flags.GetInt("prompt", 8, 1, 1 << 20);
  const int64_t warmup_tokens = flags.GetInt("warmup-tokens", 4, 0, 1 << 20);
  const int reps = static_cast<int>(flags.GetInt("reps", 1, 1, 1000));
  const long transport_reps = flags.GetInt("transport-reps", 3, 1, 1000);
  const long transport_iters = flags.GetInt("transport-iters", 100, 1, 1 << 20);
  if (const std::optional<int> stop = flags.StopForUsage(
          "cluster_bench",
          {"model", "batches", "micro-batches", "tokens", "prompt", "warmup-tokens", "attention",
           "experts", "kv-cache-mib", "dtype", "build", "state", "reps", "transport-reps",
           "transport-iters", "no-standalone", "no-cluster", "no-transport", "json"},
          "usage: cluster_bench [--model DIR] [--batches 32,64] [--micro-batches 1,2]\n"
          "         [--tokens 32] [--prompt 8] [--warmup-tokens 4] [--attention 1]\n"
          "         [--experts 2] [--kv-cache-mib 256] [--build DIR] [--state DIR]\n"
          "         [--reps 1] [--transport-reps 3] [--transport-iters 100]\n"
          "         [--no-standalone] [--no-cluster] [--no-transport] [--json]\n"
          "Run from the repository root.\n")) {
    return *stop;
  }
  std::error_code ec;
  o.model = fs::absolute(flags.Get("model", "tests/data/tiny-v2")).string();
  {
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    o.build = flags.Get("build", exe.parent_path().parent_path().string());
  }
  o.build = fs::absolute(o.build).string();
  o.state =
      fs::absolute(flags.Get("state", absl::StrCat("/tmp/dsv2-cluster-bench-", getpid()))).string();
  o.cluster_script = fs::absolute("deploy/local/cluster.sh").string();
  o.dtype = flags.Get("dtype", "f32");
  if (o.dtype != "f32" && o.dtype != "bf16") {
    std::fprintf(stderr, "cluster_bench: --dtype must be f32 or bf16\n");
    return 2;
  }
  const int element = o.ElementBytes();
  const bool json = flags.Has("json");
  const bool run_standalone = !flags.Has("no-standalone");
  const bool run_cluster = !flags.Has("no-cluster");
  const bool run_transport = !flags.Has("no-transport") && run_cluster;
  o.max_num_seqs = std::max<long>(64, *std::max_element(batches.begin(), batches.end()));
  if (!fs::exists(o.cluster_script)) {
    std::fprintf(stderr, "cluster_bench: run from the repository root (%s is missing)\n",
                 o.cluster_script.c_str());
    return 2;
  }
  for (const char* b :
       {"services/standalone/dsv2-standalone", "services/attention/dsv2-attention",
        "services/expert/dsv2-expert", "services/router/dsv2-router",
        "services/controller/dsv2-controller", "tools/dsv2/dsv2", "bench/transport_bench"}) {
    if (!fs::exists(o.build + "/" + b)) {
      std::fprintf(stderr, "cluster_bench: %s/%s is missing; build it first\n", o.build.c_str(), b);
      return 2;
    }
  }
  absl::StatusOr<ModelConfig> config = LoadModelConfig(o.model + "/config.json");
  if (!config.ok()) {
    std::fprintf(stderr, "cluster_bench: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < config->num_hidden_layers; ++l) moe_layers += config->IsMoeLayer(l);
  const int64_t hidden = config->hidden_size, top_k = config->num_experts_per_tok;
  fs::create_directories(o.state);

  // SIGINT/SIGTERM: stop what we started, then exit.
  BlockTerminationSignals();
  Standalone standalone(o);
  Cluster cluster(o);
  std::thread([&] {
    WaitForTerminationSignal();
    interrupted = true;
    Log("interrupted; stopping the servers");
    if (const pid_t child = foreground.load(); child != 0) kill(child, SIGTERM);
    standalone.Down();
    cluster.Down();
    _exit(130);
  }).detach();

  const std::string load_before = LoadAverage();
  const double run_start = NowSeconds();
  Log(absl::StrCat("model ", o.model, ": hidden ", hidden, ", ", config->num_hidden_layers,
                   " layers (", moe_layers, " MoE), ", config->n_routed_experts, " experts, top-",
                   top_k, "; state and logs in ", o.state));
  std::vector<Result> results;
  std::vector<System*> systems;
  if (run_standalone) systems.push_back(&standalone);
  if (run_cluster) systems.push_back(&cluster);
  const int64_t warm_batch = *std::max_element(batches.begin(), batches.end());
  for (long m : micro) {
    for (System* system : systems) {
      if (interrupted) return Failed();
      Log(absl::StrCat("starting ", system->name(), " with --micro_batches=", m));
      const double t = NowSeconds();
      if (!system->Up(static_cast<int>(m))) return Failed();
      Log(absl::StrCat(system->name(), " up in ", static_cast<int>(NowSeconds() - t),
                       " s; warming up (", warm_batch, " streams x ", warmup_tokens, " tokens)"));
      if (!Measure(*system, warm_batch, prompt_len, std::max<int64_t>(4, warmup_tokens),
                   config->vocab_size, 999)
               .ok) {
        Log("warm-up failed");
        return Failed();
      }
      for (long b : batches) {
        if (interrupted) return Failed();
        std::vector<Measurement> runs;
        for (int rep = 0; rep < reps; ++rep) {
          Measurement r = Measure(*system, b, prompt_len, max_tokens, config->vocab_size, 1);
          if (!r.ok) return Failed();
          if (r.window_steps == 0) {
            Log(absl::StrCat(system->name(), " batch ", b,
                             ": no window in which every stream decodes (raise --tokens)"));
            return Failed();
          }
          Log(absl::StrCat(system->name(), " m=", m, " batch ", b, ": ",
                           static_cast<int>(r.tokens_per_s * 10) / 10.0, " tokens/s (",
                           static_cast<int>(r.step_ms * 10) / 10.0, " ms/step over ",
                           r.window_steps, " steps)"));
          runs.push_back(std::move(r));
        }
        // The median repetition by throughput (the lower middle for an even count).
        std::sort(runs.begin(), runs.end(), [](const Measurement& x, const Measurement& y) {
          return x.tokens_per_s < y.tokens_per_s;
        });
        results.push_back(
            {system->name(), static_cast<int>(m), b, std::move(runs[(runs.size() - 1) / 2])});
      }
      system->Down();
    }
  }

  // Transport goodput at the mean rows per dispatch the cluster sent.
  auto rows_of = [&](const DataPlane& d) {
    return d.messages > 0
               ? (d.bytes_received - kHeaderBytes * d.messages) / (1.0 * element * hidden)
               : 0.0;
  };
  std::map<long, TransportRow> transport_rows;
  // The sizes measured: the cluster's mean rows per dispatch, those within
  // 10% of a smaller one merged into it.
  std::vector<long> sizes;
  auto nearest_size = [&](double rows) {
    long best = -1;
    for (long s : sizes)
      if (best < 0 || std::abs(s - rows) < std::abs(best - rows)) best = s;
    return best;
  };
  if (run_transport) {
    std::set<long> all;
    for (const Result& r : results) {
      if (r.system == "cluster" && r.m.dp.messages > 0)
        all.insert(std::max(1L, std::lround(rows_of(r.m.dp) / r.m.dp.messages)));
    }
    for (long s : all)
      if (sizes.empty() || s > 1.1 * sizes.back()) sizes.push_back(s);
    if (!sizes.empty()) {
      Log("transport_bench (tcp) at " + absl::StrJoin(sizes, ",") + " rows per dispatch");
      const std::string out = o.state + "/transport_bench.json";
      // transport_bench sends bf16 rows: an f32 row is a bf16 row of twice the width.
      const int code =
          Run({o.build + "/bench/transport_bench", "--transports", "tcp", "--hidden",
               absl::StrCat(hidden * element / 2), "--top-k", absl::StrCat(top_k), "--tokens",
               absl::StrJoin(sizes, ","), "--reps", absl::StrCat(transport_reps), "--iters",
               absl::StrCat(transport_iters), "--json"},
              o.state + "/transport_bench.log", {}, out, /*own_group=*/true);
      try {
        const nlohmann::json j = nlohmann::json::parse(ReadFile(out));
        for (const auto& row : j["rows"]) {
          transport_rows[row["tokens"].get<long>()] = {row["tokens"].get<long>(),
                                                       row["dispatch_bytes"].get<double>(),
                                                       row["combine_bytes"].get<double>(),
                                                       row["rtt_us"].get<double>(),
                                                       row["perftest_rtt_us"].get<double>(),
                                                       row["goodput_gb_s"].get<double>(),
                                                       row["perftest_bw_gb_s"].get<double>()};
        }
      } catch (const std::exception& e) {
        Log(absl::StrCat("transport_bench failed (exit ", code, "): ", e.what(), "; see ", o.state,
                         "/transport_bench.log"));
      }
    }
  }
  const double run_s = NowSeconds() - run_start;
  const std::string load_after = LoadAverage();

  auto find = [&](const std::string& system, int m, int64_t b) -> const Result* {
    for (const Result& r : results)
      if (r.system == system && r.micro_batches == m && r.batch == b) return &r;
    return nullptr;
  };
  auto same_tokens = [&](const Result& c) -> int {
    const Result* s = find("standalone", c.micro_batches, c.batch);
    if (s == nullptr) return -1;
    int same = 0;
    for (size_t i = 0; i < c.m.outputs.size() && i < s->m.outputs.size(); ++i)
      same += c.m.outputs[i] == s->m.outputs[i];
    return same;
  };
  struct Bytes {
    double per_token, theory, workers, rows_per_token, act, ids, headers, rows_per_msg,
        dispatch_frame, rate_gb_s;
  };
  auto bytes_of = [&](const Result& r) {
    const DataPlane& d = r.m.dp;
    Bytes b{};
    if (d.tokens <= 0) return b;
    const double rows = rows_of(d);
    b.per_token = static_cast<double>(d.bytes_sent + d.bytes_received) / d.tokens;
    b.workers = static_cast<double>(d.token_workers) / d.tokens;
    b.theory = 2.0 * hidden * element * b.workers;
    b.rows_per_token = rows / d.tokens;
    b.act = 2.0 * hidden * element * b.rows_per_token;
    b.headers = 2.0 * kHeaderBytes * d.messages / d.tokens;
    b.ids = b.per_token - b.act - b.headers;  // Ids, weights, alignment padding.
    b.rows_per_msg = d.messages > 0 ? rows / d.messages : 0;
    b.dispatch_frame = d.messages > 0 ? static_cast<double>(d.bytes_sent) / d.messages : 0;
    b.rate_gb_s = d.time > 0 ? (d.bytes_sent + d.bytes_received) / d.time / 1e9 : 0;
    return b;
  };

  if (json) {
    nlohmann::json j;
    j["model"] = o.model;
    j["hidden"] = hidden;
    j["moe_layers"] = moe_layers;
    j["top_k"] = top_k;
    j["attention_workers"] = o.attention;
    j["expert_workers"] = o.experts;
    j["prompt_tokens"] = prompt_len;
    j["max_tokens"] = max_tokens;
    j["loadavg_before"] = load_before;
    j["loadavg_after"] = load_after;
    j["run_seconds"] = run_s;
    for (const Result& r : results) {
      const Bytes b = bytes_of(r);
      nlohmann::json row = {{"system", r.system},
                            {"micro_batches", r.micro_batches},
                            {"batch", r.batch},
                            {"decode_tokens_per_s", r.m.tokens_per_s},
                            {"step_ms", r.m.step_ms},
                            {"window_steps", r.m.window_steps},
                            {"e2e_tokens_per_s", r.m.e2e_tokens_per_s},
                            {"dp_tokens", r.m.dp.tokens},
                            {"dp_messages", r.m.dp.messages},
                            {"dp_bytes_sent", r.m.dp.bytes_sent},
                            {"dp_bytes_received", r.m.dp.bytes_received},
                            {"dp_token_workers", r.m.dp.token_workers},
                            {"bytes_per_token_layer", b.per_token},
                            {"theory_bytes_per_token_layer", b.theory},
                            {"workers_per_token", b.workers},
                            {"rows_per_token", b.rows_per_token},
                            {"rows_per_message", b.rows_per_msg},
                            {"dispatch_frame_bytes", b.dispatch_frame},
                            {"dp_rate_gb_s", b.rate_gb_s}};
      row["window_seconds"] = r.m.dp.time;
      row["window_generated_tokens"] = r.m.dp.generated;
      row["window_cpu_seconds"] = r.m.dp.cpu;
      row["window_machine_busy_seconds"] = r.m.dp.machine_busy;
      row["window_machine_steal_seconds"] = r.m.dp.machine_steal;
      if (r.system == "cluster") row["same_tokens_as_standalone"] = same_tokens(r);
      j["runs"].push_back(row);
    }
    for (const auto& [rows, t] : transport_rows) {
      j["transport"].push_back({{"rows", rows},
                                {"dispatch_bytes", t.dispatch_bytes},
                                {"combine_bytes", t.combine_bytes},
                                {"rtt_us", t.rtt_us},
                                {"perftest_rtt_us", t.perftest_rtt_us},
                                {"goodput_gb_s", t.gb_s},
                                {"perftest_bw_gb_s", t.perftest_gb_s}});
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }

  std::printf(
      "model %s: hidden %lld, %lld MoE layers of %lld, %lld routed experts, top-%lld (%s)\n",
      o.model.c_str(), (long long)hidden, (long long)moe_layers,
      (long long)config->num_hidden_layers, (long long)config->n_routed_experts, (long long)top_k,
      config->topk_method == TopkMethod::kGroupLimitedGreedy ? "group-limited" : "greedy");
  std::printf(
      "cluster: %d attention, %d expert workers, UCX over loopback; %lld-token prompts, "
      "%lld tokens per stream\n\n",
      o.attention, o.experts, (long long)prompt_len, (long long)max_tokens);
  std::printf("Decode throughput (tokens/s while all B streams decode; ms per step):\n");
  std::printf("%5s %3s | %10s %8s | %10s %8s | %6s | %11s\n", "batch", "m", "standalone", "ms/step",
              "cluster", "ms/step", "ratio", "same tokens");
  for (long m : micro) {
    for (long b : batches) {
      const Result* s = find("standalone", m, b);
      const Result* c = find("cluster", m, b);
      std::printf("%5ld %3ld | %10.1f %8.1f | %10.1f %8.1f | %6.2f | %11s\n", b, m,
                  s ? s->m.tokens_per_s : 0.0, s ? s->m.step_ms : 0.0, c ? c->m.tokens_per_s : 0.0,
                  c ? c->m.step_ms : 0.0,
                  s && c && s->m.tokens_per_s > 0 ? c->m.tokens_per_s / s->m.tokens_per_s : 0.0,
                  c && s ? absl::StrCat(same_tokens(*c), "/", b).c_str() : "-");
    }
  }
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  std::printf(
      "\nCPU time per decode step by process (ms; /proc utime + stime over the decode window; "
      "busy = all of it / (%ld cores x wall);\nothers = the rest of the machine's busy time "
      "(other tenants), steal = taken by the host, both / (cores x wall)):\n",
      cores);
  std::printf("%-10s %5s %3s | %8s | %9s %8s %7s %7s %7s | %8s %6s | %6s %6s\n", "system", "batch",
              "m", "step ms", "attention", "experts", "router", "control", "client", "total",
              "busy", "others", "steal");
  for (const Result& r : results) {
    const DataPlane& d = r.m.dp;
    const double steps = d.generated > 0 ? static_cast<double>(d.generated) / r.batch : 0;
    if (steps <= 0) continue;
    auto cpu = [&](const char* role) {
      const auto it = d.cpu.find(role);
      return it == d.cpu.end() ? 0.0 : 1e3 * it->second / steps;
    };
    double total = 0;
    for (const auto& [role, seconds] : d.cpu) total += 1e3 * seconds / steps;
    const double wall = d.time * cores;
    std::printf(
        "%-10s %5lld %3d | %8.1f | %9.1f %8.1f %7.1f %7.1f %7.1f | %8.1f %5.0f%% | %5.0f%% "
        "%5.0f%%\n",
        r.system.c_str(), (long long)r.batch, r.micro_batches, 1e3 * d.time / steps,
        cpu("attention") + cpu("standalone"), cpu("expert"), cpu("router"), cpu("controller"),
        cpu("client"), total, 100.0 * total * steps / (1e3 * wall),
        std::max(0.0, 100.0 * (d.machine_busy - total * steps / 1e3) / wall),
        100.0 * d.machine_steal / wall);
  }
  std::printf(
      "\nData plane per token per MoE layer, decode window (bytes sent + received by the "
      "attention side):\n");
  std::printf("%-10s %5s %3s | %6s %6s | %9s %9s %6s | %9s %8s %8s | %7s %10s %8s\n", "system",
              "batch", "m", "wkr/tk", "row/tk", "measured", "theory", "ratio", "act+part",
              "ids+wts", "headers", "row/msg", "dispatch B", "DP GB/s");
  for (const Result& r : results) {
    const Bytes b = bytes_of(r);
    std::printf(
        "%-10s %5lld %3d | %6.2f %6.2f | %9.0f %9.0f %6.2f | %9.0f %8.0f %8.1f | %7.1f %10.0f "
        "%8.3f\n",
        r.system.c_str(), (long long)r.batch, r.micro_batches, b.workers, b.rows_per_token,
        b.per_token, b.theory, b.theory > 0 ? b.per_token / b.theory : 0.0, b.act, b.ids, b.headers,
        b.rows_per_msg, b.dispatch_frame, b.rate_gb_s);
  }
  std::printf(
      "theory = 2 x hidden x %d B (%s) x workers reached per token; act+part = activation and "
      "partial-sum rows\n(one row per token and combine granule: one expert under greedy routing, "
      "one group under group-limited);\nids+wts = top-k int32 ids + f32 weights per row and "
      "alignment; headers = 2 x 64 B per dispatch;\nDP GB/s = the cluster's data-plane bytes "
      "over the decode window's wall time (standalone: in-process, no copy).\n",
      element, o.dtype.c_str());
  if (!transport_rows.empty()) {
    std::printf(
        "\nData-plane goodput at the cluster's message sizes (transport_bench, UCX_TLS=tcp, "
        "same run):\n");
    std::printf("%7s %10s %10s | %8s %8s %6s | %8s %8s %6s | %s\n", "row/msg", "dispatch B",
                "combine B", "RTT us", "perftest", "ratio", "GB/s", "perftest", "ratio",
                "cluster (batch/m: its DP rate, MoE layers x m x RTT, step ms over standalone)");
    for (const auto& [rows, t] : transport_rows) {
      std::string used;
      for (const Result& r : results) {
        if (r.system != "cluster") continue;
        const Bytes b = bytes_of(r);
        if (nearest_size(b.rows_per_msg) != rows) continue;
        // The most a step can wait on the wire: every MoE layer's calls one
        // after another (micro-batches overlap theirs in fact).
        const double wire_ms = moe_layers * r.micro_batches * t.rtt_us / 1e3;
        const Result* s = find("standalone", r.micro_batches, r.batch);
        absl::StrAppend(&used, used.empty() ? "" : "; ", r.batch, "/", r.micro_batches, ": ",
                        absl::StrFormat("%.3f GB/s, RTTs %.1f ms/step", b.rate_gb_s, wire_ms));
        if (s != nullptr)
          absl::StrAppend(&used, absl::StrFormat(" (gap %+.1f)", r.m.step_ms - s->m.step_ms));
      }
      std::printf("%7ld %10.0f %10.0f | %8.1f %8.1f %6.2f | %8.3f %8.3f %6.2f | %s\n", rows,
                  t.dispatch_bytes, t.combine_bytes, t.rtt_us, t.perftest_rtt_us,
                  t.perftest_rtt_us > 0 ? t.rtt_us / t.perftest_rtt_us : 0.0, t.gb_s,
                  t.perftest_gb_s, t.perftest_gb_s > 0 ? t.gb_s / t.perftest_gb_s : 0.0,
                  used.c_str());
    }
    std::printf(
        "RTT: one Call at a time vs 2 x ucp_am_lat p50; GB/s: dispatch + combine payload with 8 "
        "calls in flight vs ucp_am_bw\n(one direction) at the dispatch frame size; see "
        "docs/performance.md \"Data plane\".\n");
  }
  std::printf("\nrun %.0f s; load average before: %s, after: %s; logs in %s\n", run_s,
              load_before.c_str(), load_after.c_str(), o.state.c_str());
  return 0;
}

}  // namespace
}  // namespace dsv2::bench

int main(int argc, char** argv) { return dsv2::bench::Main(argc, argv); }
