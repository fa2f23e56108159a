// `dsv2 logits` and `dsv2 generate`: the model run from the command line,
// `generate` through the same engine and request conversion as the server.
#include <algorithm>
#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "common/base/status_macros.h"
#include "common/model/deepseek_v2.h"
#include "common/engine/engine.h"
#include "common/model/latent_kv_cache.h"
#include "kernels/backends.h"
#include "common/tensor/npy.h"
#include "server/grpc/generation_service.h"
#include "server/api/text_frontend.h"
#include "tools/dsv2/args.h"
#include "tools/dsv2/commands.h"
#include "tools/dsv2/request_flags.h"

namespace dsv2::cli {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

const FlagSpec kWeightCheckFlag = {
    "weight-check", true,
    "scan the weights for NaN and infinity at load: off, cheap (the default: norms and MoE "
    "routers) or full (every tensor)"};

const FlagSpec kBackendFlag = {
    "backend", true, "where the model computes: cpu (the default) or cuda (CUDA builds; docs/gpu.md)"};

absl::StatusOr<std::unique_ptr<DeepseekV2Model>> LoadModel(const Args& args,
                                                           const std::string& dir) {
  auto check = ParseWeightCheck(args.Get("weight-check").value_or("cheap"));
  if (!check.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--weight-check ", check.status().message()));
  }
  const absl::StatusOr<Backend*> backend = BackendByName(args.Get("backend").value_or("cpu"));
  if (!backend.ok()) {
    return absl::Status(backend.status().code(),
                        absl::StrCat("--backend: ", backend.status().message()));
  }
  return DeepseekV2Model::Load(dir, {.weight_check = *check, .backend = *backend});
}

}  // namespace

absl::Status Logits(std::span<const std::string> argv, std::ostream& out) {
  const std::vector<FlagSpec> flags = {
      {"model", true, "model directory"},
      {"tokens", true, "comma-separated prompt token ids"},
      {"out", true, "output .npy file: float32 [tokens, vocab]"},
      kWeightCheckFlag,
      kBackendFlag,
  };
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(std::string dir, args.Require("model"));
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, args.GetTokenIds("tokens"));
  ASSIGN_OR_RETURN(std::string path, args.Require("out"));
  ASSIGN_OR_RETURN(auto model, LoadModel(args, dir));
  const int64_t n = static_cast<int64_t>(tokens.size());
  LatentKvCache cache(model->config(), n, model->backend());
  std::vector<float> logits;
  RETURN_IF_ERROR(model->Forward(tokens, cache, {.all_logits = true}, &logits));
  RETURN_IF_ERROR(WriteNpy(path, {n, model->config().vocab_size}, logits.data()));
  DSV2_LOG(INFO) << "wrote logits [" << n << ", " << model->config().vocab_size << "] to " << path;
  return absl::OkStatus();
}

absl::Status Generate(std::span<const std::string> argv, std::ostream& out) {
  std::vector<FlagSpec> flags = {
      {"model", true, "model directory"},
      {"stats", false, "print prefill and decode tokens per second to standard error"},
      kWeightCheckFlag,
      kBackendFlag,
  };
  for (FlagSpec& flag : RequestFlags()) flags.push_back(std::move(flag));
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(std::string dir, args.Require("model"));
  ASSIGN_OR_RETURN(v1::GenerateRequest request, BuildRequest(args));
  ASSIGN_OR_RETURN(auto model, LoadModel(args, dir));
  ASSIGN_OR_RETURN(std::unique_ptr<TextFrontend> text, TextFrontend::LoadIfPresent(dir));
  if (!request.has_token_ids() && text == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, " has no tokenizer.json: give the prompt as --tokens"));
  }
  // The same conversion and engine as the server, with a KV cache sized for
  // this one request — no larger than the model's context, which the engine
  // enforces anyway (so --max-tokens 4000000000 is an error, not terabytes).
  ASSIGN_OR_RETURN(GenerationRequest engine_request, ToEngineRequest(request, text.get()));
  const ModelConfig& config = model->config();
  EngineOptions options;
  const int64_t positions =
      std::min(static_cast<int64_t>(engine_request.prompt.size()) + engine_request.max_tokens,
               config.max_position_embeddings);
  const int64_t blocks = (positions + options.block_size - 1) / options.block_size;
  options.kv_cache_bytes = blocks * config.num_hidden_layers * options.block_size *
                           config.latent_dim() * static_cast<int64_t>(sizeof(float));
  Engine engine(model.get(), text.get(), options);

  const int64_t prompt_tokens = static_cast<int64_t>(engine_request.prompt.size());
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::shared_ptr<RequestStream> stream, engine.Submit(std::move(engine_request)));
  OutputPrinter printer(request, out);
  std::optional<std::chrono::steady_clock::time_point> first_token;
  int64_t generated = 0;
  while (true) {
    std::optional<GenerationOutput> output = stream->Next(std::chrono::seconds(1));
    if (!output) continue;
    if (!output->token_ids.empty() && !first_token) first_token = std::chrono::steady_clock::now();
    generated += static_cast<int64_t>(output->token_ids.size());
    printer.Print(output->token_ids, output->text);
    if (!output->finish) continue;
    if (*output->finish == FinishReason::kError) return output->error;
    break;
  }
  printer.Finish();
  if (args.Has("stats") && first_token) {
    const double prefill = std::chrono::duration<double>(*first_token - start).count();
    const double decode = SecondsSince(*first_token);
    std::cerr << absl::StrFormat(
        "prefill: %d tokens in %.3f s (%.1f tokens/s)\n"
        "decode:  %d tokens in %.3f s (%.2f tokens/s)\n",
        prompt_tokens, prefill, prompt_tokens / prefill, generated - 1, decode,
        generated > 1 ? (generated - 1) / decode : 0.0);
  }
  return absl::OkStatus();
}

}  // namespace dsv2::cli
