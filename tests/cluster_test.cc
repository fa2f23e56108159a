// The disaggregated cluster as processes on loopback: dsv2-controller,
// dsv2-expert workers, dsv2-attention workers and dsv2-router, started by
// tests/cluster_process.h. Greedy outputs through the router must equal
// dsv2-standalone's token for token, through expert worker deaths (with and
// without replicas), a controller restart, malformed data-plane messages
// and client cancellation.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/mutex.h"
#include "common/cluster/control_client.h"
#include "common/model/config.h"
#include "common/rpc/tls.h"
#include "common/transport/frame.h"
#include "common/transport/message.h"
#include "common/transport/transport.h"
#include "common/transport/ucx_transport.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cluster_process.h"
#include "tests/generation_test_util.h"

namespace dsv2 {
namespace {

using ::dsv2::testutil::ChildProcess;
using ::dsv2::testutil::Cluster;
using ::dsv2::testutil::FindWorker;
using ::dsv2::testutil::GetClusterMap;
using ::dsv2::testutil::GetLoad;
using ::dsv2::testutil::HealthOf;
using ::dsv2::testutil::WaitFor;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::grpc::health::v1::HealthCheckResponse;
using namespace std::chrono_literals;

constexpr char kTinyV2[] = "tests/data/tiny-v2";
constexpr char kTinyLite[] = "tests/data/tiny-lite";

const testutil::ClusterBinaries kBinaries = {
    .controller = DSV2_CONTROLLER,
    .expert = DSV2_EXPERT,
    .attention = DSV2_ATTENTION,
    .router = DSV2_ROUTER,
};

// The prompts every test draws from: different lengths (2 to 23 tokens), so
// prefill chunks and decode steps of different sequences share batches.
constexpr int kPrompts = 8;
// The reference length; every request's output is a prefix of it (greedy,
// ignore_eos). Prompt + output fits the tiny models' 128 positions.
constexpr uint32_t kLongTokens = 100;

std::vector<int32_t> Prompt(int index) {
  std::vector<int32_t> ids;
  const int length = 2 + 3 * (index % kPrompts);
  for (int j = 0; j < length; ++j) ids.push_back(2 + (5 + 37 * index + 101 * j) % 3100);
  return ids;
}

v1::GenerateRequest Greedy(const std::string& id, int prompt, uint32_t max_tokens) {
  return testutil::Greedy(id, Prompt(prompt), max_tokens);
}

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> tokens;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  std::chrono::duration<double> elapsed{};
};

// One Generate call to its end. `on_tokens` is told the number of tokens so
// far after every response.
Outcome Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                 std::chrono::seconds deadline,
                 const std::function<void(size_t)>& on_tokens = nullptr) {
  const auto start = std::chrono::steady_clock::now();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  Outcome outcome;
  while (reader->Read(&response)) {
    if (response.has_chunk()) {
      outcome.tokens.insert(outcome.tokens.end(), response.chunk().token_ids().begin(),
                            response.chunk().token_ids().end());
    }
    if (response.has_complete()) {
      outcome.tokens.insert(outcome.tokens.end(), response.complete().token_ids().begin(),
                            response.complete().token_ids().end());
      outcome.finish = response.complete().finish_reason();
    }
    if (on_tokens) on_tokens(outcome.tokens.size());
  }
  outcome.status = reader->Finish();
  outcome.elapsed = std::chrono::steady_clock::now() - start;
  return outcome;
}

// Concurrent Generate calls, one thread each, started at construction.
class Traffic {
 public:
  Traffic(std::shared_ptr<grpc::Channel> channel, std::vector<v1::GenerateRequest> requests,
          std::chrono::seconds deadline = 30s)
      : requests_(std::move(requests)),
        stub_(v1::Generation::NewStub(std::move(channel))),
        outcomes_(requests_.size()),
        tokens_(requests_.size(), 0),
        ended_(requests_.size(), false) {
    for (size_t i = 0; i < requests_.size(); ++i) {
      threads_.emplace_back([this, i, deadline] {
        outcomes_[i] = Generate(*stub_, requests_[i], deadline, [&](size_t n) {
          MutexLock lock(&mutex_);
          tokens_[i] = n;
        });
        MutexLock lock(&mutex_);
        ended_[i] = true;
      });
    }
  }
  ~Traffic() { Join(); }

  // Waits until every call has received `tokens` tokens or ended.
  bool WaitTokens(size_t tokens, std::chrono::milliseconds timeout = 30s)
      ABSL_LOCKS_EXCLUDED(mutex_) {
    MutexLock lock(&mutex_);
    const auto reached = [this, tokens]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      for (size_t i = 0; i < tokens_.size(); ++i) {
        if (!ended_[i] && tokens_[i] < tokens) return false;
      }
      return true;
    };
    return mutex_.AwaitWithTimeout(absl::Condition(&reached), absl::FromChrono(timeout));
  }

  const std::vector<Outcome>& Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    return outcomes_;
  }
  const std::vector<v1::GenerateRequest>& requests() const { return requests_; }

 private:
  const std::vector<v1::GenerateRequest> requests_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  // Outcome i is written by call i's thread alone, and read after Join.
  std::vector<Outcome> outcomes_;
  Mutex mutex_;  // WaitTokens waits on it.
  std::vector<size_t> tokens_ ABSL_GUARDED_BY(mutex_);
  std::vector<bool> ended_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::thread> threads_;
};

// `count` requests over the prompts, request i on prompt i % kPrompts with
// max_tokens base + i % 5 (different lengths end at different steps).
std::vector<v1::GenerateRequest> Requests(const std::string& prefix, int count, uint32_t base) {
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < count; ++i) {
    requests.push_back(Greedy(prefix + std::to_string(i), i % kPrompts,
                              std::min<uint32_t>(kLongTokens, base + i % 5)));
  }
  return requests;
}

int PromptOf(const v1::GenerateRequest& request) {
  for (int p = 0; p < kPrompts; ++p) {
    const std::vector<int32_t> ids = Prompt(p);
    if (std::equal(ids.begin(), ids.end(), request.token_ids().ids().begin(),
                   request.token_ids().ids().end())) {
      return p;
    }
  }
  return -1;
}

// dsv2-standalone's greedy outputs of kLongTokens for every prompt, with
// default flags, checked against `dsv2 generate`'s (exact by default: the
// cluster, the standalone server and the tool give the same tokens).
struct Reference {
  std::vector<std::vector<int32_t>> outputs;  // By prompt.
  std::string error;                          // Why there are none.
};

