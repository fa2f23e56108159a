// OpenAI's JSON (POST /v1/completions and /v1/chat/completions, as vLLM
// serves them) translated to and from the public API's messages: a request
// body becomes a dsv2.v1.GenerateRequest, and the stream of
// GenerateResponse messages becomes OpenAI's response object or its
// server-sent events. Nothing here tokenizes, validates ranges or
// generates: the dsv2.v1.Generation service does that for every front end.
//
// Requests. The fields of OpenAI's API that map to the public API are
// read and type-checked here (a wrong type is a 400 naming the field);
// vLLM's extra sampling fields (top_k, min_p, repetition_penalty,
// ignore_eos, min_tokens, skip_special_tokens, stop_token_ids,
// return_tokens_as_token_ids) are accepted as vLLM accepts them, and so
// are several prompts, `n` (choices, each its own Generate call), and
// `echo` of completions (with logprobs: the prompt's, from the service's
// prompt_logprobs); features the server does not have (best_of other than
// n, suffix, tools, response formats and guided decoding, vLLM's
// prompt_logprobs field, beam search, custom chat templates) are a 400
// naming the field when they ask for anything but the default; any other
// field is ignored, as vLLM does.
//
//   ASSIGN_OR_RETURN(OpenAiRequest request, ParseOpenAiRequest(OpenAiEndpoint::kChat, body));
//   request.generate.set_request_id(id);
//   OpenAiResponder responder(request, id, model_name, created, text);
//   ... for each GenerateResponse:  sse += responder.StreamMessage(message);
//
// Errors are OpenAI's shape, {"error": {"message", "type", "param",
// "code"}}, with the HTTP status of the gRPC code (OpenAiErrorFromStatus).
//
// Thread safety: functions are thread-safe; an OpenAiResponder belongs to
// one request.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dsv2/v1/generation.pb.h"
#include "nlohmann/json.hpp"
#include "server/api/text_frontend.h"

namespace dsv2 {

enum class OpenAiEndpoint { kCompletions, kChat };

// The most choices (prompts × `n`) a request may ask for; OpenAI allows
// n ≤ 128.
inline constexpr int kMaxChoices = 128;
// The most bytes of prompts a request's choices may carry in all (each
// choice's request holds its own copy): 8 MiB, eight times what one request
// of the service may hold.
inline constexpr int64_t kMaxChoiceInputBytes = int64_t{8} << 20;

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  std::string model;  // As requested; empty when not given.
  // The request for dsv2.v1.Generation; request_id is the caller's to set.
  v1::GenerateRequest generate;
  bool stream = false;
  // The prompts, each a request holding only its prompt (`generate` holds
  // the first); chat: one.
  std::vector<v1::GenerateRequest> prompts;
  // Choices per prompt: choice i is prompt i / n, with seed + i % n when a
  // seed is given (the service draws one otherwise), so that they differ.
  int n = 1;
  int choices() const { return static_cast<int>(prompts.size()) * n; }
  bool include_usage = false;     // stream_options.include_usage: a last chunk with usage.
  bool continuous_usage = false;  // stream_options.continuous_usage_stats (vLLM): usage in every chunk.
  // A chat request without max_tokens / max_completion_tokens: generate up
  // to the end of the context (OpenAI's default), which needs the prompt's
  // length (the caller sets generate.stopping.max_tokens).
  bool fill_context = false;
  // Log probabilities: -1 for none, else the number of alternatives.
  int logprobs = -1;
  bool tokens_as_ids = false;  // return_tokens_as_token_ids: tokens as "token_id:N".
  // Completions: each choice's text (and logprobs) begins with its prompt's.
  // echo_texts has one per prompt: a text prompt's text, and for token ids
  // "", which the caller replaces with their text. With logprobs the caller
  // gives every prompt as token ids: the first is the first token echoed
  // (without a logprob), generate.prompt_logprobs brings the others.
  bool echo = false;
  std::vector<std::string> echo_texts;
};

// Parses and type-checks a request body. InvalidArgument names the field
// (OpenAiParam gives it for the error's `param`).
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint, std::string_view body);

