// An OpenAI request body (POST /v1/completions or /v1/chat/completions):
// the first byte picks the endpoint (even: completions, odd: chat), the rest
// is the body. A body that is refused is InvalidArgument (ResourceExhausted
// if it is too large to parse), never an unexpected-structure error. One
// that parses is within the documented bounds: 1-128 choices in all, at
// most 8 MiB of prompts across them, one prompt for chat; every choice's
// request has its prompt, its own request id and its seed (seed + i % n);
// and the responder builds a body and a stream of server-sent events for
// every choice, indexed in order, with usage counting each prompt once.
#include <limits>
#include <set>
#include <string>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/fuzz/fuzz_target.h"
#include "server/http/openai_protocol.h"

namespace dsv2::fuzz {

void FuzzOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const OpenAiEndpoint endpoint =
      data[0] % 2 == 0 ? OpenAiEndpoint::kCompletions : OpenAiEndpoint::kChat;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  absl::StatusOr<OpenAiRequest> parsed = ParseOpenAiRequest(endpoint, body);
  if (!parsed.ok()) {
    Require(parsed.status().code() == absl::StatusCode::kInvalidArgument ||
                parsed.status().code() == absl::StatusCode::kResourceExhausted,
            "a refused body is InvalidArgument (or too large to parse)");
    return;
  }
  const OpenAiRequest& request = *parsed;
  Require(request.n >= 1 && request.n <= kMaxChoices, "n is bounded");
  Require(!request.prompts.empty(), "a request has a prompt");
  Require(endpoint == OpenAiEndpoint::kCompletions || request.prompts.size() == 1,
          "chat has one conversation");
  Require(request.choices() >= 1 && request.choices() <= kMaxChoices, "choices are bounded");
  int64_t input_bytes = 0;
  for (const v1::GenerateRequest& prompt : request.prompts) {
    input_bytes += static_cast<int64_t>(prompt.ByteSizeLong()) * request.n;
  }
  Require(input_bytes <= kMaxChoiceInputBytes, "the choices' prompts are bounded");
  Require(request.logprobs >= -1 && request.logprobs <= 20, "logprobs are bounded");

  std::set<std::string> ids;
  for (int i = 0; i < request.choices(); ++i) {
    const v1::GenerateRequest choice = ChoiceRequest(request, "cmpl-f", i);
    Require(choice.input_case() != v1::GenerateRequest::INPUT_NOT_SET, "a choice has a prompt");
    Require(choice.input_case() == request.prompts[i / request.n].input_case(),
            "a choice has its prompt");
    Require(ids.insert(choice.request_id()).second, "choices have their own request ids");
    Require(choice.sampling().has_seed() == request.generate.sampling().has_seed(),
            "a seed is given to every choice or none");
    if (choice.sampling().has_seed()) {
      Require(choice.sampling().seed() ==
                  request.generate.sampling().seed() + static_cast<uint64_t>(i % request.n),
              "choice i samples with seed + i % n");
    }
  }

  // The responses: one chunk and the end of every choice, collected and
  // streamed.
  OpenAiResponder collected(request, "cmpl-f", "model", 0, nullptr);
  OpenAiResponder streamed(request, "cmpl-f", "model", 0, nullptr);
  std::string sse = streamed.StreamStart();
  for (int i = 0; i < request.choices(); ++i) {
    v1::GenerateResponse chunk;
    chunk.mutable_chunk()->set_text("\xff text");
    chunk.mutable_chunk()->add_token_ids(7);
    v1::TokenLogprob* logprob = chunk.mutable_chunk()->add_logprobs();
    logprob->set_token_id(7);
    logprob->set_logprob(-std::numeric_limits<float>::infinity());
    v1::GenerateResponse complete;
    complete.mutable_complete()->set_finish_reason(v1::FINISH_REASON_LENGTH);
    v1::Usage* usage = complete.mutable_complete()->mutable_usage();
    usage->set_prompt_tokens(10);
    usage->set_completion_tokens(1);
    for (const v1::GenerateResponse* message : {&chunk, &complete}) {
      collected.Add(i, *message);
      sse += streamed.StreamMessage(i, *message);
    }
  }
  sse += streamed.StreamEnd();
  Require(absl::EndsWith(sse, "data: [DONE]\n\n"), "a stream ends with [DONE]");
  const nlohmann::json out = collected.Body();
  Require(out["choices"].size() == static_cast<size_t>(request.choices()), "every choice answers");
  for (int i = 0; i < request.choices(); ++i) {
    Require(out["choices"][i]["index"] == i, "choices are in index order");
  }
  Require(out["usage"]["prompt_tokens"] == 10 * static_cast<int64_t>(request.prompts.size()),
          "usage counts each prompt once");
  Require(out["usage"]["completion_tokens"] == request.choices(),
          "usage counts every completion");
  out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace dsv2::fuzz
