// Child processes for end-to-end tests of the dsv2-serve services.
//
// ChildProcess starts one service binary with its output in a log file and
// reads the port it bound from its --port_file; the process is SIGKILLed and
// reaped when the handle goes (and by the kernel if the test process dies
// first), so a failed assertion never leaves a server behind.
//
// Cluster starts a whole disaggregated cluster on loopback, every port chosen
// by the OS: dsv2-controller, E dsv2-expert workers, A dsv2-attention
// workers and dsv2-router, each with the caller's extra flags; it can restart
// the controller on its port and add expert workers, and WaitReady waits
// until the controller's map is complete with every running worker alive,
// every attention worker serving and the router healthy.
//
//   Cluster cluster({.binaries = binaries, .model = "tests/data/tiny-v2", .experts = 3});
//   ASSERT_TRUE(cluster.Start());
//   ASSERT_TRUE(cluster.WaitReady());
//   auto stub = v1::Generation::NewStub(cluster.RouterChannel());
//   cluster.expert(1).Kill();
//
// The router also serves the OpenAI-compatible HTTP API on a port chosen by
// the OS (RouterHttpPort), with the same TLS and credentials as its gRPC API.
//
// By default every plane runs with TLS, as deploy/local/cluster.sh does:
// a test CA (tests/test_certs.h) and one certificate per process; the test
// itself calls the controller as an operator, attention workers as a router
// and the router's API as a client with the CA (no client certificate).
// ClusterOptions::tls = false runs everything with --insecure.
//
// Files (port files, logs) live in a fresh directory under
// testing::TempDir(), removed at the end unless the test failed.
//
// Thread safety: none; start and stop processes from the test's main thread
// (a child is killed when the thread that started it exits).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dsv2/internal/attention.grpc.pb.h"
#include "dsv2/internal/control.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "common/base/test_util.h"
#include "tests/test_certs.h"

namespace dsv2::testutil {

class ChildProcess {
 public:
  // Starts `binary` with `args`, stdout and stderr appended to
  // `dir`/`name`.log, and --port_file=`dir`/`name`.port unless `port_file`
  // is false. Check running() or WaitPort() for whether it came up.
  ChildProcess(std::string name, const std::string& dir, const std::string& binary,
               std::vector<std::string> args, bool port_file = true)
      : name_(std::move(name)),
        log_path_(dir + "/" + name_ + ".log"),
        port_path_(port_file ? dir + "/" + name_ + ".port" : "") {
    std::vector<std::string> argv_strings = {binary};
    if (port_file) {
      std::filesystem::remove(port_path_);
      argv_strings.push_back("--port_file=" + port_path_);
    }
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls until exec.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(126);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      if (log_fd >= 0) {
        dup2(log_fd, STDOUT_FILENO);
        dup2(log_fd, STDERR_FILENO);
      }
      close_range(3, ~0U, 0);
      execv(argv[0], argv.data());
      _exit(127);
    }
    if (log_fd >= 0) close(log_fd);
    if (pid_ < 0) exited_ = true;
  }

  ~ChildProcess() { Kill(SIGKILL); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }

  // Waits until the port file names a port; false if the process exited or
  // `timeout` passed first.
  bool WaitPort(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      std::ifstream in(port_path_);
      int port = 0;
      if (in >> port && port > 0) {
        port_ = port;
        return true;
      }
      if (!running()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // Whether the process has not exited (reaps it if it has).
  bool running() {
    if (exited_) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      wait_status_ = status;
    }
    return !exited_;
  }

  // Sends `signal`; SIGKILL also waits for the process to be gone.
  void Kill(int signal = SIGKILL) {
    if (!running()) return;
    kill(pid_, signal);
    if (signal == SIGKILL) {
      int status = 0;
      if (waitpid(pid_, &status, 0) == pid_) wait_status_ = status;
      exited_ = true;
    }
  }

  // SIGSTOP, returning once the process has stopped (kill only queues the
  // signal); SIGCONT.
  void Stop() {
    if (!running()) return;
    kill(pid_, SIGSTOP);
    int status = 0;
    waitpid(pid_, &status, WUNTRACED);
  }
  void Continue() {
    if (running()) kill(pid_, SIGCONT);
  }

  // The raw wait status once the process exited within `timeout`.
  std::optional<int> WaitExit(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (running() && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (running()) return std::nullopt;
    return wait_status_;
  }

  // "name (pid N): running", "... exited 1", "... killed by signal 11".
  std::string Describe() {
    std::ostringstream out;
    out << name_ << " (pid " << pid_ << "): ";
    if (running()) {
      out << "running";
    } else if (WIFEXITED(wait_status_)) {
      out << "exited " << WEXITSTATUS(wait_status_);
    } else if (WIFSIGNALED(wait_status_)) {
      out << "killed by signal " << WTERMSIG(wait_status_);
    } else {
      out << "gone";
    }
    return out.str();
  }

  // The last `max_bytes` of its output.
  std::string Log(size_t max_bytes = 3000) const {
    std::ifstream in(log_path_);
    std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return log.size() > max_bytes ? "..." + log.substr(log.size() - max_bytes) : log;
  }

 private:
  const std::string name_;
  const std::string log_path_;
  const std::string port_path_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool exited_ = false;
  int wait_status_ = 0;
};

using Credentials = std::shared_ptr<grpc::ChannelCredentials>;

// grpc.health.v1 status of `service` at `address`; UNKNOWN when the call
// fails.
inline grpc::health::v1::HealthCheckResponse::ServingStatus HealthOf(
    const std::string& address, const std::string& service = "",
    Credentials credentials = grpc::InsecureChannelCredentials()) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(address, credentials));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  if (!stub->Check(&context, request, &response).ok()) {
    return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  }
  return response.status();
}

// dsv2.internal.Controller/GetClusterMap at `address`.
inline grpc::Status GetClusterMap(const std::string& address, internal::ClusterMap* map,
                                  Credentials credentials = grpc::InsecureChannelCredentials()) {
  auto stub = internal::Controller::NewStub(grpc::CreateChannel(address, credentials));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return stub->GetClusterMap(&context, internal::GetClusterMapRequest(), map);
}

// dsv2.internal.AttentionWorker/GetLoad at `address`.
inline grpc::Status GetLoad(const std::string& address, internal::Load* load,
                            Credentials credentials = grpc::InsecureChannelCredentials()) {
  auto stub = internal::AttentionWorker::NewStub(grpc::CreateChannel(address, credentials));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return stub->GetLoad(&context, internal::GetLoadRequest(), load);
}

// The entry of worker `id` in `map`, or null.
inline const internal::Worker* FindWorker(const internal::ClusterMap& map, const std::string& id) {
  for (const internal::Worker& w : map.workers()) {
    if (w.info().worker_id() == id) return &w;
  }
  return nullptr;
}

// How much slower than a plain build this one runs (sanitizers): the
// DSV2_TEST_TIME_SCALE environment variable, default 1. Bounds on how fast
// the cluster reacts are multiplied by it.
inline double TimeScale() {
  const char* scale = std::getenv("DSV2_TEST_TIME_SCALE");
  return scale != nullptr && std::atof(scale) > 0 ? std::atof(scale) : 1.0;
}

