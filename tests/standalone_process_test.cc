// dsv2-standalone as a process: startup, health, and the SIGTERM drain.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "common/base/mutex.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/generation_test_util.h"
#include "tests/hostile_model.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class StandaloneProcess {
 public:
  explicit StandaloneProcess(std::vector<std::string> extra_args) {
    static int counter = 0;
    dir_ = testing::TempDir() + "/standalone_" + std::to_string(getpid()) + "_" + std::to_string(counter++);
    // A process of an earlier run with the same pid may have left its port
    // file here: it would be read as this process's.
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    std::vector<std::string> args = {DSV2_STANDALONE, "--listen=127.0.0.1:0",
                                     "--port_file=" + dir_ + "/port", "--kv_cache_mib=32",
                                     "--http_listen=127.0.0.1:0",
                                     "--http_port_file=" + dir_ + "/http_port"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      freopen((dir_ + "/stderr").c_str(), "w", stderr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~StandaloneProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // Waits for the port file; empty when the process exited first.
  std::string WaitAddress() {
    for (int i = 0; i < 3000; ++i) {
      std::ifstream in(dir_ + "/port");
      int port = 0;
      if (in >> port && port > 0) return "127.0.0.1:" + std::to_string(port);
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        exit_status_ = status;
        return "";
      }
      std::this_thread::sleep_for(10ms);
    }
    return "";
  }

  void Signal(int sig) { kill(pid_, sig); }
  pid_t pid() const { return pid_; }

  // The HTTP API's port (written before the gRPC port file), or 0.
  int HttpPort() const {
    std::ifstream in(dir_ + "/http_port");
    int port = 0;
    in >> port;
    return port;
  }

  // Exit code, or -1 if it did not exit normally within `timeout`.
  int WaitExit(std::chrono::seconds timeout = 30s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!exited_ && std::chrono::steady_clock::now() < end) {
      if (waitpid(pid_, &exit_status_, WNOHANG) == pid_) exited_ = true;
      else std::this_thread::sleep_for(10ms);
    }
    return exited_ && WIFEXITED(exit_status_) ? WEXITSTATUS(exit_status_) : -1;
  }

  std::string Stderr() const {
    std::ifstream in(dir_ + "/stderr");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_status_ = 0;
};

v1::GenerateRequest Greedy(const std::string& id, uint32_t max_tokens) {
  return testutil::Greedy(id, {0, 11, 12, 13}, max_tokens);
}

struct Outcome {
  grpc::Status status;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  size_t tokens = 0;
};

Outcome Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  Outcome outcome;
  while (reader->Read(&response)) {
    if (response.has_chunk()) outcome.tokens += response.chunk().token_ids_size();
    if (response.has_complete()) {
      outcome.tokens += response.complete().token_ids_size();
      outcome.finish = response.complete().finish_reason();
    }
  }
  outcome.status = reader->Finish();
  return outcome;
}

HealthCheckResponse::ServingStatus Health(const std::shared_ptr<grpc::Channel>& channel,
                                          const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 10s);
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  if (!status.ok()) return HealthCheckResponse::UNKNOWN;
  return response.status();
}