// The Generate request of choice `index` (< request.choices()): `generate`
// with prompt index / n, request id `id` (one choice) or "<id>-<index>",
// and, when a seed is given, seed + index % n.
v1::GenerateRequest ChoiceRequest(const OpenAiRequest& request, const std::string& id, int index);

// The request field an InvalidArgument status is about, or "".
std::string OpenAiParam(const absl::Status& status);

struct OpenAiError {
  int http_status = 500;
  std::string message;
  std::string type;   // e.g. "invalid_request_error"
  std::string param;  // "" for null
  std::string code;   // "" for null
};

// The HTTP status and error of a status from the service (or the parser):
// INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION 400; UNAUTHENTICATED
// 401; PERMISSION_DENIED 403; NOT_FOUND 404; RESOURCE_EXHAUSTED 429;
// UNAVAILABLE 503; DEADLINE_EXCEEDED 504; CANCELLED 499; anything else 500.
OpenAiError OpenAiErrorFromStatus(const absl::Status& status);
// An error of the HTTP layer itself (413, 404 route, ...).
OpenAiError OpenAiErrorForHttpStatus(int http_status, std::string message);
// {"error": {...}}
nlohmann::json OpenAiErrorBody(const OpenAiError& error);

// OpenAI's finish_reason for the API's: "stop", "length", "abort" (vLLM's),
// "time_limit".
const char* OpenAiFinishReason(v1::FinishReason reason);

// The response to one request, built from its choices' streams of
// messages (choice i: the stream of ChoiceRequest(request, id, i)). Usage
// counts each prompt once and every choice's completion.
class OpenAiResponder {
 public:
  // `text` (may be null) names tokens in logprobs; without it, and with
  // tokens_as_ids, a token is "token_id:N".
  OpenAiResponder(const OpenAiRequest& request, std::string id, std::string model,
                  int64_t created, const TextFrontend* text);

  // Streaming. The server-sent events ("data: {...}\n\n") that begin the
  // stream (chat: the assistant role of each choice), that one Chunk or
  // Complete message of a choice becomes (possibly none), and that end it
  // (usage if asked for, then "data: [DONE]\n\n").
  std::string StreamStart();
  std::string StreamMessage(int choice, const v1::GenerateResponse& message);
  std::string StreamEnd();
  // An error after the stream began: an event with the error, then [DONE].
  static std::string StreamError(const OpenAiError& error);

  // Not streaming: every Chunk and the Complete of each choice, then the
  // response object.
  void Add(int choice, const v1::GenerateResponse& message);
  nlohmann::json Body() const;

 private:
  struct Choice {
    // Accumulated (not streaming), and the running text offset of logprobs.
    std::string text;
    nlohmann::json logprobs;
    v1::Usage usage;
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
    size_t text_offset = 0;
    // Echo: the prompt's tokens with their logprobs as they arrive (the
    // first without one), until the first output goes out with them.
    google::protobuf::RepeatedPtrField<v1::TokenLogprob> prompt;
    bool echoed = false;
  };

  // The text and logprobs that a Chunk or Complete of choice `index` adds,
  // with the echo of its prompt before its first output; false for a
  // message that adds nothing yet (prompt logprobs, which wait for it).
  bool Output(int index, const v1::GenerateResponse& message, std::string* text,
              nlohmann::json* logprobs);

  nlohmann::json ChunkObject() const;
  // The logprobs of `tokens` in the endpoint's format (a JSON object), or
  // null when none were asked for.
  // `first_unscored`: the first token has no logprob (a prompt's first).
  nlohmann::json Logprobs(const google::protobuf::RepeatedPtrField<v1::TokenLogprob>& tokens,
                          Choice& choice, bool first_unscored = false);
  static nlohmann::json UsageObject(const v1::Usage& usage);
  // The request's usage: each prompt once (from its first choice), the
  // completions of every choice.
  nlohmann::json TotalUsage() const;
  std::string TokenString(int32_t id, std::string* bytes) const;
  static std::string Event(const nlohmann::json& object);

  const OpenAiRequest& request_;
  const std::string id_;
  const std::string model_;
  const int64_t created_;
  const TextFrontend* const text_;
  std::vector<Choice> choices_;
};

}  // namespace dsv2