Reference ComputeReference(const std::string& model) {
  const std::string dir = testutil::NewTestDir("reference");
  Reference reference;
  {
    ChildProcess standalone("standalone", dir, DSV2_STANDALONE,
                            {"--model=" + model, "--listen=127.0.0.1:0", "--kv_cache_mib=4",
                             "--http_listen="});
    if (!standalone.WaitPort()) {
      reference.error = "dsv2-standalone did not start: " + standalone.Log();
      return reference;
    }
    std::vector<v1::GenerateRequest> requests;
    for (int p = 0; p < kPrompts; ++p) {
      requests.push_back(Greedy("reference" + std::to_string(p), p, kLongTokens));
    }
    Traffic traffic(grpc::CreateChannel(standalone.address(), grpc::InsecureChannelCredentials()),
                    requests);
    for (const Outcome& o : traffic.Join()) {
      if (!o.status.ok() || o.tokens.size() != kLongTokens) {
        reference.error =
            "dsv2-standalone failed: " + o.status.error_message() + "\n" + standalone.Log();
        return reference;
      }
      reference.outputs.push_back(o.tokens);
    }
  }
  for (int p = 0; p < kPrompts; ++p) {
    const std::string command = absl::StrCat(
        DSV2_BINARY, " generate --model ", model, " --tokens ", absl::StrJoin(Prompt(p), ","),
        " --max-tokens ", kLongTokens, " --ignore-eos 2>/dev/null");
    FILE* pipe = popen(command.c_str(), "r");
    std::vector<int32_t> tokens;
    int32_t token;
    while (pipe != nullptr && fscanf(pipe, "%d", &token) == 1) tokens.push_back(token);
    const int code = pipe != nullptr ? pclose(pipe) : -1;
    if (code != 0 || tokens != reference.outputs[p]) {
      reference.error = absl::StrCat("dsv2-standalone's tokens for prompt ", p,
                                     " differ from `", command, "` (exit ", code, ")");
      return reference;
    }
  }
  std::filesystem::remove_all(dir);
  return reference;
}

// The reference of `model`, computed once per process on a thread of its
// own: ask early, so that it runs while a cluster starts.
std::shared_future<Reference> StandaloneOutputs(const std::string& model) {
  static Mutex mutex;
  static std::map<std::string, std::shared_future<Reference>> cache;
  MutexLock lock(&mutex);
  auto [it, added] = cache.try_emplace(model);
  if (added) it->second = std::async(std::launch::async, ComputeReference, model).share();
  return it->second;
}

// Every outcome succeeded with finish LENGTH and the standalone's tokens.
void ExpectStandaloneOutputs(const std::vector<Outcome>& outcomes,
                             const std::vector<v1::GenerateRequest>& requests,
                             const std::shared_future<Reference>& reference) {
  const Reference& ref = reference.get();
  ASSERT_TRUE(ref.error.empty()) << ref.error;
  ASSERT_EQ(outcomes.size(), requests.size());
  for (size_t i = 0; i < outcomes.size(); ++i) {
    const Outcome& o = outcomes[i];
    const v1::GenerateRequest& request = requests[i];
    ASSERT_TRUE(o.status.ok()) << request.request_id() << ": " << o.status.error_code() << " "
                               << o.status.error_message();
    EXPECT_EQ(o.finish, v1::FINISH_REASON_LENGTH) << request.request_id();
    const int prompt = PromptOf(request);
    ASSERT_GE(prompt, 0);
    const std::vector<int32_t>& full = ref.outputs[prompt];
    const std::vector<int32_t> expected(full.begin(),
                                        full.begin() + request.stopping().max_tokens());
    EXPECT_EQ(o.tokens, expected) << request.request_id() << " (prompt " << prompt << ")";
  }
}

// Runs `requests` through the router and checks them against the reference.
void ExpectRouterServesStandaloneOutputs(Cluster& cluster,
                                         const std::vector<v1::GenerateRequest>& requests,
                                         const std::shared_future<Reference>& reference) {
  Traffic traffic(cluster.RouterChannel(), requests);
  ExpectStandaloneOutputs(traffic.Join(), requests, reference);
}

internal::Load LoadOf(Cluster& cluster, ChildProcess& attention) {
  internal::Load load;
  const grpc::Status status = cluster.Load(attention, &load);
  EXPECT_TRUE(status.ok()) << attention.name() << ": " << status.error_message();
  return load;
}

// Every running attention worker soon holds no request and every KV block is
// free or only cached.
void ExpectAllBlocksReturned(Cluster& cluster) {
  for (int i = 0; i < cluster.num_attention(); ++i) {
    ChildProcess& worker = cluster.attention(i);
    if (!worker.running()) continue;
    internal::Load load;
    const bool idle = WaitFor(
        [&] {
          return cluster.Load(worker, &load).ok() && load.running() == 0 &&
                 load.waiting() == 0 &&
                 load.kv_blocks_free() + load.kv_blocks_cached() == load.kv_blocks_total();
        },
        5s);
    EXPECT_TRUE(idle) << worker.name() << ": " << load.DebugString();
    EXPECT_GT(load.kv_blocks_total(), 0);
  }
}

// Every process of the cluster but those named in `dead` is still running.
void ExpectAllAliveBut(Cluster& cluster, const std::set<std::string>& dead) {
  for (ChildProcess* p : cluster.All()) {
    if (dead.contains(p->name())) {
      EXPECT_FALSE(p->running()) << p->Describe();
    } else {
      EXPECT_TRUE(p->running()) << p->Describe() << "\n" << p->Log();
    }
  }
}

int64_t ConfigValue(const std::string& model, const std::string& field) {
  std::ifstream in(model + "/config.json");
  return nlohmann::json::parse(in).at(field).get<int64_t>();
}

// ---------------------------------------------------------------------------
// Greedy outputs equal dsv2-standalone's, per model, topology and
// micro-batching.

struct Topology {
  const char* model;
  int attention;
  int experts;
  int micro_batches;
};

void PrintTo(const Topology& t, std::ostream* os) {
  *os << t.model << " " << t.attention << "A" << t.experts << "E mb" << t.micro_batches;
}

class ClusterOutputsTest : public ::testing::TestWithParam<Topology> {};