// Starts long requests, sends SIGTERM once every one of them is streaming,
// and checks the drain: health turns NOT_SERVING, new requests are refused,
// the running ones end with `expected_finish`, and the process exits 0.
void DrainScenario(double grace_s, v1::FinishReason expected_finish) {
  StandaloneProcess process({"--model=tests/data/tiny-v2",
                             "--drain_grace_s=" + std::to_string(grace_s)});
  const std::string address = process.WaitAddress();
  ASSERT_FALSE(address.empty()) << process.Stderr();
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  EXPECT_EQ(Health(channel, ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health(channel, "dsv2.v1.Generation"), HealthCheckResponse::SERVING);

  // Watch health before the signal: the NOT_SERVING update is pushed to us.
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext watch_context;
  auto watch = health->Watch(&watch_context, HealthCheckRequest());
  HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);

  constexpr int kRequests = 32;
  std::vector<Outcome> outcomes(kRequests);
  Mutex mutex;
  int streaming = 0;
  std::vector<std::thread> clients;
  for (int i = 0; i < kRequests; ++i) {
    clients.emplace_back([&, i] {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + 60s);
      auto reader = stub->Generate(&context, Greedy("d" + std::to_string(i), 120));
      v1::GenerateResponse response;
      Outcome& outcome = outcomes[i];
      bool first = true;
      while (reader->Read(&response)) {
        if (first) {
          MutexLock lock(&mutex);
          ++streaming;
          first = false;
        }
        if (response.has_complete()) outcome.finish = response.complete().finish_reason();
      }
      outcome.status = reader->Finish();
    });
  }
  {
    MutexLock lock(&mutex);
    const auto all_streaming = [&] { return streaming == kRequests; };
    ASSERT_TRUE(mutex.AwaitWithTimeout(absl::Condition(&all_streaming), absl::Seconds(60)));
  }
  process.Signal(SIGTERM);
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  // New requests are refused while draining (or the server is already gone).
  const Outcome late = Generate(*stub, Greedy("late", 4));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  for (auto& t : clients) t.join();
  for (const Outcome& o : outcomes) {
    EXPECT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.finish, expected_finish);
  }
  watch_context.TryCancel();
  EXPECT_EQ(process.WaitExit(), 0) << process.Stderr();
  EXPECT_THAT(process.Stderr(), HasSubstr("SIGTERM: draining"));
}

TEST(StandaloneProcessTest, SigtermDrainLetsRunningRequestsFinish) {
  DrainScenario(/*grace_s=*/60, v1::FINISH_REASON_LENGTH);
}

TEST(StandaloneProcessTest, SigtermDrainAbortsWhatOutlastsTheGracePeriod) {
  DrainScenario(/*grace_s=*/0, v1::FINISH_REASON_ABORT);
}

TEST(StandaloneProcessTest, BadModelExitsWithOneClearLine) {
  StandaloneProcess process({"--model=/nonexistent-model"});
  EXPECT_EQ(process.WaitAddress(), "");
  EXPECT_EQ(process.WaitExit(), 1);
  EXPECT_THAT(process.Stderr(), HasSubstr("cannot load /nonexistent-model"));
}

TEST(StandaloneProcessTest, LogsWhatWasLoadedAndWhere) {
  StandaloneProcess process({"--model=tests/data/tiny-lite"});
  ASSERT_FALSE(process.WaitAddress().empty()) << process.Stderr();
  process.Signal(SIGINT);
  EXPECT_EQ(process.WaitExit(), 0);
  const std::string log = process.Stderr();
  EXPECT_THAT(log, HasSubstr("loaded tests/data/tiny-lite: 3 layers"));
  EXPECT_THAT(log, HasSubstr("reading weights: 100.0%"));
  EXPECT_THAT(log, HasSubstr("serving tests/data/tiny-lite on 127.0.0.1:"));
  EXPECT_THAT(log, HasSubstr("SIGINT: draining"));
}

// `dsv2 client` against the server prints what `dsv2 generate` prints for
// the same request flags: text for a prompt, ids for token ids.
std::string RunTool(const std::string& args) {
  const std::string command = std::string(DSV2_BINARY) + " " + args + " 2>/dev/null";
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  EXPECT_EQ(pclose(pipe), 0) << command;
  return out;
}

// dsv2 generate computes the experts in-process in f32; the server's data
// plane is f32 by default, so its numbers are the same bit for bit.
TEST(StandaloneProcessTest, ClientPrintsWhatGeneratePrints) {
  StandaloneProcess process({"--model=tests/data/tiny-v2"});
  const std::string address = process.WaitAddress();
  ASSERT_FALSE(address.empty()) << process.Stderr();
  for (const std::string request :
       {"--prompt 'The cat sat on' --max-tokens 24", "--prompt 'Hello there' --chat --max-tokens 16",
        "--tokens 0,40,41,42 --max-tokens 12 --ignore-eos",
        "--prompt 'Sample me' --temperature 0.7 --top-p 0.9 --top-k 40 --seed 5 --max-tokens 20",
        "--tokens 0,40,41 --max-tokens 8 --ignore-eos --logit-bias 7:100 --logit-bias 40:-3.5"}) {
    const std::string local = RunTool("generate --model tests/data/tiny-v2 " + request);
    const std::string remote = RunTool("client --addr " + address + " " + request);
    EXPECT_FALSE(local.empty()) << request;
    EXPECT_EQ(remote, local) << request;
  }
  process.Signal(SIGTERM);
  EXPECT_EQ(process.WaitExit(), 0);
}