// Polls `condition` every 10 ms until it holds or `timeout` passes.
template <typename Condition>
bool WaitFor(Condition condition, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

struct ClusterBinaries {
  std::string controller;
  std::string expert;
  std::string attention;
  std::string router;
};

struct ClusterOptions {
  ClusterBinaries binaries;
  std::string model;  // Model directory, as every process is given it.
  int attention = 1;  // Attention workers attention-1..A.
  int experts = 2;    // Expert workers expert-1..E.
  int replicas = 1;
  int lease_ms = 600;
  int warmup_ms = 100;
  int kv_cache_mib = 4;
  int load_interval_ms = 20;  // The router's load polls.
  bool tls = true;            // Every plane with TLS (else --insecure).
  std::vector<std::string> controller_flags;
  std::vector<std::string> expert_flags;
  std::vector<std::string> attention_flags;
  std::vector<std::string> router_flags;
};

class Cluster {
 public:
  explicit Cluster(ClusterOptions options)
      : options_(std::move(options)), dir_(NewTestDir("cluster")) {
    if (options_.tls) {
      certs_.emplace(dir_ + "/tls");
      // The test's own identities: an operator and a router.
      certs_ok_ = certs_->Make("operator", "test-operator") && certs_->Make("router", "test-router");
    }
  }

  // Kills every process, router first.
  ~Cluster() {
    router_.reset();
    attention_.clear();
    experts_.clear();
    controller_.reset();
    if (::testing::Test::HasFailure()) {
      std::cerr << "cluster files kept in " << dir_ << "\n";
    } else {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Starts the controller, then every worker and the router at once, and
  // waits for all their port files.
  ::testing::AssertionResult Start(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    if (options_.tls && !certs_ok_) return Failure("the test certificates could not be made");
    controller_ = StartControllerProcess("controller", "127.0.0.1:0", {});
    if (!controller_->WaitPort(timeout)) return Failure("the controller did not start");
    controller_address_ = controller_->address();
    for (int i = 1; i <= options_.experts; ++i) {
      experts_.push_back(StartExpertProcess("expert-" + std::to_string(i)));
    }
    for (int i = 1; i <= options_.attention; ++i) {
      const std::string id = "attention-" + std::to_string(i);
      std::vector<std::string> args = {
          "--model=" + options_.model, "--controller=" + controller_address_,
          "--listen=127.0.0.1:0", "--worker_id=" + id,
          "--kv_cache_mib=" + std::to_string(options_.kv_cache_mib)};
      if (!AddIdentity("attention", id, &args)) return Failure("no certificate for " + id);
      args.insert(args.end(), options_.attention_flags.begin(), options_.attention_flags.end());
      attention_.push_back(std::make_unique<ChildProcess>("attention-" + std::to_string(i), dir_,
                                                          options_.binaries.attention, args));
    }
    std::vector<std::string> args = {
        "--model=" + options_.model, "--controller=" + controller_address_, "--listen=127.0.0.1:0",
        "--load_interval_ms=" + std::to_string(options_.load_interval_ms),
        "--http_listen=127.0.0.1:0", "--http_port_file=" + dir_ + "/router.http.port"};
    if (!AddIdentity("router", "router", &args)) return Failure("no certificate for the router");
    args.insert(args.end(), options_.router_flags.begin(), options_.router_flags.end());
    router_ = std::make_unique<ChildProcess>("router", dir_, options_.binaries.router, args);
    for (auto& p : experts_) {
      if (!p->WaitPort(timeout)) return Failure(p->name() + " did not start");
    }
    for (auto& p : attention_) {
      if (!p->WaitPort(timeout)) return Failure(p->name() + " did not start");
    }
    if (!router_->WaitPort(timeout)) return Failure("the router did not start");
    return ::testing::AssertionSuccess();
  }

  // Waits until the controller's map is complete and lists every running
  // worker ALIVE, every running attention worker reports serving, and the
  // router is SERVING; then until the router has polled every running attention
  // worker's load again (WaitPolledAgain).
  ::testing::AssertionResult WaitReady(
      std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    std::string missing;
    const bool ready = WaitFor(
        [&] {
          internal::ClusterMap map;
          if (grpc::Status s = GetMap(&map); !s.ok()) {
            missing = "controller map: " + s.error_message();
            return false;
          }
          if (!map.complete()) {
            missing = "the map is incomplete";
            return false;
          }
          for (ChildProcess* p : Workers()) {
            const internal::Worker* w = FindWorker(map, p->name());
            if (w == nullptr || w->state() != internal::WORKER_STATE_ALIVE) {
              missing = p->name() + " is not alive in the map";
              return false;
            }
          }
          for (auto& p : attention_) {
            internal::Load load;
            if (p->running() && (!Load(*p, &load).ok() || !load.serving())) {
              missing = p->name() + " is not serving";
              return false;
            }
          }
          if (Health(*router_) != grpc::health::v1::HealthCheckResponse::SERVING) {
            missing = "the router is not SERVING";
            return false;
          }
          return true;
        },
        timeout);
    if (!ready) return Failure("cluster not ready: " + missing);
    for (auto& p : attention_) {
      if (p->running() && !WaitPolledAgain(*p, timeout)) {
        return Failure("the router did not poll " + p->name() + " again");
      }
    }
    return ::testing::AssertionSuccess();
  }

  // Starts a new controller (after the first one died) on the same port.
  ::testing::AssertionResult RestartController(std::vector<std::string> extra_flags = {}) {
    controller_ = StartControllerProcess("controller-" + std::to_string(++restarts_),
                                         controller_address_, std::move(extra_flags));
    if (!controller_->WaitPort()) return Failure("the new controller did not start");
    return ::testing::AssertionSuccess();
  }

  // Starts one more expert worker with id `worker_id`, and waits for its port.
  ::testing::AssertionResult AddExpert(const std::string& worker_id) {
    experts_.push_back(StartExpertProcess(worker_id));
    if (!experts_.back()->WaitPort()) return Failure(worker_id + " did not start");
    return ::testing::AssertionSuccess();
  }

  ChildProcess& controller() { return *controller_; }
  const std::string& controller_address() const { return controller_address_; }
  ChildProcess& expert(int i) { return *experts_.at(i); }  // 0-based, in start order.
  ChildProcess& attention(int i) { return *attention_.at(i); }
  ChildProcess& router() { return *router_; }
  // The port of the router's OpenAI-compatible HTTP API (HTTPS with TLS),
  // written once the router serves; 0 if not.
  int RouterHttpPort() const {
    std::ifstream in(dir_ + "/router.http.port");
    int port = 0;
    in >> port;
    return port;
  }
  int num_experts() const { return static_cast<int>(experts_.size()); }
  int num_attention() const { return static_cast<int>(attention_.size()); }

  // Every process, controller first.
  std::vector<ChildProcess*> All() {
    std::vector<ChildProcess*> all;
    if (controller_) all.push_back(controller_.get());
    for (auto& p : experts_) all.push_back(p.get());
    for (auto& p : attention_) all.push_back(p.get());
    if (router_) all.push_back(router_.get());
    return all;
  }

  // Each process's state and the tail of its log, for failure messages.
  std::string Logs(size_t max_bytes_each = 2000) {
    std::string out;
    for (ChildProcess* p : All()) {
      out += "=== " + p->Describe() + "\n" + p->Log(max_bytes_each) + "\n";
    }
    return out;
  }

  const std::string& dir() const { return dir_; }

  // The test's credentials: as an operator (the controller), as a router
  // (attention workers), and as an API client (the router; health anywhere).
  Credentials OperatorCredentials() const { return IdentityCredentials("test-operator"); }
  Credentials RouterCredentials() const { return IdentityCredentials("test-router"); }
  Credentials ClientCredentials() const {
    if (!options_.tls) return grpc::InsecureChannelCredentials();
    return ChannelTlsCredentials(TlsFiles{.ca = certs_->ca()});
  }
  // The test certificates (null without TLS).
  TestCerts* certs() { return certs_ ? &*certs_ : nullptr; }

  std::shared_ptr<grpc::Channel> RouterChannel() {
    return grpc::CreateChannel(router_->address(), ClientCredentials());
  }
  grpc::health::v1::HealthCheckResponse::ServingStatus Health(ChildProcess& process) {
    return HealthOf(process.address(), "", ClientCredentials());
  }
  grpc::Status GetMap(internal::ClusterMap* map) {
    return GetClusterMap(controller_address_, map, OperatorCredentials());
  }
  grpc::Status Load(ChildProcess& attention, internal::Load* load) {
    return GetLoad(attention.address(), load, RouterCredentials());
  }

  // The running worker processes (their names are their worker ids).
  std::vector<ChildProcess*> Workers() {
    std::vector<ChildProcess*> workers;
    for (auto& p : experts_) {
      if (p->running()) workers.push_back(p.get());
    }
    for (auto& p : attention_) {
      if (p->running()) workers.push_back(p.get());
    }
    return workers;
  }

 private:
  Credentials IdentityCredentials(const std::string& id) const {
    if (!options_.tls) return grpc::InsecureChannelCredentials();
    return ChannelTlsCredentials(certs_->Files(id));
  }

  // Waits until the router has polled `attention`'s load and taken in the
  // answer since this call. The worker counts the GetLoad calls it answered
  // (the test's own among them); the router keeps one poll in flight
  // per worker and sends the next only once it has taken in the last. So
  // three of its polls answered from now mean the second was both sent and
  // taken in after now.
  bool WaitPolledAgain(ChildProcess& attention, std::chrono::milliseconds timeout) {
    internal::Load load;
    if (!Load(attention, &load).ok()) return false;
    const int64_t start = load.get_load_calls();  // This call included.
    int64_t own = 0;  // The test's calls since; a failed one may have been answered.
    return WaitFor(
        [&] {
          ++own;
          return Load(attention, &load).ok() && load.get_load_calls() - start - own >= 3;
        },
        timeout);
  }

  // Appends the TLS flags of a process with identity `role`/`id` (making its
  // certificate), or --insecure.
  bool AddIdentity(const std::string& role, const std::string& id,
                   std::vector<std::string>* args) {
    if (!options_.tls) {
      args->push_back("--insecure");
      return true;
    }
    if (!certs_->Make(role, id)) return false;
    for (std::string& flag : certs_->Flags(id)) args->push_back(std::move(flag));
    return true;
  }


  std::unique_ptr<ChildProcess> StartControllerProcess(const std::string& name,
                                                       const std::string& listen,
                                                       std::vector<std::string> extra_flags) {
    std::vector<std::string> args = {"--model=" + options_.model, "--listen=" + listen,
                                     "--replicas=" + std::to_string(options_.replicas),
                                     "--lease_ms=" + std::to_string(options_.lease_ms),
                                     "--warmup_ms=" + std::to_string(options_.warmup_ms)};
    AddIdentity("controller", "controller", &args);
    args.insert(args.end(), options_.controller_flags.begin(), options_.controller_flags.end());
    args.insert(args.end(), extra_flags.begin(), extra_flags.end());
    return std::make_unique<ChildProcess>(name, dir_, options_.binaries.controller, args);
  }

  std::unique_ptr<ChildProcess> StartExpertProcess(const std::string& worker_id) {
    std::vector<std::string> args = {"--model=" + options_.model,
                                     "--controller=" + controller_address_, "--listen=127.0.0.1:0",
                                     "--worker_id=" + worker_id};
    AddIdentity("expert", worker_id, &args);
    args.insert(args.end(), options_.expert_flags.begin(), options_.expert_flags.end());
    return std::make_unique<ChildProcess>(worker_id, dir_, options_.binaries.expert, args);
  }

  ::testing::AssertionResult Failure(const std::string& what) {
    return ::testing::AssertionFailure() << what << "\n" << Logs();
  }

  const ClusterOptions options_;
  const std::string dir_;
  std::optional<TestCerts> certs_;
  bool certs_ok_ = false;
  std::string controller_address_;
  int restarts_ = 0;
  std::unique_ptr<ChildProcess> controller_;
  std::vector<std::unique_ptr<ChildProcess>> experts_;
  std::vector<std::unique_ptr<ChildProcess>> attention_;
  std::unique_ptr<ChildProcess> router_;
};

}  // namespace dsv2::testutil