TEST_P(ClusterOutputsTest, GreedyOutputsEqualStandalone) {
  const Topology& t = GetParam();
  const std::shared_future<Reference> reference = StandaloneOutputs(t.model);
  Cluster cluster({.binaries = kBinaries,
                   .model = t.model,
                   .attention = t.attention,
                   .experts = t.experts,
                   .attention_flags = {"--micro_batches=" + std::to_string(t.micro_batches)}});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());

  ExpectRouterServesStandaloneOutputs(cluster, Requests("r", 2 * kPrompts, 12), reference);
  // The request's sampling fields reach the worker: a logit bias of 100
  // forces its token.
  v1::GenerateRequest biased = Greedy("biased", 0, 5);
  (*biased.mutable_sampling()->mutable_logit_bias())[9] = 100;
  const Outcome forced = Generate(*v1::Generation::NewStub(cluster.RouterChannel()), biased, 60s);
  ASSERT_TRUE(forced.status.ok()) << forced.status.error_message();
  EXPECT_EQ(forced.tokens, std::vector<int32_t>(5, 9));
  for (int i = 0; i < cluster.num_attention(); ++i) {
    const internal::Load load = LoadOf(cluster, cluster.attention(i));
    // The router spread the requests, and each worker's MoE layers really
    // went over the data plane.
    EXPECT_GT(load.generation_tokens(), 0) << cluster.attention(i).name();
    EXPECT_GT(load.data_plane().tokens(), 0) << cluster.attention(i).name();
    EXPECT_GT(load.data_plane().bytes_sent(), 0) << cluster.attention(i).name();
    EXPECT_EQ(load.data_plane().failures(), 0) << cluster.attention(i).name();
  }
  ExpectAllBlocksReturned(cluster);
  ExpectAllAliveBut(cluster, {});
}

std::string TopologyName(const ::testing::TestParamInfo<Topology>& info) {
  const Topology& t = info.param;
  return std::string(t.model == kTinyV2 ? "TinyV2" : "TinyLite") + "_" +
         std::to_string(t.attention) + "Attention" + std::to_string(t.experts) +
         "Experts_MicroBatches" + std::to_string(t.micro_batches);
}

const Topology kTopologies[] = {
    {kTinyV2, 1, 2, 1},   {kTinyV2, 1, 2, 2},   {kTinyV2, 2, 3, 1},   {kTinyV2, 2, 3, 2},
    {kTinyLite, 1, 2, 1}, {kTinyLite, 1, 2, 2}, {kTinyLite, 2, 3, 1}, {kTinyLite, 2, 3, 2},
};

INSTANTIATE_TEST_SUITE_P(Topologies, ClusterOutputsTest, ::testing::ValuesIn(kTopologies),
                         TopologyName);

// A TLS cluster seals its data plane unless the controller is told not to;
// either way it serves the same outputs.
TEST(ClusterTest, DataPlaneSealingFollowsTheControllerFlag) {
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  for (const bool seal : {true, false}) {
    SCOPED_TRACE(seal ? "sealed" : "plaintext");
    Cluster cluster(
        {.binaries = kBinaries,
         .model = kTinyV2,
         .controller_flags = {std::string("--seal_data_plane=") + (seal ? "true" : "false")}});
    ASSERT_TRUE(cluster.Start());
    ASSERT_TRUE(cluster.WaitReady());
    ExpectRouterServesStandaloneOutputs(cluster, Requests("r", kPrompts, 8), reference);
    for (ChildProcess* worker : cluster.Workers()) {
      const std::string log = worker->Log(1 << 20);
      EXPECT_EQ(absl::StrContains(log, "data plane: frames sealed with the key of epoch"), seal)
          << worker->name();
      EXPECT_EQ(absl::StrContains(log, "data plane: plaintext frames"), !seal) << worker->name();
    }
  }
}

// ---------------------------------------------------------------------------

// With one expert worker per routing group, group-limited routing reaches at
// most topk_group workers per token (and, in practice, more than one).
TEST(ClusterTest, TokensReachAtMostTopkGroupWorkers) {
  const int64_t groups = ConfigValue(kTinyV2, "n_group");
  const int64_t topk_group = ConfigValue(kTinyV2, "topk_group");
  ASSERT_GT(topk_group, 1);
  ASSERT_GT(groups, topk_group);
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster({.binaries = kBinaries,
                   .model = kTinyV2,
                   .attention = 2,
                   .experts = static_cast<int>(groups)});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());

  ExpectRouterServesStandaloneOutputs(cluster, Requests("r", kPrompts, 16), reference);
  // Each worker also directly, so that each has traffic whatever the router chose.
  for (int i = 0; i < cluster.num_attention(); ++i) {
    Traffic direct(grpc::CreateChannel(cluster.attention(i).address(), cluster.RouterCredentials()),
                   Requests("d", kPrompts, 8));
    ExpectStandaloneOutputs(direct.Join(), direct.requests(), reference);
  }
  for (int i = 0; i < cluster.num_attention(); ++i) {
    const internal::DataPlaneStats stats = LoadOf(cluster, cluster.attention(i)).data_plane();
    SCOPED_TRACE(cluster.attention(i).name() + ": " + stats.DebugString());
    EXPECT_GT(stats.tokens(), 0);
    EXPECT_LE(stats.max_workers_per_token(), topk_group);
    EXPECT_GT(stats.max_workers_per_token(), 1);
    EXPECT_LE(stats.token_workers(), stats.tokens() * topk_group);
    EXPECT_GT(stats.token_workers(), stats.tokens());
  }
  ExpectAllAliveBut(cluster, {});
}

// With two replicas of every group, a SIGKILLed expert worker costs no
// request: its rows go to the replicas, outputs stay the same.
TEST(ClusterTest, ReplicasServeThroughExpertWorkerKill) {
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster(
      {.binaries = kBinaries, .model = kTinyV2, .attention = 1, .experts = 3, .replicas = 2});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());

  {
    Traffic traffic(cluster.RouterChannel(), Requests("long", kPrompts, kLongTokens));
    ASSERT_TRUE(traffic.WaitTokens(4));
    cluster.expert(1).Kill(SIGKILL);
    ExpectStandaloneOutputs(traffic.Join(), traffic.requests(), reference);
  }
  // The lease lapses: the map says so, and is still complete.
  internal::ClusterMap map;
  EXPECT_TRUE(WaitFor(
      [&] {
        if (!cluster.GetMap(&map).ok()) return false;
        const internal::Worker* w = FindWorker(map, "expert-2");
        return w != nullptr && w->state() == internal::WORKER_STATE_DEAD;
      },
      10s))
      << map.DebugString();
  EXPECT_TRUE(map.complete());
  ASSERT_TRUE(cluster.WaitReady());
  ExpectRouterServesStandaloneOutputs(cluster, Requests("after", kPrompts, 16), reference);

  const internal::DataPlaneStats stats = LoadOf(cluster, cluster.attention(0)).data_plane();
  EXPECT_GT(stats.resends(), 0) << stats.DebugString();
  EXPECT_EQ(stats.failures(), 0) << stats.DebugString();
  ExpectAllBlocksReturned(cluster);
  ExpectAllAliveBut(cluster, {"expert-2"});
}