// One HTTP exchange on a new connection to 127.0.0.1:`port`: `request`
// sent whole (or as far as the server takes it), then everything until the
// server closes or `timeout` passes.
std::string HttpExchange(int port, const std::string& request,
                         std::chrono::milliseconds timeout = 10s) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    const auto end = std::chrono::steady_clock::now() + timeout;
    char buffer[8192];
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
  }
  close(fd);
  return out;
}

std::string HttpPost(int port, const std::string& path, const std::string& body) {
  return HttpExchange(port, "POST " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            "Content-Type: application/json\r\nContent-Length: " +
                                std::to_string(body.size()) + "\r\n\r\n" + body);
}

// The JSON body of a complete (Content-Length) HTTP response.
nlohmann::json JsonBody(const std::string& response) {
  const size_t start = response.find("\r\n\r\n");
  if (start == std::string::npos) return nullptr;
  return nlohmann::json::parse(response.substr(start + 4), nullptr, false);
}

std::vector<int32_t> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  std::istringstream in(text);
  int32_t id;
  while (in >> id) ids.push_back(id);
  return ids;
}

// The same greedy request through the HTTP API, gRPC (`dsv2 client`) and
// in process (`dsv2 generate`) gives the same tokens and text.
TEST(StandaloneProcessTest, HttpGrpcAndGenerateGiveTheSameTokens) {
  StandaloneProcess process({"--model=tests/data/tiny-v2", "--data_plane_dtype=f32"});
  const std::string address = process.WaitAddress();
  ASSERT_FALSE(address.empty()) << process.Stderr();
  const int http = process.HttpPort();
  ASSERT_GT(http, 0);
  const std::vector<int32_t> local =
      ParseIds(RunTool("generate --model tests/data/tiny-v2 --tokens 0,40,41,42 --max-tokens 12 "
                       "--ignore-eos"));
  const std::vector<int32_t> grpc =
      ParseIds(RunTool("client --addr " + address + " --tokens 0,40,41,42 --max-tokens 12 --ignore-eos"));
  const nlohmann::json response = JsonBody(HttpPost(
      http, "/v1/completions",
      R"({"prompt": [0, 40, 41, 42], "max_tokens": 12, "temperature": 0, "ignore_eos": true,
          "logprobs": 0, "return_tokens_as_token_ids": true})"));
  ASSERT_TRUE(response.is_object()) << process.Stderr();
  std::vector<int32_t> via_http;
  for (const auto& token : response["choices"][0]["logprobs"]["tokens"]) {
    via_http.push_back(std::stoi(token.get<std::string>().substr(9)));
  }
  EXPECT_EQ(local.size(), 12u);
  EXPECT_EQ(grpc, local);
  EXPECT_EQ(via_http, local);

  const std::string text = RunTool("generate --model tests/data/tiny-v2 --prompt 'The cat sat on' "
                                   "--max-tokens 24");
  const nlohmann::json text_response = JsonBody(HttpPost(
      http, "/v1/completions", R"({"prompt": "The cat sat on", "max_tokens": 24, "temperature": 0})"));
  ASSERT_TRUE(text_response.is_object());
  EXPECT_EQ(text_response["choices"][0]["text"].get<std::string>(), text);
  const std::string chat = RunTool(
      "generate --model tests/data/tiny-v2 --prompt 'Hello there' --chat --max-tokens 16");
  const nlohmann::json chat_response = JsonBody(HttpPost(
      http, "/v1/chat/completions",
      R"({"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16,
          "temperature": 0})"));
  ASSERT_TRUE(chat_response.is_object());
  EXPECT_EQ(chat_response["choices"][0]["message"]["content"].get<std::string>(), chat);
  process.Signal(SIGTERM);
  EXPECT_EQ(process.WaitExit(), 0);
}

