// What a bf16 data plane costs in accuracy and saves in bytes, against the
// exact f32 one and against `dsv2 generate`'s in-process experts, measured
// in one run.
//
//   dispatch_dtype_bench [--models tests/data/tiny-v2,tests/data/tiny-lite]
//                        [--requests 24] [--prompt 12] [--tokens 48] [--seed 1] [--json]
//
// For each model, the same greedy requests (random token-id prompts of
// --prompt tokens, ignore_eos, --tokens new tokens, the chosen token's
// logprob) run through an Engine three times: with LocalRoutedExperts (what
// `dsv2 generate` computes), and with RemoteRoutedExperts over an in-process
// data plane to an ExpertServer at f32 and at bf16 (what dsv2-standalone
// and a cluster compute with --data_plane_dtype f32 / bf16). It prints:
//
//   exact      requests whose f32 tokens equal dsv2 generate's (all, or the
//              data plane is not exact)
//   diverged   requests whose bf16 greedy tokens differ from f32, and the
//              mean position of the first difference
//   |dlogprob| the chosen token's logprob, bf16 against f32, over the
//              positions before a request's first difference: max and mean
//   B/token    data-plane bytes (sent + received, headers included) per
//              token per MoE layer at f32 and bf16, and their ratio
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/stats.h"
#include "common/engine/engine.h"
#include "common/experts/expert_server.h"
#include "common/experts/remote_experts.h"
#include "common/model/deepseek_v2.h"
#include "common/model/routed_experts.h"
#include "common/transport/inprocess_transport.h"

namespace dsv2::bench {
namespace {

struct Run {
  std::vector<std::vector<int32_t>> tokens;  // By request.
  std::vector<std::vector<float>> logprobs;  // The chosen tokens'.
  uint64_t data_plane_bytes = 0;
};

struct Settings {
  long requests, prompt, tokens, seed;
};

absl::StatusOr<Run> Generate(DeepseekV2Model& model, std::shared_ptr<RoutedExperts> experts,
                             const Settings& s, const transport::Transport* counted) {
  model.SetRoutedExperts(std::move(experts));
  const ModelConfig& config = model.config();
  EngineOptions options;
  options.kv_cache_bytes = int64_t{64} << 20;
  Engine engine(&model, nullptr, options);
  std::mt19937 rng(static_cast<uint32_t>(s.seed));
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size) - 1);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (long r = 0; r < s.requests; ++r) {
    GenerationRequest request;
    request.id = std::to_string(r);
    for (long i = 0; i < s.prompt; ++i) request.prompt.push_back(token(rng));
    request.max_tokens = s.tokens;
    request.ignore_eos = true;
    request.logprobs = 0;
    absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine.Submit(std::move(request));
    if (!stream.ok()) return stream.status();
    streams.push_back(*std::move(stream));
  }
  Run run;
  for (const auto& stream : streams) {
    run.tokens.emplace_back();
    run.logprobs.emplace_back();
    while (true) {
      std::optional<GenerationOutput> out = stream->Next(std::chrono::seconds(60));
      if (!out) return absl::DeadlineExceededError("a request stalled");
      run.tokens.back().insert(run.tokens.back().end(), out->token_ids.begin(),
                               out->token_ids.end());
      for (const TokenLogprobs& lp : out->logprobs) run.logprobs.back().push_back(lp.logprob);
      if (!out->finish) continue;
      if (*out->finish == FinishReason::kError) return out->error;
      break;
    }
  }
  if (counted != nullptr) {
    const transport::TransportCounters c = counted->counters();
    run.data_plane_bytes = c.bytes_sent + c.bytes_received;
  }
  return run;
}

// The routed experts over an in-process data plane at `dtype`, and the
// transports that carry them (kept alive by the returned object).
struct RemotePath {
  std::shared_ptr<transport::InProcessNetwork> network;
  std::unique_ptr<transport::InProcessTransport> expert_side, attention_side;
  std::unique_ptr<ExpertServer> server;
  std::shared_ptr<RemoteRoutedExperts> experts;
};

absl::StatusOr<std::unique_ptr<RemotePath>> MakeRemote(const DeepseekV2Model& model, DType dtype) {
  auto path = std::make_unique<RemotePath>();
  path->network = transport::InProcessNetwork::Create();
  auto expert_side =
      transport::InProcessTransport::Create(path->network, {.id = 2, .name = "experts"});
  auto attention_side =
      transport::InProcessTransport::Create(path->network, {.id = 1, .name = "attention"});
  if (!expert_side.ok()) return expert_side.status();
  if (!attention_side.ok()) return attention_side.status();
  path->expert_side = *std::move(expert_side);
  path->attention_side = *std::move(attention_side);
  path->server = std::make_unique<ExpertServer>(model, *path->expert_side, ExpertServerOptions{});
  path->experts = std::make_shared<RemoteRoutedExperts>(
      model.config(), *path->attention_side, RemoteExpertsOptions{.dispatch_dtype = dtype});
  auto route = std::make_shared<ExpertRoute>();
  absl::StatusOr<ExpertPlacement> placement = PlaceExperts(model.config(), 1, 1);
  if (!placement.ok()) return placement.status();
  route->placement = *std::move(placement);
  route->ids = {"experts"};
  route->addresses = {path->expert_side->address()};
  route->alive = {true};
  path->experts->SetRoute(std::move(route));
  return path;
}