// Every server binary parses its command line first: --check_flags reports
// and exits 0 (what the Helm chart's test runs), an unknown flag, a
// malformed value, a stray argument or a malformed --advertise ends it with
// one line naming the problem, before it starts anything; so does a
// --backend the process cannot compute on.
TEST(ClusterTest, ServerBinariesCheckTheirFlagsBeforeStartingAnything) {
  const std::string dir = testutil::NewTestDir("flags");
  struct Case {
    std::string binary;
    std::vector<std::string> args;
    int exit_code;
    std::string says;
  };
  std::vector<Case> cases;
  for (const std::string& binary : {kBinaries.controller, kBinaries.expert, kBinaries.attention,
                                   kBinaries.router, std::string(DSV2_STANDALONE)}) {
    cases.push_back({binary, {"--check_flags", "--listen=0.0.0.0:50051"}, 0, "flags ok"});
    cases.push_back({binary, {"--check_flags", "--lisen=0.0.0.0:1"}, 1, "lisen"});
    cases.push_back({binary, {"--check_flags", "--metrics_tls=maybe"}, 1, "metrics_tls"});
    cases.push_back({binary, {"--check_flags", "stray"}, 2, "unexpected argument 'stray'"});
  }
  for (const std::string& binary : {kBinaries.expert, kBinaries.attention}) {
    cases.push_back({binary,
                     {"--model=" + std::string(kTinyV2), "--controller=127.0.0.1:1", "--insecure",
                      "--advertise=:5"},
                     2, "--advertise ':5' is not HOST or HOST:PORT"});
  }
  const std::string bad_backend = "--backend: unknown backend 'tpu' (cpu or cuda)";
  for (const std::string& binary : {kBinaries.expert, kBinaries.attention}) {
    cases.push_back({binary,
                     {"--model=" + std::string(kTinyV2), "--controller=127.0.0.1:1", "--insecure",
                      "--backend=tpu"},
                     1, bad_backend});
  }
  cases.push_back({DSV2_STANDALONE,
                   {"--model=" + std::string(kTinyV2), "--insecure", "--listen=127.0.0.1:0",
                    "--backend=tpu"},
                   1, bad_backend});
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.binary + " " + absl::StrJoin(c.args, " "));
    ChildProcess process("flags-" + std::to_string(n++), dir, c.binary, c.args, /*port_file=*/false);
    const std::optional<int> status = process.WaitExit(30s);
    ASSERT_TRUE(status.has_value()) << process.Describe();
    EXPECT_TRUE(WIFEXITED(*status)) << process.Describe();
    EXPECT_EQ(WEXITSTATUS(*status), c.exit_code) << process.Log();
    EXPECT_THAT(process.Log(), HasSubstr(c.says));
  }
}