// The HTTP port (the project rule: every port gets a hostile test): garbage,
// an oversized body, malformed JSON, wrong types, unknown fields with bad
// values, a client that stops reading mid-stream and one that trickles its
// request; nothing dies, the others are served, threads stay bounded, and
// the same greedy tokens come out after.
TEST(StandaloneProcessTest, TheHttpPortTakesHostileClients) {
  StandaloneProcess process({"--model=tests/data/tiny-v2", "--http_read_timeout_s=1",
                             "--http_max_connections=8", "--http_max_body_mib=1"});
  const std::string address = process.WaitAddress();
  ASSERT_FALSE(address.empty()) << process.Stderr();
  const int http = process.HttpPort();
  const std::string greedy =
      R"({"prompt": [0, 40, 41], "max_tokens": 8, "temperature": 0, "ignore_eos": true})";
  const nlohmann::json before = JsonBody(HttpPost(http, "/v1/completions", greedy));
  ASSERT_TRUE(before.is_object());

  // A client that starts a long stream and never reads, and one that
  // trickles its head: they hold a connection each while others are served.
  const int stalled = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in target{};
  target.sin_family = AF_INET;
  target.sin_port = htons(static_cast<uint16_t>(http));
  inet_pton(AF_INET, "127.0.0.1", &target.sin_addr);
  ASSERT_EQ(connect(stalled, reinterpret_cast<sockaddr*>(&target), sizeof(target)), 0);
  const std::string stream_body =
      R"({"prompt": [0, 40, 41], "max_tokens": 100, "ignore_eos": true, "stream": true, "logprobs": 20})";
  const std::string stream_request =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
      std::to_string(stream_body.size()) + "\r\n\r\n" + stream_body;
  send(stalled, stream_request.data(), stream_request.size(), MSG_NOSIGNAL);
  std::thread slowloris([http] {
    HttpExchange(http, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
                 3s);
  });
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join_slowloris{slowloris};

  std::mt19937 rng(7);
  std::vector<std::pair<std::string, std::string>> attacks = {  // request, expected status line
      {std::string(16, '\xff'), ""},
      {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ""},
      {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
       "HTTP/1.1 413"},
      {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{\"prompt\"",
       "HTTP/1.1 400"},
      {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\n"
       "{\"prompt\": \"x\", \"max_tokens\": []}",
       "HTTP/1.1 400"},
      {"GET /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404"},
  };
  for (int i = 0; i < 10; ++i) {
    std::string bytes(1 + rng() % 3000, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    attacks.emplace_back(bytes, "");
  }
  for (const auto& [request, expected] : attacks) {
    const std::string answer = HttpExchange(http, request, 5s);
    if (!expected.empty()) {
      EXPECT_EQ(answer.substr(0, expected.size()), expected) << request.substr(0, 60);
      const nlohmann::json body = JsonBody(answer);
      EXPECT_TRUE(body.is_object() && body.contains("error") && body["error"].contains("message") &&
                  body["error"].contains("type") && body["error"].contains("param") &&
                  body["error"].contains("code"))
          << answer;
    }
  }
  // Unknown fields, whatever their values, are ignored.
  const nlohmann::json unknown = JsonBody(HttpPost(
      http, "/v1/completions",
      R"({"prompt": [0, 40, 41], "max_tokens": 8, "temperature": 0, "ignore_eos": true,
          "frobnicate": {"deep": [[[1e308, null, "\u0000"]]]}, "user": 17, "priority": "high"})"));
  ASSERT_TRUE(unknown.is_object());
  EXPECT_EQ(unknown["choices"][0]["text"], before["choices"][0]["text"]);

  slowloris.join();
  close(stalled);
  EXPECT_EQ(JsonBody(HttpPost(http, "/v1/completions", greedy))["choices"][0]["text"],
            before["choices"][0]["text"]);
  EXPECT_THAT(HttpExchange(http, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
              ::testing::StartsWith("HTTP/1.1 200"));
  // Threads stay bounded: the connection threads never pass --http_max_connections.
  const std::string status_path = "/proc/" + std::to_string(process.pid()) + "/status";
  std::ifstream status(status_path);
  std::string line;
  int threads = 0;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) threads = std::stoi(line.substr(8));
  }
  EXPECT_GT(threads, 0);
  EXPECT_LT(threads, 200) << "a thread per attack?";
  EXPECT_TRUE(process.WaitExit(0s) == -1) << "the server died: " << process.Stderr();
  process.Signal(SIGTERM);
  EXPECT_EQ(process.WaitExit(), 0) << process.Stderr();
}

// Hostile model directories at start-up: one clear line, exit 1, no hang.
TEST(StandaloneProcessTest, HostileModelFilesExitWithTheCause) {
  const std::string fifo_dir = testutil::CopyModel("tests/data/tiny-lite", "standalone_fifo");
  std::filesystem::remove(fifo_dir + "/model.safetensors");
  ASSERT_EQ(mkfifo((fifo_dir + "/model.safetensors").c_str(), 0600), 0);
  const std::string nan_dir = testutil::CopyModel("tests/data/tiny-lite", "standalone_nan_router");
  testutil::PoisonBf16(nan_dir, "model.layers.1.mlp.gate.weight", 0);
  const std::string layers_dir = testutil::CopyModel("tests/data/tiny-lite", "standalone_layers");
  testutil::SetConfigField(layers_dir, "num_hidden_layers", 1000000);
  struct Case {
    std::vector<std::string> args;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {{"--model=" + fifo_dir},
            "dsv2-standalone: cannot load " + fifo_dir + ": " + fifo_dir +
                "/model.safetensors is a FIFO (named pipe), not a regular file\n"},
           {{"--model=" + nan_dir},
            "dsv2-standalone: cannot load " + nan_dir +
                ": tensor 'model.layers.1.mlp.gate.weight' in " + nan_dir +
                "/model.safetensors holds a non-finite value (nan) at [0, 0]; the weights "
                "are corrupt\n"},
           {{"--model=" + layers_dir},
            "dsv2-standalone: cannot load " + layers_dir + ": " + layers_dir +
                "/config.json: config field 'num_hidden_layers' = 1000000 is out of range [1, "
                "512]\n"},
           {{"--model=tests/data/tiny-lite", "--weight_check=maybe"},
            "dsv2-standalone: cannot load tests/data/tiny-lite: --weight_check must be off, cheap "
            "or "
            "full, not 'maybe'\n"},
       }) {
    StandaloneProcess process(c.args);
    EXPECT_EQ(process.WaitAddress(), "");
    EXPECT_EQ(process.WaitExit(), 1) << c.expected;
    EXPECT_EQ(process.Stderr(), c.expected);
  }
}