int Main(int argc, char** argv) {
  Flags flags(argc, argv);
  const Settings s{flags.GetInt("requests", 24, 1, 1 << 20), flags.GetInt("prompt", 12, 1, 1 << 20),
                   flags.GetInt("tokens", 48, 1, 1 << 20), flags.GetInt("seed", 1)};
  if (!flags.error().empty()) {
    std::fprintf(stderr, "dispatch_dtype_bench: %s\n", flags.error().c_str());
    return 2;
  }
  if (const auto unknown =
          flags.Unknown({"models", "requests", "prompt", "tokens", "seed", "json"});
      !unknown.empty()) {
    std::fprintf(stderr, "dispatch_dtype_bench: unknown flag %s (see the top of %s)\n",
                 unknown[0].c_str(), __FILE__);
    return 2;
  }
  const std::vector<std::string> models = absl::StrSplit(
      flags.Get("models", "tests/data/tiny-v2,tests/data/tiny-lite"), ',', absl::SkipEmpty());
  std::printf("%ld greedy requests per model, %ld-token random prompts, %ld new tokens\n\n",
              s.requests, s.prompt, s.tokens);
  std::printf("%-24s %9s %14s %14s %18s %21s %7s\n", "model", "exact f32", "bf16 diverged",
              "first diff at", "|dlogprob| max/mean", "B/token/layer f32/bf16", "ratio");
  int failures = 0;
  for (const std::string& dir : models) {
    absl::StatusOr<std::unique_ptr<DeepseekV2Model>> model = DeepseekV2Model::Load(dir);
    if (!model.ok()) {
      std::fprintf(stderr, "%s: %s\n", dir.c_str(), model.status().ToString().c_str());
      return 1;
    }
    const ModelConfig& config = (*model)->config();
    auto local = std::make_shared<LocalRoutedExperts>(config, (*model)->weights(),
                                                      (*model)->backend());
    absl::StatusOr<Run> exact = Generate(**model, local, s, nullptr);
    auto f32_path = MakeRemote(**model, DType::kF32);
    auto bf16_path = MakeRemote(**model, DType::kBF16);
    if (!exact.ok() || !f32_path.ok() || !bf16_path.ok()) {
      std::fprintf(stderr, "%s: cannot run the reference or set up the data plane\n", dir.c_str());
      return 1;
    }
    absl::StatusOr<Run> f32 =
        Generate(**model, (*f32_path)->experts, s, (*f32_path)->attention_side.get());
    absl::StatusOr<Run> bf16 =
        Generate(**model, (*bf16_path)->experts, s, (*bf16_path)->attention_side.get());
    if (!f32.ok() || !bf16.ok()) {
      std::fprintf(stderr, "%s: %s\n", dir.c_str(),
                   (f32.ok() ? bf16.status() : f32.status()).ToString().c_str());
      return 1;
    }
    long same = 0, diverged = 0;
    double first_sum = 0, dmax = 0, dsum = 0;
    long dcount = 0;
    for (long r = 0; r < s.requests; ++r) {
      same += exact->tokens[r] == f32->tokens[r];
      const auto& a = f32->tokens[r];
      const auto& b = bf16->tokens[r];
      const size_t n = std::min(a.size(), b.size());
      size_t first = 0;
      while (first < n && a[first] == b[first]) ++first;
      if (first < n || a.size() != b.size()) {
        ++diverged;
        first_sum += static_cast<double>(first);
      }
      for (size_t i = 0; i < first && i < f32->logprobs[r].size() && i < bf16->logprobs[r].size();
           ++i) {
        const double d = std::fabs(f32->logprobs[r][i] - bf16->logprobs[r][i]);
        dmax = std::max(dmax, d);
        dsum += d;
        ++dcount;
      }
    }
    failures += same != s.requests;
    // Tokens cross the data plane once per MoE layer: prompt and generated
    // positions (the last generated token is never fed back).
    const double moe_layers =
        static_cast<double>(config.num_hidden_layers - config.first_k_dense_replace);
    const double tokens = static_cast<double>(s.requests * (s.prompt + s.tokens - 1)) * moe_layers;
    const double f32_bytes = f32->data_plane_bytes / tokens;
    const double bf16_bytes = bf16->data_plane_bytes / tokens;
    std::printf("%-24s %4ld/%-4ld %8ld/%-5ld %14s %10.2e/%-7.1e %12.0f/%-8.0f %7.2f\n", dir.c_str(),
                same, s.requests, diverged, s.requests,
                diverged > 0 ? absl::StrFormat("%.1f", first_sum / diverged).c_str() : "-", dmax,
                dcount > 0 ? dsum / dcount : 0.0, f32_bytes, bf16_bytes, f32_bytes / bf16_bytes);
    if (flags.Has("json")) {
      std::printf(
          "{\"model\":\"%s\",\"requests\":%ld,\"exact_f32\":%ld,\"bf16_diverged\":%ld,"
          "\"dlogprob_max\":%g,\"dlogprob_mean\":%g,\"bytes_per_token_layer_f32\":%g,"
          "\"bytes_per_token_layer_bf16\":%g}\n",
          dir.c_str(), s.requests, same, diverged, dmax, dcount > 0 ? dsum / dcount : 0.0,
          f32_bytes, bf16_bytes);
    }
  }
  std::printf(
      "\nexact f32: requests whose tokens equal dsv2 generate's (in-process experts); the "
      "reference for the bf16 columns is the f32 data plane.\n");
  if (failures > 0) {
    std::fprintf(stderr, "dispatch_dtype_bench: the f32 data plane differs from dsv2 generate\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace dsv2::bench

int main(int argc, char** argv) { return dsv2::bench::Main(argc, argv); }