// A rolling restart of the expert workers the way a StatefulSet's
// RollingUpdate does it (docs/kubernetes.md): highest ordinal first, one at a
// time, each SIGTERMed — it leaves the placement and keeps answering for
// --drain_s — and replaced by a new process with the same id, ready before
// the next. With two replicas of every group no request fails, under
// traffic all along, and every output is standalone's.
TEST(ClusterTest, RollingRestartOfExpertWorkersWithReplicasFailsNoRequest) {
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster({.binaries = kBinaries,
                   .model = kTinyV2,
                   .attention = 1,
                   .experts = 3,
                   .replicas = 2,
                   .expert_flags = {"--drain_s=0.5"}});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  for (int i = cluster.num_experts(); i >= 1; --i) {
    const std::string id = "expert-" + std::to_string(i);
    SCOPED_TRACE(id);
    Traffic traffic(cluster.RouterChannel(), Requests("wave-" + id, kPrompts, kLongTokens));
    ASSERT_TRUE(traffic.WaitTokens(2));
    ChildProcess& old = cluster.expert(i - 1);
    ASSERT_EQ(old.name(), id);
    old.Kill(SIGTERM);
    const std::optional<int> status = old.WaitExit(30s);
    ASSERT_TRUE(status && WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << old.Describe();
    ASSERT_TRUE(cluster.AddExpert(id));
    ASSERT_TRUE(cluster.WaitReady()) << cluster.Logs();
    ExpectStandaloneOutputs(traffic.Join(), traffic.requests(), reference);
  }
  internal::ClusterMap map;
  ASSERT_TRUE(cluster.GetMap(&map).ok());
  EXPECT_TRUE(map.complete());
  EXPECT_EQ(map.expert_slots_size(), 3) << map.DebugString();
  const internal::DataPlaneStats stats = LoadOf(cluster, cluster.attention(0)).data_plane();
  EXPECT_EQ(stats.failures(), 0) << stats.DebugString();
  ExpectAllBlocksReturned(cluster);
}

// With two replicas of every group, an expert worker that hangs (SIGSTOP)
// costs no request either: its attempts time out after a few of its usual
// answer times, its rows go to the replicas, and it is reported to the
// controller, whose map takes it out. When it resumes it serves again.
TEST(ClusterTest, ReplicasServeThroughAHungExpertWorker) {
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster(
      {.binaries = kBinaries, .model = kTinyV2, .attention = 1, .experts = 3, .replicas = 2});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  {
    Traffic traffic(cluster.RouterChannel(), Requests("long", kPrompts, kLongTokens));
    ASSERT_TRUE(traffic.WaitTokens(4));
    cluster.expert(1).Stop();
    ExpectStandaloneOutputs(traffic.Join(), traffic.requests(), reference);
  }
  // Out of everybody's routes: suspect, or dead once its lease lapsed.
  internal::ClusterMap map;
  EXPECT_TRUE(WaitFor(
      [&] {
        if (!cluster.GetMap(&map).ok()) return false;
        const internal::Worker* w = FindWorker(map, "expert-2");
        return w != nullptr && (w->suspect() || w->state() == internal::WORKER_STATE_DEAD);
      },
      10s))
      << map.DebugString();
  EXPECT_TRUE(map.complete());
  const internal::DataPlaneStats stats = LoadOf(cluster, cluster.attention(0)).data_plane();
  EXPECT_GT(stats.attempt_timeouts(), 0) << stats.DebugString();
  EXPECT_EQ(stats.failures(), 0) << stats.DebugString();

  // Resumed, it registers again and takes its units back.
  cluster.expert(1).Continue();
  ASSERT_TRUE(cluster.WaitReady());
  ExpectRouterServesStandaloneOutputs(cluster, Requests("after", kPrompts, 16), reference);
  ExpectAllBlocksReturned(cluster);
  ExpectAllAliveBut(cluster, {});
}

// Without a replica, the requests a hung expert worker holds end
// UNAVAILABLE naming it (not DEADLINE_EXCEEDED) once --expert_timeout_ms
// passes, and health says NOT_SERVING within a second, when its lease lapses.
TEST(ClusterTest, AHungExpertWorkerWithoutReplicaIsUnavailable) {
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster({.binaries = kBinaries,
                   .model = kTinyV2,
                   .attention = 1,
                   .experts = 2,
                   .replicas = 1,
                   .lease_ms = 750,  // The default, which the one-second bound is for.
                   .attention_flags = {"--expert_timeout_ms=2000"}});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  {
    Traffic traffic(cluster.RouterChannel(), Requests("long", kPrompts, kLongTokens), 30s);
    ASSERT_TRUE(traffic.WaitTokens(4));
    cluster.expert(0).Stop();
    const auto stopped = std::chrono::steady_clock::now();
    ASSERT_TRUE(WaitFor(
        [&] { return cluster.Health(cluster.router()) == HealthCheckResponse::NOT_SERVING; },
        10s));
    const auto noticed = std::chrono::steady_clock::now() - stopped;
    EXPECT_LT(noticed, std::chrono::milliseconds(static_cast<int>(1000 * testutil::TimeScale())))
        << "the router said SERVING for "
        << std::chrono::duration_cast<std::chrono::milliseconds>(noticed).count()
        << " ms after the only expert worker of some groups hung";
    EXPECT_TRUE(WaitFor(
        [&] {
          return cluster.Health(cluster.attention(0)) == HealthCheckResponse::NOT_SERVING;
        },
        std::chrono::milliseconds(static_cast<int>(1000 * testutil::TimeScale()))));
    for (const Outcome& o : traffic.Join()) {
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
      EXPECT_NE(o.status.error_message().find("expert worker expert-1"), std::string::npos)
          << o.status.error_message();
      EXPECT_LT(o.elapsed, 10s);
    }
  }
  cluster.expert(0).Continue();
  ASSERT_TRUE(cluster.WaitReady());
  ExpectRouterServesStandaloneOutputs(cluster, Requests("after", kPrompts, 16), reference);
  ExpectAllBlocksReturned(cluster);
}

// Health follows an unusable cluster within a second (default lease): an
// idle expert worker that dies takes the router and the attention worker
// NOT_SERVING, and so does the death of the only attention worker. The
// attention worker says why, in its load report and its log.
TEST(ClusterTest, HealthFollowsAnUnusableClusterWithinASecond) {
  Cluster cluster({.binaries = kBinaries,
                   .model = kTinyV2,
                   .attention = 1,
                   .experts = 2,
                   .replicas = 1,
                   .lease_ms = 750});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  const auto bound = std::chrono::milliseconds(static_cast<int>(1000 * testutil::TimeScale()));
  // How long after `since` `process` stopped saying SERVING.
  auto noticed = [&](testutil::ChildProcess& process, std::chrono::steady_clock::time_point since) {
    EXPECT_TRUE(WaitFor(
        [&] { return cluster.Health(process) != HealthCheckResponse::SERVING; }, 10s));
    return std::chrono::steady_clock::now() - since;
  };
  cluster.expert(1).Kill(SIGKILL);
  auto killed = std::chrono::steady_clock::now();
  EXPECT_LT(noticed(cluster.router(), killed), bound) << "router, expert worker killed";
  EXPECT_LT(noticed(cluster.attention(0), killed), bound) << "attention worker, expert killed";
  internal::Load load;
  ASSERT_TRUE(cluster.Load(cluster.attention(0), &load).ok());
  EXPECT_FALSE(load.serving());
  EXPECT_THAT(load.not_serving_reason(),
              MatchesRegex("cluster map version [0-9]+ is incomplete: experts [0-9]+\\.\\.[0-9]+ "
                           "have no live expert worker \\(expert-2 dead\\).*"));
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string log = cluster.attention(0).Log(1 << 20);
        const size_t at = log.find("health: NOT_SERVING: cluster map version");
        return at != std::string::npos &&
               log.find("have no live expert worker (expert-2 dead)", at) != std::string::npos;
      },
      5s))
      << cluster.attention(0).Log();

  ASSERT_TRUE(cluster.AddExpert("expert-3"));
  ASSERT_TRUE(cluster.WaitReady());
  cluster.attention(0).Kill(SIGKILL);
  killed = std::chrono::steady_clock::now();
  EXPECT_LT(noticed(cluster.router(), killed), bound) << "router, attention worker killed";
}

// Without replicas, losing an expert worker fails the requests that need it
// at once (UNAVAILABLE), the router turns NOT_SERVING once its lease lapses,
// and a new expert worker takes over its slot: SERVING again, same outputs.
TEST(ClusterTest, LostExpertWorkerFailsFastAndANewOneTakesItsSlot) {
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster(
      {.binaries = kBinaries, .model = kTinyV2, .attention = 1, .experts = 3, .replicas = 1});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());

  {
    Traffic traffic(cluster.RouterChannel(), Requests("long", kPrompts, kLongTokens), 30s);
    ASSERT_TRUE(traffic.WaitTokens(2));
    cluster.expert(1).Kill(SIGKILL);
    for (const Outcome& o : traffic.Join()) {
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE)
          << o.status.error_message() << " after " << o.tokens.size() << " tokens";
      EXPECT_LT(o.elapsed, 10s);
    }
  }
  const bool not_serving = WaitFor(
      [&] { return cluster.Health(cluster.router()) == HealthCheckResponse::NOT_SERVING; },
      10s);
  ASSERT_TRUE(not_serving) << cluster.Logs();
  // The router may see it first (its polls); the map follows at the lease.
  internal::ClusterMap map;
  EXPECT_TRUE(WaitFor([&] { return cluster.GetMap(&map).ok() && !map.complete(); }, 5s))
      << map.DebugString();
  {
    // Refused at once while the map is incomplete.
    auto stub = v1::Generation::NewStub(
        cluster.RouterChannel());
    const Outcome refused = Generate(*stub, Greedy("refused", 0, 4), 30s);
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_LT(refused.elapsed, 10s);
  }

  ASSERT_TRUE(cluster.AddExpert("expert-4"));
  const bool serving = WaitFor(
      [&] { return cluster.Health(cluster.router()) == HealthCheckResponse::SERVING; }, 10s);
  ASSERT_TRUE(serving) << cluster.Logs();
  ASSERT_TRUE(cluster.GetMap(&map).ok());
  EXPECT_TRUE(map.complete());
  EXPECT_EQ(FindWorker(map, "expert-2"), nullptr)
      << "expert-4 took its slot: " << map.DebugString();
  ASSERT_NE(FindWorker(map, "expert-4"), nullptr) << map.DebugString();
  ASSERT_TRUE(cluster.WaitReady());
  ExpectRouterServesStandaloneOutputs(cluster, Requests("after", kPrompts, 16), reference);
  ExpectAllBlocksReturned(cluster);
  ExpectAllAliveBut(cluster, {"expert-2"});
}