// Weights whose NaN the load-time check is told to skip reach the routers:
// the request fails with the real cause (it used to be "experts [0, 4) have
// no reachable expert worker", UNAVAILABLE, with the server carrying on),
// and the server goes NOT_SERVING and exits 1 logging the cause.
TEST(StandaloneProcessTest, NonFiniteRouterScoresAreFatalWithTheCause) {
  const std::string dir = testutil::CopyModel("tests/data/tiny-v2", "standalone_nan_embed");
  testutil::PoisonBf16(dir, "model.embed_tokens.weight", 0);  // Token 0, the prompt's first.
  StandaloneProcess process({"--model=" + dir, "--weight_check=off"});
  const std::string address = process.WaitAddress();
  ASSERT_FALSE(address.empty()) << process.Stderr();
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  const Outcome outcome = Generate(*stub, Greedy("nan", 4));
  EXPECT_FALSE(outcome.status.ok());
  EXPECT_EQ(outcome.tokens, 0u);
  EXPECT_THAT(outcome.status.error_message(),
              HasSubstr("layer 1: non-finite router scores for token 0"));
  EXPECT_THAT(outcome.status.error_message(), ::testing::Not(HasSubstr("reachable")));
  EXPECT_EQ(process.WaitExit(), 1);
  EXPECT_THAT(process.Stderr(),
              HasSubstr("fatal engine error: INTERNAL: layer 1: non-finite router scores for token "
                        "0 (expert 0 is nan)"));
}

}  // namespace
}  // namespace dsv2
