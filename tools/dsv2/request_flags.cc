#include "tools/dsv2/request_flags.h"

#include <ostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/status_macros.h"

namespace dsv2::cli {

std::vector<FlagSpec> RequestFlags() {
  std::vector<FlagSpec> flags = {
      {"tokens", true, "comma-separated prompt token ids (output: generated ids)"},
      {"prompt", true, "prompt text, tokenized with the model's tokenizer (output: text)"},
      {"chat", false, "with --prompt: send it as a user message through the chat template"},
  };
  for (FlagSpec& flag : OutputFlags()) flags.push_back(std::move(flag));
  return flags;
}

std::vector<FlagSpec> OutputFlags() {
  return {
      {"max-tokens", true, "tokens to generate (default 16)"},
      {"min-tokens", true, "tokens to generate before EOS or stops may end the output (default 0)"},
      {"temperature", true, "0 (default) is greedy"},
      {"top-p", true, "nucleus sampling mass in (0, 1] (default 1)"},
      {"top-k", true, "sample among the k most likely tokens; 0 (default) means all"},
      {"min-p", true, "drop tokens below min-p times the top probability (default 0)"},
      {"repetition-penalty", true, "> 0; 1 (default) is off"},
      {"presence-penalty", true, "in [-2, 2] (default 0)"},
      {"frequency-penalty", true, "in [-2, 2] (default 0)"},
      {"seed", true, "random seed for sampling (default 0)"},
      {"logit-bias", true, "ID:BIAS, added to token ID's logit before sampling, BIAS in "
                           "[-100, 100] (repeatable)", /*repeatable=*/true},
      {"stop", true, "stop string; the text ends before it (repeatable)", /*repeatable=*/true},
      {"stop-token-ids", true, "comma-separated token ids that end the output"},
      {"ignore-eos", false, "keep generating after the end-of-sequence token"},
  };
}

absl::StatusOr<v1::GenerateRequest> BuildRequest(const Args& args) {
  if (args.Has("tokens") == args.Has("prompt")) {
    return absl::InvalidArgumentError("give exactly one of --tokens and --prompt");
  }
  if (args.Has("chat") && !args.Has("prompt")) {
    return absl::InvalidArgumentError("--chat needs --prompt");
  }
  v1::GenerateRequest request;
  request.set_request_id("dsv2-cli");
  if (args.Has("tokens")) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, args.GetTokenIds("tokens"));
    for (int32_t id : ids) request.mutable_token_ids()->add_ids(id);
  } else if (args.Has("chat")) {
    v1::ChatMessage* message = request.mutable_chat()->add_messages();
    message->set_role("user");
    message->set_content(*args.Get("prompt"));
  } else {
    request.set_text(*args.Get("prompt"));
  }
  RETURN_IF_ERROR(SetOutputOptions(args, &request));
  return request;
}

absl::Status SetOutputOptions(const Args& args, v1::GenerateRequest* request) {
  v1::StoppingCriteria* stopping = request->mutable_stopping();
  ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 16));
  ASSIGN_OR_RETURN(int64_t min_tokens, args.GetInt("min-tokens", 0));
  if (max_tokens < 1) return absl::InvalidArgumentError("--max-tokens must be at least 1");
  if (min_tokens < 0) return absl::InvalidArgumentError("--min-tokens must not be negative");
  stopping->set_max_tokens(static_cast<uint32_t>(max_tokens));
  stopping->set_min_tokens(static_cast<uint32_t>(min_tokens));
  for (const std::string& stop : args.GetAll("stop")) stopping->add_stop(stop);
  if (args.Has("stop-token-ids")) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, args.GetTokenIds("stop-token-ids"));
    for (int32_t id : ids) stopping->add_stop_token_ids(id);
  }
  stopping->set_ignore_eos(args.Has("ignore-eos"));

  v1::SamplingParams* sampling = request->mutable_sampling();
  ASSIGN_OR_RETURN(double temperature, args.GetDouble("temperature", 0.0));
  sampling->set_temperature(static_cast<float>(temperature));
  for (auto [flag, setter] :
       std::initializer_list<std::pair<const char*, void (v1::SamplingParams::*)(float)>>{
           {"top-p", &v1::SamplingParams::set_top_p},
           {"min-p", &v1::SamplingParams::set_min_p},
           {"repetition-penalty", &v1::SamplingParams::set_repetition_penalty},
           {"presence-penalty", &v1::SamplingParams::set_presence_penalty},
           {"frequency-penalty", &v1::SamplingParams::set_frequency_penalty}}) {
    if (!args.Has(flag)) continue;
    ASSIGN_OR_RETURN(double value, args.GetDouble(flag, 0.0));
    (sampling->*setter)(static_cast<float>(value));
  }
  if (args.Has("top-k")) {
    ASSIGN_OR_RETURN(int64_t top_k, args.GetInt("top-k", 0));
    sampling->set_top_k(static_cast<int32_t>(top_k));
  }
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  sampling->set_seed(static_cast<uint64_t>(seed));
  for (const std::string& entry : args.GetAll("logit-bias")) {
    const std::pair<std::string, std::string> parts =
        absl::StrSplit(entry, absl::MaxSplits(':', 1));
    int32_t id = 0;
    float bias = 0;
    if (!absl::SimpleAtoi(parts.first, &id) || !absl::SimpleAtof(parts.second, &bias)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--logit-bias wants ID:BIAS (e.g. 42:-100), got '", entry, "'"));
    }
    (*sampling->mutable_logit_bias())[id] = bias;
  }
  return absl::OkStatus();
}

void OutputPrinter::Print(std::span<const int32_t> ids, const std::string& text) {
  if (print_ids_) {
    for (int32_t id : ids) out_ << (printed_++ ? " " : "") << id;
  } else {
    out_ << text;
  }
  out_ << std::flush;
}

void OutputPrinter::Finish() {
  // Text is printed exactly as decoded; ids end with a newline.
  if (print_ids_) out_ << "\n";
  out_ << std::flush;
}

}  // namespace dsv2::cli
