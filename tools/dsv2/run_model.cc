// `dsv2 logits` and `dsv2 generate`: the forward pass driven from the
// command line.
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "common/base/status_macros.h"
#include "common/model/deepseek_v2.h"
#include "common/model/latent_kv_cache.h"
#include "common/sampling/sampler.h"
#include "common/tokenizer/model_tokenizer.h"
#include "common/tokenizer/streaming_detokenizer.h"
#include "common/tensor/npy.h"
#include "tools/dsv2/args.h"
#include "tools/dsv2/commands.h"

namespace dsv2::cli {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::Status Logits(std::span<const std::string> argv, std::ostream& out) {
  const std::vector<FlagSpec> flags = {
      {"model", true, "model directory"},
      {"tokens", true, "comma-separated prompt token ids"},
      {"out", true, "output .npy file: float32 [tokens, vocab]"},
  };
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(std::string dir, args.Require("model"));
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, args.GetTokenIds("tokens"));
  ASSIGN_OR_RETURN(std::string path, args.Require("out"));
  ASSIGN_OR_RETURN(auto model, DeepseekV2Model::Load(dir));
  const int64_t n = static_cast<int64_t>(tokens.size());
  LatentKvCache cache(model->config(), n);
  std::vector<float> logits;
  RETURN_IF_ERROR(model->Forward(tokens, cache, {.all_logits = true}, &logits));
  RETURN_IF_ERROR(WriteNpy(path, {n, model->config().vocab_size}, logits.data()));
  DSV2_LOG(INFO) << "wrote logits [" << n << ", " << model->config().vocab_size << "] to " << path;
  return absl::OkStatus();
}

absl::Status Generate(std::span<const std::string> argv, std::ostream& out) {
  const std::vector<FlagSpec> flags = {
      {"model", true, "model directory"},
      {"tokens", true, "comma-separated prompt token ids (output: generated ids)"},
      {"prompt", true, "prompt text, tokenized with the model's tokenizer.json (output: text)"},
      {"chat", false, "with --prompt: send it as a user message through the chat template"},
      {"max-tokens", true, "tokens to generate (default 16)"},
      {"temperature", true, "0 (default) is greedy"},
      {"top-p", true, "nucleus sampling mass in (0, 1] (default 1)"},
      {"top-k", true, "sample among the k most likely tokens; 0 (default) means all"},
      {"seed", true, "random seed for sampling (default 0)"},
      {"ignore-eos", false, "keep generating after the end-of-sequence token"},
      {"stats", false, "print prefill and decode tokens per second to standard error"},
  };
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(std::string dir, args.Require("model"));
  if (args.Has("tokens") == args.Has("prompt")) {
    return absl::InvalidArgumentError("give exactly one of --tokens and --prompt");
  }
  if (args.Has("chat") && !args.Has("prompt")) {
    return absl::InvalidArgumentError("--chat needs --prompt");
  }
  // With --prompt the model directory's tokenizer turns text into ids and
  // the generated ids back into text as they arrive.
  std::optional<ModelTokenizer> tokenizer;
  std::vector<int32_t> prompt;
  if (args.Has("prompt")) {
    ASSIGN_OR_RETURN(tokenizer, ModelTokenizer::Load(dir));
    const std::string text = *args.Get("prompt");
    if (args.Has("chat")) {
      const ChatMessage message{"user", text};
      ASSIGN_OR_RETURN(prompt, tokenizer->EncodeChat({&message, 1}));
    } else {
      ASSIGN_OR_RETURN(prompt, tokenizer->EncodePrompt(text));
    }
    if (prompt.empty()) return absl::InvalidArgumentError("--prompt gives no tokens");
  } else {
    ASSIGN_OR_RETURN(prompt, args.GetTokenIds("tokens"));
  }
  ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 16));
  SamplingParams sampling;
  ASSIGN_OR_RETURN(double temperature, args.GetDouble("temperature", 0.0));
  ASSIGN_OR_RETURN(double top_p, args.GetDouble("top-p", 1.0));
  ASSIGN_OR_RETURN(sampling.top_k, args.GetInt("top-k", 0));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  sampling.temperature = static_cast<float>(temperature);
  sampling.top_p = static_cast<float>(top_p);
  sampling.seed = static_cast<uint64_t>(seed);
  RETURN_IF_ERROR(sampling.Validate());
  if (max_tokens < 1) return absl::InvalidArgumentError("--max-tokens must be at least 1");

  ASSIGN_OR_RETURN(auto model, DeepseekV2Model::Load(dir));
  const ModelConfig& config = model->config();
  const int64_t total = static_cast<int64_t>(prompt.size()) + max_tokens;
  if (total > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt.size(), ") + --max-tokens (", max_tokens,
                     ") exceeds the model's context of ", config.max_position_embeddings));
  }
  LatentKvCache cache(config, total);
  Sampler sampler(sampling);
  std::vector<float> logits;

  const auto prefill_start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(model->Forward(prompt, cache, {}, &logits));
  const double prefill_seconds = SecondsSince(prefill_start);

  const auto decode_start = std::chrono::steady_clock::now();
  int64_t generated = 0, decode_steps = 0;
  const bool stop_at_eos = !args.Has("ignore-eos") && config.eos_token_id >= 0;
  std::optional<StreamingDetokenizer> text_stream;
  if (tokenizer) text_stream.emplace(tokenizer->tokenizer(), /*skip_special_tokens=*/true);
  while (true) {
    const int32_t token = sampler.Sample(logits.data(), config.vocab_size);
    if (stop_at_eos && token == config.eos_token_id) break;
    if (text_stream) {
      out << text_stream->Append(token) << std::flush;
    } else {
      out << (generated ? " " : "") << token << std::flush;
    }
    if (++generated == max_tokens) break;
    RETURN_IF_ERROR(model->Forward({&token, 1}, cache, {}, &logits));
    ++decode_steps;
  }
  // Text is printed exactly as decoded (no newline added); ids end with one.
  out << (text_stream ? text_stream->Finish() : "\n") << std::flush;
  const double decode_seconds = SecondsSince(decode_start);
  if (args.Has("stats")) {
    std::cerr << absl::StrFormat(
        "prefill: %d tokens in %.3f s (%.1f tokens/s)\n"
        "decode:  %d tokens in %.3f s (%.2f tokens/s)\n",
        prompt.size(), prefill_seconds, prompt.size() / prefill_seconds, decode_steps,
        decode_seconds, decode_steps > 0 ? decode_steps / decode_seconds : 0.0);
  }
  return absl::OkStatus();
}

}  // namespace dsv2::cli