// An attention worker dies mid-stream: its requests end UNAVAILABLE at the
// router after the tokens they had (nothing hangs), the other worker's
// requests finish with the standalone outputs, and new requests avoid the
// dead worker.
TEST(ClusterTest, AttentionWorkerDeathFailsOnlyItsRequests) {
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster({.binaries = kBinaries, .model = kTinyV2, .attention = 2, .experts = 2});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  {
    Traffic traffic(cluster.RouterChannel(), Requests("long", kPrompts, kLongTokens), 30s);
    ASSERT_TRUE(traffic.WaitTokens(4));
    cluster.attention(0).Kill(SIGKILL);
    const std::vector<Outcome>& outcomes = traffic.Join();
    const Reference& ref = reference.get();
    ASSERT_TRUE(ref.error.empty()) << ref.error;
    int failed = 0, finished = 0;
    for (size_t i = 0; i < outcomes.size(); ++i) {
      const Outcome& o = outcomes[i];
      const std::vector<int32_t>& full = ref.outputs[PromptOf(traffic.requests()[i])];
      if (o.status.ok()) {
        ++finished;
        EXPECT_EQ(o.tokens, full);
        continue;
      }
      ++failed;
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
      EXPECT_NE(o.status.error_message().find("mid-stream"), std::string::npos)
          << o.status.error_message();
      EXPECT_LT(o.elapsed, 10s);
      // What was streamed before the failure is the true prefix.
      ASSERT_GE(o.tokens.size(), 4u);
      ASSERT_LE(o.tokens.size(), full.size());
      EXPECT_TRUE(std::equal(o.tokens.begin(), o.tokens.end(), full.begin()));
    }
    // The router spread the requests over both workers.
    EXPECT_GT(failed, 0);
    EXPECT_GT(finished, 0);
  }
  EXPECT_EQ(cluster.Health(cluster.router()), HealthCheckResponse::SERVING);
  ExpectRouterServesStandaloneOutputs(cluster, Requests("after", kPrompts, 16), reference);
  ExpectAllBlocksReturned(cluster);
  ExpectAllAliveBut(cluster, {"attention-1"});
}

// The controller dies while requests stream: serving goes on over the last
// map; a new controller on the same port gets every worker back by itself.
TEST(ClusterTest, ControllerRestartWhileServing) {
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster({.binaries = kBinaries, .model = kTinyV2, .attention = 2, .experts = 2});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  internal::ClusterMap first;
  ASSERT_TRUE(cluster.GetMap(&first).ok());
  ASSERT_TRUE(reference.get().error.empty()) << reference.get().error;

  // Rounds of concurrent requests until told to stop, each checked.
  std::atomic<bool> stop{false};
  std::atomic<int> rounds{0};
  Mutex mutex;
  std::vector<std::string> problems;
  std::thread client([&] {
    for (int round = 0; !stop; ++round) {
      Traffic traffic(cluster.RouterChannel(),
                      Requests("c" + std::to_string(round) + "-", 4, 8 + round % 9));
      const std::vector<Outcome>& outcomes = traffic.Join();
      for (size_t i = 0; i < outcomes.size(); ++i) {
        const Outcome& o = outcomes[i];
        const v1::GenerateRequest& request = traffic.requests()[i];
        const std::vector<int32_t>& full = reference.get().outputs[PromptOf(request)];
        if (!o.status.ok() ||
            o.tokens != std::vector<int32_t>(full.begin(),
                                             full.begin() + request.stopping().max_tokens())) {
          MutexLock lock(&mutex);
          problems.push_back(request.request_id() + ": " + std::to_string(o.status.error_code()) +
                             " " + o.status.error_message() + ", " +
                             std::to_string(o.tokens.size()) + " tokens");
        }
      }
      ++rounds;
    }
  });
  auto rounds_reach = [&](int n) { return WaitFor([&] { return rounds >= n; }, 30s); };

  EXPECT_TRUE(rounds_reach(2));
  cluster.controller().Kill(SIGKILL);
  // Two leases without a controller: nobody notices but the watchers. Real
  // time is what this measures: no worker may act on a lease running out
  // while the controller is away, and that nothing happens has no event to
  // wait for.
  const auto killed = std::chrono::steady_clock::now();
  const auto two_leases = 2 * std::chrono::milliseconds(testutil::ClusterOptions{}.lease_ms);
  const int before = rounds;
  EXPECT_TRUE(WaitFor(
      [&] { return rounds >= before + 2 && std::chrono::steady_clock::now() - killed >= two_leases; },
      30s));
  EXPECT_EQ(cluster.Health(cluster.router()), HealthCheckResponse::SERVING);

  // The default warm-up must outlast the workers' way back (their control
  // channels' reconnect backoff plus a heartbeat period); a shorter one
  // would publish a map without some live workers, whose dispatches the
  // expert workers would then refuse.
  ASSERT_TRUE(cluster.RestartController({"--warmup_ms=-1"}));
  internal::ClusterMap map;
  const bool back = WaitFor(
      [&] {
        if (!cluster.GetMap(&map).ok() || !map.complete()) {
          return false;
        }
        for (const std::string id : {"expert-1", "expert-2", "attention-1", "attention-2"}) {
          const internal::Worker* w = FindWorker(map, id);
          if (w == nullptr || w->state() != internal::WORKER_STATE_ALIVE) return false;
        }
        return true;
      },
      15s);
  EXPECT_TRUE(back) << map.DebugString() << cluster.Logs();
  EXPECT_NE(map.epoch(), first.epoch());
  EXPECT_EQ(map.workers_size(), 4) << map.DebugString();
  // The workers' slot hints put the placement back as it was.
  ASSERT_EQ(map.placement_size(), first.placement_size());
  for (int u = 0; u < map.placement_size(); ++u) {
    EXPECT_EQ(map.placement(u).DebugString(), first.placement(u).DebugString()) << u;
  }
  const int after = rounds;
  EXPECT_TRUE(rounds_reach(after + 2));
  stop = true;
  client.join();
  EXPECT_TRUE(problems.empty()) << testing::PrintToString(problems) << cluster.Logs();

  ASSERT_TRUE(cluster.WaitReady());
  ExpectRouterServesStandaloneOutputs(cluster, Requests("after", kPrompts, 16), reference);
  ExpectAllBlocksReturned(cluster);
  ExpectAllAliveBut(cluster, {});
}

// Garbage and malformed frames sent to an expert worker's data address are
// dropped or answered INVALID_ARGUMENT; the worker lives on and the cluster
// keeps serving the same outputs. The sender is a member of the cluster (an
// attention worker with a certificate, registered, holding the data-plane
// key): what a compromised worker could do. A sender outside the map, or
// without the key, is not even answered.
TEST(ClusterTest, MalformedDataPlaneMessagesDoNotHurtExpertWorkers) {
  using transport::FrameHeader;
  using transport::FrameType;
  const std::shared_future<Reference> reference = StandaloneOutputs(kTinyV2);
  Cluster cluster({.binaries = kBinaries, .model = kTinyV2, .attention = 1, .experts = 2});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  ExpectRouterServesStandaloneOutputs(cluster, Requests("before", kPrompts, 8), reference);

  // Joins as attention worker "prober": registered, renewing its lease,
  // and sealing with the key from its map.
  ASSERT_TRUE(cluster.certs()->Make("attention", "prober"));
  auto sender = transport::UcxTransport::Create({.id = 0x5eed});
  ASSERT_TRUE(sender.ok()) << sender.status();
  absl::StatusOr<ModelConfig> config = LoadModelConfig(std::string(kTinyV2) + "/config.json");
  ASSERT_TRUE(config.ok());
  std::unique_ptr<ControlClient> membership = ControlClient::Start(
      {.controller = cluster.controller_address(),
       .self = WorkerInfo{.id = "prober",
                          .role = WorkerRole::kAttention,
                          .grpc_address = "127.0.0.1:9",
                          .data_address = (*sender)->address(),
                          .capacity = 64,
                          .peer_id = (*sender)->id()},
       .credentials = ChannelTlsCredentials(cluster.certs()->Files("prober"))},
      *config, [&](const ClusterMap& map) {
        if (map.data_plane_key.empty()) return;
        transport::FrameKey key{.id = map.epoch};
        std::copy(map.data_plane_key.begin(), map.data_plane_key.end(), key.secret.begin());
        (*sender)->SetFrameKeys({key});
      });
  ASSERT_TRUE(membership->WaitForMap(
      [](const ClusterMap& m) {
        const ClusterMap::Worker* me = m.Find("prober");
        return me != nullptr && me->state == WorkerState::kAlive && !m.data_plane_key.empty();
      },
      absl::Seconds(10)));
  internal::ClusterMap map;
  ASSERT_TRUE(cluster.GetMap(&map).ok());
  const uint32_t hidden = static_cast<uint32_t>(ConfigValue(kTinyV2, "hidden_size"));
  const int32_t experts = static_cast<int32_t>(ConfigValue(kTinyV2, "n_routed_experts"));
  const uint32_t layers = static_cast<uint32_t>(ConfigValue(kTinyV2, "num_hidden_layers"));
  const uint32_t moe_layer = static_cast<uint32_t>(ConfigValue(kTinyV2, "first_k_dense_replace"));
  constexpr uint32_t kTokens = 3, kTopK = 2;

  auto dispatch = [&](uint32_t layer, uint32_t hidden_size, std::vector<int32_t> ids,
                      std::vector<float> weights) {
    std::vector<uint8_t> activations(size_t{kTokens} * hidden_size * 2);
    for (size_t i = 0; i < activations.size(); i += 2) {
      activations[i + 1] = 0x3f;  // bf16 0.5 .. 1: finite activations.
      activations[i] = static_cast<uint8_t>(i);
    }
    absl::StatusOr<transport::Message> message =
        transport::MakeDispatch({.step_id = 1, .layer = layer}, hidden_size, kTopK, DType::kBF16,
                                activations, ids, weights, nullptr);
    EXPECT_TRUE(message.ok()) << message.status();
    return *std::move(message);
  };
  const std::vector<int32_t> good_ids = {0, 5, 1, experts - 1, 7, -1};
  const std::vector<float> good_weights = {0.5f, 0.25f, 1.0f, 0.125f, 2.0f, 0.0f};

  for (const internal::Worker& worker : map.workers()) {
    if (worker.info().role() != internal::ROLE_EXPERT) continue;
    const std::string address = worker.info().data_address();
    SCOPED_TRACE(worker.info().worker_id() + " at " + address);

    // Bytes that are no frame at all, and frames that fail to decode.
    std::vector<uint8_t> garbage(64);
    for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<uint8_t>(i * 131 + 7);
    const std::vector<uint8_t> payload(256, 0xab);
    EXPECT_TRUE((*sender)->SendRawForTesting(address, garbage, payload).ok());
    EXPECT_TRUE(
        (*sender)->SendRawForTesting(address, absl::MakeConstSpan(garbage).first(10), {}).ok());
    transport::Message valid = dispatch(moe_layer, hidden, good_ids, good_weights);
    valid.header.sender = (*sender)->id();
    transport::EncodedHeader header = transport::EncodeHeader(valid.header);
    std::vector<uint8_t> bytes(header.begin(), header.end());
    bytes[33] ^= 0x40;  // token_count, under the checksum.
    EXPECT_TRUE((*sender)->SendRawForTesting(address, bytes, valid.payload.span()).ok());
    bytes.assign(header.begin(), header.end());
    EXPECT_TRUE((*sender)
                    ->SendRawForTesting(address, bytes,
                                        valid.payload.span().first(valid.payload.size() - 16))
                    .ok());
    // A frame with extra bytes after the header.
    bytes.push_back(0);
    EXPECT_TRUE((*sender)->SendRawForTesting(address, bytes, valid.payload.span()).ok());
    // A well-formed dispatch from a sender outside the cluster.
    FrameHeader stranger = valid.header;
    stranger.sender = (*sender)->id() ^ 0x5a5a5a5a;
    header = transport::EncodeHeader(stranger);
    EXPECT_TRUE((*sender)->SendRawForTesting(address, header, valid.payload.span()).ok());
    // A combine and an error frame nobody asked for.
    FrameHeader combine = valid.header;
    combine.type = FrameType::kCombine;
    combine.top_k = 0;
    combine.payload_length = size_t{kTokens} * hidden * 2;
    header = transport::EncodeHeader(combine);
    EXPECT_TRUE(
        (*sender)
            ->SendRawForTesting(address, header, std::vector<uint8_t>(combine.payload_length, 1))
            .ok());
    FrameHeader error = combine;
    error.type = FrameType::kError;
    error.dtype = DType::kBF16;
    error.payload_length = 3;
    header = transport::EncodeHeader(error);
    EXPECT_TRUE((*sender)->SendRawForTesting(address, header, {1, 2, 3}).ok());

    // Well-framed dispatches with bad contents: answered INVALID_ARGUMENT.
    auto call = [&](transport::Message message) {
      return transport::CallAndWait(**sender, address, std::move(message), absl::Seconds(5))
          .status();
    };
    std::vector<int32_t> ids = good_ids;
    ids[2] = experts;
    EXPECT_EQ(call(dispatch(moe_layer, hidden, ids, good_weights)).code(),
              absl::StatusCode::kInvalidArgument);
    ids[2] = -7;
    EXPECT_EQ(call(dispatch(moe_layer, hidden, ids, good_weights)).code(),
              absl::StatusCode::kInvalidArgument);
    std::vector<float> weights = good_weights;
    weights[1] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_EQ(call(dispatch(moe_layer, hidden, good_ids, weights)).code(),
              absl::StatusCode::kInvalidArgument);
    weights[1] = std::numeric_limits<float>::infinity();
    EXPECT_EQ(call(dispatch(moe_layer, hidden, good_ids, weights)).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(call(dispatch(0, hidden, good_ids, good_weights)).code(),  // A dense layer.
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(call(dispatch(layers, hidden, good_ids, good_weights)).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(call(dispatch(moe_layer, hidden / 2, good_ids, good_weights)).code(),
              absl::StatusCode::kInvalidArgument);
    // After all that, a good dispatch on the same connection is computed.
    absl::StatusOr<transport::Message> reply = transport::CallAndWait(
        **sender, address, dispatch(moe_layer, hidden, good_ids, good_weights), absl::Seconds(5));
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->header.type, FrameType::kCombine);
    EXPECT_EQ(reply->header.token_count, kTokens);
  }
  const transport::TransportCounters counters = (*sender)->counters();

  // An outsider with the prober's id but no key: not even answered.
  auto outsider = transport::UcxTransport::Create({.id = (*sender)->id()});
  ASSERT_TRUE(outsider.ok());
  for (const internal::Worker& worker : map.workers()) {
    if (worker.info().role() != internal::ROLE_EXPERT) continue;
    EXPECT_EQ(transport::CallAndWait(**outsider, worker.info().data_address(),
                                     dispatch(moe_layer, hidden, good_ids, good_weights),
                                     absl::Milliseconds(300))
                  .status()
                  .code(),
              absl::StatusCode::kDeadlineExceeded);
  }
  membership->Stop();
  (*sender)->Shutdown();

  ExpectAllAliveBut(cluster, {});
  ExpectRouterServesStandaloneOutputs(cluster, Requests("after", kPrompts, 16), reference);
  EXPECT_EQ(LoadOf(cluster, cluster.attention(0)).data_plane().failures(), 0);
  ASSERT_TRUE(cluster.GetMap(&map).ok());
  EXPECT_TRUE(map.complete());
  for (int i = 0; i < cluster.num_experts(); ++i) {
    const internal::Worker* w = FindWorker(map, cluster.expert(i).name());
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->state(), internal::WORKER_STATE_ALIVE);
  }
  EXPECT_EQ(counters.calls_failed, 2u * 7u) << counters.ToString();
  ExpectAllBlocksReturned(cluster);
}

// A client that cancels a long request through the router ends it on the
// attention worker, which frees its blocks long before it would have ended.
TEST(ClusterTest, CancellationReachesTheAttentionWorker) {
  // Slow experts: about 3 × 10 ms per token, so 120 tokens take seconds.
  Cluster cluster({.binaries = kBinaries,
                   .model = kTinyV2,
                   .attention = 1,
                   .experts = 2,
                   .expert_flags = {"--batch_window_us=10000"}});
  ASSERT_TRUE(cluster.Start());
  ASSERT_TRUE(cluster.WaitReady());
  constexpr uint32_t kMaxTokens = 120;
  auto stub = v1::Generation::NewStub(
      cluster.RouterChannel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Generate(&context, Greedy("cancel-me", 1, kMaxTokens));
  v1::GenerateResponse response;
  size_t tokens = 0;
  while (tokens < 3 && reader->Read(&response)) tokens += response.chunk().token_ids_size();
  ASSERT_GE(tokens, 3u);
  const internal::Load busy = LoadOf(cluster, cluster.attention(0));
  EXPECT_EQ(busy.running(), 1) << busy.DebugString();
  EXPECT_LT(busy.kv_blocks_free() + busy.kv_blocks_cached(), busy.kv_blocks_total());

  const auto cancelled_at = std::chrono::steady_clock::now();
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  internal::Load load;
  const bool freed = WaitFor(
      [&] {
        return cluster.Load(cluster.attention(0), &load).ok() && load.running() == 0 &&
               load.waiting() == 0 &&
               load.kv_blocks_free() + load.kv_blocks_cached() == load.kv_blocks_total();
      },
      3s);
  EXPECT_TRUE(freed) << load.DebugString();
  EXPECT_LT(std::chrono::steady_clock::now() - cancelled_at, 3s);
  // Ended, not finished: far fewer tokens than asked for, and no more since
  // (none from a retry of the cancelled call, say). That nothing more
  // happens has no event to wait for, so real time is what this measures:
  // 200 ms, several steps of these slow experts.
  EXPECT_LT(load.generation_tokens(), kMaxTokens / 2) << load.DebugString();
  EXPECT_FALSE(WaitFor(
      [&] {
        return LoadOf(cluster, cluster.attention(0)).generation_tokens() !=
               load.generation_tokens();
      },
      200ms));
  ExpectAllAliveBut(cluster, {});
}

}  // namespace
}  // namespace dsv2
