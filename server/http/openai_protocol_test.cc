// OpenAI JSON to dsv2.v1 messages and back, without a server: what each
// field becomes, what is refused and how, and the shapes of the responses
// and of their server-sent events.
#include "server/http/openai_protocol.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

OpenAiRequest Parse(OpenAiEndpoint endpoint, const std::string& body) {
  absl::StatusOr<OpenAiRequest> request = ParseOpenAiRequest(endpoint, body);
  EXPECT_TRUE(request.ok()) << body << ": " << request.status();
  return request.ok() ? *request : OpenAiRequest{};
}

// The 400 of `body`: its message and param.
std::pair<std::string, std::string> Refusal(OpenAiEndpoint endpoint, const std::string& body) {
  absl::StatusOr<OpenAiRequest> request = ParseOpenAiRequest(endpoint, body);
  EXPECT_FALSE(request.ok()) << body;
  if (request.ok()) return {};
  const OpenAiError error = OpenAiErrorFromStatus(request.status());
  EXPECT_EQ(error.http_status, 400) << body;
  EXPECT_EQ(error.type, "invalid_request_error");
  return {error.message, error.param};
}

TEST(OpenAiProtocolTest, CompletionFieldsBecomeTheRequest) {
  const OpenAiRequest r = Parse(OpenAiEndpoint::kCompletions, R"({
      "model": "m", "prompt": "Once upon", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
      "seed": 42, "stop": ["\n", "END"], "presence_penalty": 0.25, "frequency_penalty": -0.5,
      "logprobs": 3, "stream": true, "stream_options": {"include_usage": true},
      "top_k": -1, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": true,
      "include_stop_str_in_output": true,
      "min_tokens": 2, "skip_special_tokens": false, "stop_token_ids": [5, 6],
      "logit_bias": {"5": 100, "0": -100, "2147483647": 0.5},
      "user": "someone", "unknown_field": {"deep": [1, 2, {"x": null}]}, "n": 1, "best_of": null})");
  EXPECT_EQ(r.model, "m");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_FALSE(r.fill_context);
  EXPECT_EQ(r.logprobs, 3);
  const v1::GenerateRequest& g = r.generate;
  EXPECT_EQ(g.text(), "Once upon");
  EXPECT_EQ(g.stopping().max_tokens(), 7u);
  EXPECT_EQ(g.stopping().min_tokens(), 2u);
  EXPECT_TRUE(g.stopping().ignore_eos());
  EXPECT_TRUE(g.stopping().include_stop_str_in_output());
  EXPECT_THAT(g.stopping().stop(), ::testing::ElementsAre("\n", "END"));
  EXPECT_THAT(g.stopping().stop_token_ids(), ::testing::ElementsAre(5, 6));
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().top_k(), 0);  // vLLM's -1: every token.
  EXPECT_FLOAT_EQ(g.sampling().min_p(), 0.05f);
  EXPECT_FLOAT_EQ(g.sampling().repetition_penalty(), 1.1f);
  EXPECT_FLOAT_EQ(g.sampling().presence_penalty(), 0.25f);
  EXPECT_FLOAT_EQ(g.sampling().frequency_penalty(), -0.5f);
  EXPECT_EQ(g.sampling().seed(), 42u);
  EXPECT_THAT(g.sampling().logit_bias(),
              ::testing::UnorderedElementsAre(::testing::Pair(5, 100.0f),
                                              ::testing::Pair(0, -100.0f),
                                              ::testing::Pair(2147483647, 0.5f)));
  EXPECT_EQ(g.logprobs(), 3);
  EXPECT_FALSE(g.skip_special_tokens());

  // Defaults stay unset, so that the service's defaults apply.
  const OpenAiRequest d = Parse(OpenAiEndpoint::kCompletions, R"({"prompt": [1, 2, 3]})");
  EXPECT_THAT(d.generate.token_ids().ids(), ::testing::ElementsAre(1, 2, 3));
  EXPECT_FALSE(d.generate.stopping().has_max_tokens());
  EXPECT_FALSE(d.generate.sampling().has_temperature());
  EXPECT_FALSE(d.generate.has_logprobs());
  EXPECT_FALSE(d.stream);
  EXPECT_EQ(Parse(OpenAiEndpoint::kCompletions, R"({"prompt": ["one"]})").generate.text(), "one");
  EXPECT_THAT(Parse(OpenAiEndpoint::kCompletions, R"({"prompt": [[7, 8]]})").generate.token_ids().ids(),
              ::testing::ElementsAre(7, 8));
  EXPECT_EQ(Parse(OpenAiEndpoint::kCompletions, R"({"prompt": "x", "seed": -1})")
                .generate.sampling()
                .seed(),
            ~uint64_t{0});
}

TEST(OpenAiProtocolTest, ChatFieldsBecomeTheRequest) {
  const OpenAiRequest r = Parse(OpenAiEndpoint::kChat, R"({
      "messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                {"type": "text", "text": "there"}], "name": "u"},
                   {"role": "assistant", "content": null}],
      "max_tokens": 9, "max_completion_tokens": 11, "logprobs": true, "top_logprobs": 4})");
  ASSERT_EQ(r.generate.chat().messages_size(), 3);
  EXPECT_EQ(r.generate.chat().messages(0).role(), "system");
  EXPECT_EQ(r.generate.chat().messages(1).content(), "Hi\nthere");
  EXPECT_EQ(r.generate.chat().messages(2).content(), "");
  EXPECT_EQ(r.generate.stopping().max_tokens(), 11u);  // max_completion_tokens wins.
  EXPECT_EQ(r.logprobs, 4);
  EXPECT_FALSE(r.fill_context);
  // Without a limit a chat request fills the context (OpenAI's default).
  EXPECT_TRUE(Parse(OpenAiEndpoint::kChat, R"({"messages": [{"role": "user", "content": "x"}]})")
                  .fill_context);
  EXPECT_EQ(Parse(OpenAiEndpoint::kChat,
                  R"({"messages": [{"role": "user", "content": "x"}], "logprobs": false})")
                .logprobs,
            -1);
}

TEST(OpenAiProtocolTest, WrongTypesAndUnsupportedFeaturesAreNamed) {
  const auto completion = [](const std::string& body) {
    return Refusal(OpenAiEndpoint::kCompletions, body);
  };
  const auto chat = [](const std::string& body) { return Refusal(OpenAiEndpoint::kChat, body); };
  EXPECT_EQ(completion(R"({"prompt": "x", "max_tokens": "7"})"),
            std::make_pair(std::string("`max_tokens` must be an integer, not a string"),
                           std::string("max_tokens")));
  EXPECT_EQ(completion(R"({"prompt": "x", "max_tokens": 0})").second, "max_tokens");
  EXPECT_EQ(completion(R"({"prompt": "x", "max_tokens": 2.5})").second, "max_tokens");
  EXPECT_EQ(completion(R"({"prompt": "x", "temperature": "hot"})").second, "temperature");
  EXPECT_EQ(completion(R"({"prompt": "x", "temperature": 1e300})").second, "temperature");
  EXPECT_EQ(completion(R"({"prompt": "x", "stream": "yes"})").second, "stream");
  EXPECT_EQ(completion(R"({"prompt": "x", "stop": [1]})").second, "stop");
  EXPECT_EQ(completion(R"({"prompt": "x", "logprobs": 21})").second, "logprobs");
  EXPECT_EQ(completion(R"({"prompt": "x", "n": 0})").second, "n");
  EXPECT_EQ(completion(R"({"prompt": "x", "n": 129})").second, "n");
  EXPECT_EQ(completion(R"({"prompt": "x", "n": 1.5})").second, "n");
  EXPECT_EQ(completion(R"({"prompt": "x", "n": "2"})").second, "n");
  EXPECT_EQ(completion(R"({"prompt": "x", "best_of": 3})").first,
            "`best_of` must equal `n` (1): this server does not rank extra samples");
  EXPECT_EQ(completion(R"({"prompt": "x", "n": 2, "best_of": 3})").second, "best_of");
  EXPECT_EQ(completion(R"({"prompt": "x", "echo": "yes"})").second, "echo");
  EXPECT_EQ(completion(R"({"prompt": "x", "include_stop_str_in_output": 1})").second,
            "include_stop_str_in_output");
  EXPECT_EQ(Refusal(OpenAiEndpoint::kChat, R"({"messages": [{"role": "user", "content": "x"}],
                                             "echo": true})")
                .first,
            "`echo` is not supported by this server: chat completions do not echo");
  EXPECT_EQ(completion(R"({"prompt": "x", "logit_bias": [5, 100]})").first,
            "`logit_bias` must be an object of token ids to biases, not an array");
  EXPECT_EQ(completion(R"({"prompt": "x", "logit_bias": {"5": "up"}})").first,
            "`logit_bias[\"5\"]` must be a number, not a string");
  EXPECT_EQ(completion(R"({"prompt": "x", "logit_bias": {"5": 100.5}})").first,
            "`logit_bias[\"5\"]` must be in [-100, 100]");
  EXPECT_EQ(completion(R"({"prompt": "x", "logit_bias": {"5": -1e300}})").second, "logit_bias");
  EXPECT_EQ(completion(R"({"prompt": "x", "logit_bias": {"7": 1, "07": 2}})").first,
            "`logit_bias` names token id 7 twice");
  for (const char* key : {"", "-1", "+5", " 5", "5.0", "0x10", "2147483648", "99999999999"}) {
    EXPECT_EQ(completion(json{{"prompt", "x"}, {"logit_bias", {{key, 1}}}}.dump()).second,
              "logit_bias")
        << key;
  }
  // A long or binary key is quoted short and escaped.
  EXPECT_EQ(completion(json{{"prompt", "x"}, {"logit_bias", {{std::string(1000, 'k') + "\n", 1}}}}
                           .dump())
                .first,
            absl::StrCat("`logit_bias` keys must be token ids in decimal digits, not \"",
                         std::string(32, 'k'), "...\""));
  EXPECT_EQ(completion(R"({"prompt": "x", "logit_bias": {"\u0001": 1}})").first,
            "`logit_bias` keys must be token ids in decimal digits, not \"\\x01\"");
  EXPECT_EQ(completion(R"({"prompt": "x", "stream_options": {"include_usage": true}})").second,
            "stream_options");
  EXPECT_EQ(completion(R"({"prompt": ["a", [1, "x"]]})").second, "prompt[1][1]");
  EXPECT_EQ(completion(R"({"prompt": ["a", 5]})").second, "prompt[1]");
  EXPECT_EQ(completion(R"({"prompt": ["a", []]})").second, "prompt[1]");
  EXPECT_EQ(completion(R"({"prompt": ["a", "b"], "n": 65})").first,
            "`n` is 65 for each of 2 prompts: at most 128 choices in all");
  EXPECT_EQ(completion(json{{"prompt", std::vector<std::string>(129, "a")}}.dump()).second,
            "prompt");
  // Each choice copies its prompt: 8 MiB of prompts in all.
  const std::string long_prompt(100 << 10, 'a');
  EXPECT_EQ(completion(json{{"prompt", long_prompt}, {"n", 128}}.dump()).second, "n");
  EXPECT_THAT(completion(json{{"prompt", long_prompt}, {"n", 128}}.dump()).first,
              HasSubstr("the prompts of the 128 choices come to 13107"));
  EXPECT_TRUE(ParseOpenAiRequest(OpenAiEndpoint::kCompletions,
                                 json{{"prompt", long_prompt}, {"n", 64}}.dump())
                  .ok());
  EXPECT_EQ(completion(R"({"prompt": [1, -2]})").second, "prompt[1]");
  EXPECT_EQ(completion(R"({"prompt": []})").second, "prompt");
  EXPECT_EQ(completion(R"({})").first, "`prompt` is required");
  EXPECT_EQ(completion(R"({"prompt": {"a": 1}})").second, "prompt");
  EXPECT_EQ(chat(R"({"messages": "hi"})").second, "messages");
  EXPECT_EQ(chat(R"({"messages": []})").first, "`messages` is empty");
  EXPECT_EQ(chat(R"({"messages": [{"content": "x"}]})").second, "messages[0].role");
  EXPECT_EQ(chat(R"({"messages": [{"role": "user", "content": 5}]})").second,
            "messages[0].content");
  EXPECT_EQ(
      chat(R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})")
          .second,
      "messages[0].content[0]");
  EXPECT_EQ(chat(R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})").second,
            "top_logprobs");
  EXPECT_EQ(chat(R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})")
                .second,
            "tools");
  EXPECT_EQ(chat(R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})")
                .second,
            "response_format");
  // Not JSON, not an object, nested without end.
  EXPECT_THAT(completion("{\"prompt\": ").first, HasSubstr("the body is not valid JSON"));
  EXPECT_THAT(completion("[1, 2]").first, HasSubstr("must be a JSON object"));
  EXPECT_THAT(completion(std::string(100000, '[')).first, HasSubstr("nests deeper than 32"));
  EXPECT_THAT(completion("{\"prompt\": \"\xff\"}").first, HasSubstr("not valid JSON"));
}

TEST(OpenAiProtocolTest, ServiceStatusesBecomeHttpStatuses) {
  const std::pair<absl::Status, int> cases[] = {
      {absl::InvalidArgumentError("temperature must be >= 0, got -1"), 400},
      {absl::UnauthenticatedError("send `authorization: Bearer <token>`"), 401},
      {absl::PermissionDeniedError("no"), 403},
      {absl::NotFoundError("no active request"), 404},
      {absl::ResourceExhaustedError("the waiting queue is full"), 429},
      {absl::InternalError("broken"), 500},
      {absl::UnavailableError("the server is shutting down"), 503},
      {absl::DeadlineExceededError("late"), 504},
  };
  for (const auto& [status, http] : cases) {
    EXPECT_EQ(OpenAiErrorFromStatus(status).http_status, http) << status;
  }
  const OpenAiError error = OpenAiErrorFromStatus(cases[0].first);
  EXPECT_EQ(error.param, "temperature");  // From the service's message.
  EXPECT_EQ(OpenAiErrorFromStatus(absl::InvalidArgumentError(
                                      "logit_bias token id 99999 is outside the vocabulary"))
                .param,
            "logit_bias");
  EXPECT_EQ(OpenAiErrorFromStatus(absl::InvalidArgumentError(
                                      "sampling.logit_bias has 1025 entries; at most 1024"))
                .param,
            "logit_bias");
  EXPECT_EQ(OpenAiErrorBody(error),
            json::parse(R"({"error": {"message": "temperature must be >= 0, got -1",
                            "type": "invalid_request_error", "param": "temperature",
                            "code": null}})"));
  EXPECT_EQ(OpenAiErrorFromStatus(cases[1].first).code, "invalid_api_key");
}

v1::GenerateResponse ChunkOf(const std::string& text, std::vector<int32_t> ids, uint32_t completion) {
  v1::GenerateResponse response;
  v1::Chunk* chunk = response.mutable_chunk();
  chunk->set_text(text);
  for (int32_t id : ids) {
    chunk->add_token_ids(id);
    v1::TokenLogprob* lp = chunk->add_logprobs();
    lp->set_token_id(id);
    lp->set_logprob(-0.5f);
    v1::TopLogprob* top = lp->add_top();
    top->set_token_id(id + 1);
    top->set_logprob(-0.25f);
  }
  chunk->mutable_usage()->set_prompt_tokens(4);
  chunk->mutable_usage()->set_completion_tokens(completion);
  return response;
}

v1::GenerateResponse CompleteOf(v1::FinishReason reason) {
  v1::GenerateResponse response;
  response.mutable_complete()->set_finish_reason(reason);
  response.mutable_complete()->mutable_usage()->set_prompt_tokens(4);
  response.mutable_complete()->mutable_usage()->set_completion_tokens(2);
  response.mutable_complete()->mutable_usage()->set_cached_tokens(3);
  return response;
}

// "data: {...}\n\n" events as JSON, and whether [DONE] ended them.
std::vector<json> Events(const std::string& sse, bool* done) {
  std::vector<json> events;
  *done = false;
  size_t pos = 0;
  while (pos < sse.size()) {
    const size_t end = sse.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << sse;
    if (end == std::string::npos) break;
    const std::string line = sse.substr(pos, end - pos);
    EXPECT_EQ(line.rfind("data: ", 0), 0u) << line;
    EXPECT_FALSE(*done) << "an event after [DONE]";
    if (line == "data: [DONE]") {
      *done = true;
    } else {
      events.push_back(json::parse(line.substr(6)));
    }
    pos = end + 2;
  }
  return events;
}

TEST(OpenAiProtocolTest, ChatStreamsAsServerSentEvents) {
  const OpenAiRequest request = Parse(OpenAiEndpoint::kChat, R"({
      "messages": [{"role": "user", "content": "x"}], "stream": true,
      "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 1,
      "return_tokens_as_token_ids": true})");
  OpenAiResponder responder(request, "chatcmpl-1", "tiny", 1700000000, nullptr);
  std::string sse = responder.StreamStart();
  sse += responder.StreamMessage(0, ChunkOf("Hel", {10}, 1));
  sse += responder.StreamMessage(0, ChunkOf("", {}, 1));  // Says nothing.
  sse += responder.StreamMessage(0, ChunkOf("lo", {11}, 2));
  sse += responder.StreamMessage(0, CompleteOf(v1::FINISH_REASON_LENGTH));
  sse += responder.StreamEnd();
  bool done = false;
  const std::vector<json> events = Events(sse, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0]["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_EQ(events[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(events[0]["id"], "chatcmpl-1");
  EXPECT_TRUE(events[0]["usage"].is_null());
  EXPECT_EQ(events[1]["choices"][0]["delta"]["content"], "Hel");
  EXPECT_EQ(events[1]["choices"][0]["logprobs"],
            json::parse(R"({"content": [{"token": "token_id:10", "logprob": -0.5,
                            "bytes": [116,111,107,101,110,95,105,100,58,49,48],
                            "top_logprobs": [{"token": "token_id:11", "logprob": -0.25,
                                              "bytes": [116,111,107,101,110,95,105,100,58,49,49]}]}]})"));
  EXPECT_EQ(events[2]["choices"][0]["delta"]["content"], "lo");
  EXPECT_EQ(events[3]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(events[3]["choices"][0]["delta"], json::object());
  EXPECT_TRUE(events[4]["choices"].empty());
  EXPECT_EQ(events[4]["usage"], json::parse(R"({"prompt_tokens": 4, "completion_tokens": 2,
      "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 3}})"));

  bool error_done = false;
  const std::vector<json> error = Events(
      OpenAiResponder::StreamError(OpenAiErrorFromStatus(absl::UnavailableError("gone"))),
      &error_done);
  EXPECT_TRUE(error_done);
  ASSERT_EQ(error.size(), 1u);
  EXPECT_EQ(error[0]["error"]["message"], "gone");
}

// n choices: n Generate requests, ids "<id>-<i>" (one choice: "<id>"),
// seeds seed + i (none when no seed is given); each choice streams under its index, and usage
// counts the prompt once and every choice's completion.
TEST(OpenAiProtocolTest, ChoicesAreSeparateRequestsUnderTheirIndex) {
  const OpenAiRequest seeded = Parse(OpenAiEndpoint::kCompletions,
                                     R"({"prompt": "x", "n": 3, "best_of": 3, "seed": -1,
                                         "stream": true, "stream_options": {"include_usage": true}})");
  EXPECT_EQ(seeded.n, 3);
  const v1::GenerateRequest first = ChoiceRequest(seeded, "cmpl-9", 0);
  const v1::GenerateRequest third = ChoiceRequest(seeded, "cmpl-9", 2);
  EXPECT_EQ(first.request_id(), "cmpl-9-0");
  EXPECT_EQ(third.request_id(), "cmpl-9-2");
  EXPECT_EQ(first.sampling().seed(), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(third.sampling().seed(), 1u);  // Wraps around.
  EXPECT_EQ(third.text(), "x");
  const OpenAiRequest unseeded = Parse(OpenAiEndpoint::kCompletions, R"({"prompt": "x", "n": 2})");
  EXPECT_FALSE(ChoiceRequest(unseeded, "cmpl-9", 1).sampling().has_seed());
  const OpenAiRequest one = Parse(OpenAiEndpoint::kCompletions, R"({"prompt": [5, 6], "seed": 5})");
  EXPECT_EQ(ChoiceRequest(one, "cmpl-9", 0).request_id(), "cmpl-9");
  EXPECT_EQ(ChoiceRequest(one, "cmpl-9", 0).sampling().seed(), 5u);
  EXPECT_THAT(ChoiceRequest(one, "cmpl-9", 0).token_ids().ids(), ::testing::ElementsAre(5, 6));

  // Several prompts: choice i is prompt i / n, seed + i % n.
  const OpenAiRequest prompts = Parse(OpenAiEndpoint::kCompletions,
                                      R"({"prompt": ["a", [7, 8], "c"], "n": 2, "seed": 10})");
  ASSERT_EQ(prompts.choices(), 6);
  EXPECT_EQ(ChoiceRequest(prompts, "cmpl-9", 1).text(), "a");
  EXPECT_THAT(ChoiceRequest(prompts, "cmpl-9", 2).token_ids().ids(), ::testing::ElementsAre(7, 8));
  EXPECT_EQ(ChoiceRequest(prompts, "cmpl-9", 3).sampling().seed(), 11u);
  EXPECT_EQ(ChoiceRequest(prompts, "cmpl-9", 4).text(), "c");
  EXPECT_EQ(ChoiceRequest(prompts, "cmpl-9", 4).sampling().seed(), 10u);
  EXPECT_EQ(ChoiceRequest(prompts, "cmpl-9", 5).request_id(), "cmpl-9-5");
  OpenAiResponder per_prompt(prompts, "cmpl-9", "tiny", 1700000000, nullptr);
  for (int i = 0; i < 6; ++i) {
    v1::GenerateResponse done = CompleteOf(v1::FINISH_REASON_STOP);
    done.mutable_complete()->mutable_usage()->set_prompt_tokens(10 + i / 2);
    per_prompt.Add(i, done);
  }
  EXPECT_EQ(per_prompt.Body()["usage"], json::parse(R"({"prompt_tokens": 33,
      "completion_tokens": 12, "total_tokens": 45, "prompt_tokens_details": {"cached_tokens": 9}})"));

  OpenAiResponder responder(seeded, "cmpl-9", "tiny", 1700000000, nullptr);
  std::string sse = responder.StreamStart();
  sse += responder.StreamMessage(2, ChunkOf("a", {}, 1));
  sse += responder.StreamMessage(0, ChunkOf("b", {}, 1));
  for (int i : {1, 0, 2}) sse += responder.StreamMessage(i, CompleteOf(v1::FINISH_REASON_STOP));
  sse += responder.StreamEnd();
  bool done = false;
  const std::vector<json> events = Events(sse, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(events[0]["choices"][0]["index"], 2);
  EXPECT_EQ(events[0]["choices"][0]["text"], "a");
  EXPECT_EQ(events[1]["choices"][0]["index"], 0);
  EXPECT_EQ(events[2]["choices"][0]["index"], 1);
  EXPECT_EQ(events[5]["usage"], json::parse(R"({"prompt_tokens": 4, "completion_tokens": 6,
      "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 3}})"));

  const OpenAiRequest chat = Parse(OpenAiEndpoint::kChat,
                                   R"({"messages": [{"role": "user", "content": "x"}], "n": 2})");
  OpenAiResponder collected(chat, "chatcmpl-9", "tiny", 1700000000, nullptr);
  collected.Add(1, ChunkOf("one", {}, 1));
  collected.Add(0, ChunkOf("zero", {}, 1));
  collected.Add(0, CompleteOf(v1::FINISH_REASON_LENGTH));
  collected.Add(1, CompleteOf(v1::FINISH_REASON_STOP));
  const json body = collected.Body();
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["choices"][0]["index"], 0);
  EXPECT_EQ(body["choices"][0]["message"]["content"], "zero");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_EQ(body["choices"][1]["message"]["content"], "one");
  EXPECT_EQ(body["usage"]["completion_tokens"], 4);
  EXPECT_EQ(body["usage"]["prompt_tokens"], 4);
}

TEST(OpenAiProtocolTest, CompletionsCollectIntoOneResponse) {
  const OpenAiRequest request =
      Parse(OpenAiEndpoint::kCompletions,
            R"({"prompt": "x", "logprobs": 1, "return_tokens_as_token_ids": true})");
  OpenAiResponder responder(request, "cmpl-1", "tiny", 1700000000, nullptr);
  responder.Add(0, ChunkOf("Hel", {10}, 1));
  responder.Add(0, ChunkOf("lo", {11}, 2));
  responder.Add(0, CompleteOf(v1::FINISH_REASON_STOP));
  const json body = responder.Body();
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"], "Hello");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][0]["logprobs"],
            json::parse(R"({"tokens": ["token_id:10", "token_id:11"],
                            "token_logprobs": [-0.5, -0.5],
                            "top_logprobs": [{"token_id:11": -0.25, "token_id:10": -0.5},
                                             {"token_id:12": -0.25, "token_id:11": -0.5}],
                            "text_offset": [0, 11]})"));
  EXPECT_EQ(body["usage"]["total_tokens"], 6);
}

// echo: the text and logprobs of each choice begin with its prompt's; the
// prompt's logprobs (asked of the service) wait for the first output, and
// the prompt's first token has none.
TEST(OpenAiProtocolTest, EchoPutsThePromptFirst) {
  const OpenAiRequest plain =
      Parse(OpenAiEndpoint::kCompletions, R"({"prompt": ["Say", "Tell"], "echo": true})");
  EXPECT_TRUE(plain.echo);
  EXPECT_EQ(plain.echo_texts, (std::vector<std::string>{"Say", "Tell"}));
  EXPECT_FALSE(plain.generate.has_prompt_logprobs());  // Without logprobs, none.
  OpenAiResponder collected(plain, "cmpl-e", "tiny", 1, nullptr);
  collected.Add(1, ChunkOf(" hi", {10}, 1));
  collected.Add(1, CompleteOf(v1::FINISH_REASON_LENGTH));
  collected.Add(0, CompleteOf(v1::FINISH_REASON_STOP));
  EXPECT_EQ(collected.Body()["choices"][0]["text"], "Say");
  EXPECT_EQ(collected.Body()["choices"][1]["text"], "Tell hi");
  EXPECT_EQ(collected.Body()["choices"][1]["logprobs"], nullptr);

  OpenAiRequest request =
      Parse(OpenAiEndpoint::kCompletions,
            R"({"prompt": [5, 6, 7], "echo": true, "logprobs": 1,
                "return_tokens_as_token_ids": true})");
  EXPECT_EQ(request.generate.prompt_logprobs(), 1);
  request.echo_texts[0] = "five six seven";  // The caller decodes token-id prompts.
  v1::GenerateResponse prompt_part;
  for (int32_t id : {6, 7}) {
    v1::TokenLogprob* lp = prompt_part.mutable_chunk()->add_prompt_logprobs();
    lp->set_token_id(id);
    lp->set_logprob(-2.0f);
    v1::TopLogprob* top = lp->add_top();
    top->set_token_id(9);
    top->set_logprob(-0.125f);
  }
  const json expected = json::parse(R"({
      "tokens": ["token_id:5", "token_id:6", "token_id:7", "token_id:10"],
      "token_logprobs": [null, -2.0, -2.0, -0.5],
      "top_logprobs": [null, {"token_id:9": -0.125, "token_id:6": -2.0},
                       {"token_id:9": -0.125, "token_id:7": -2.0},
                       {"token_id:11": -0.25, "token_id:10": -0.5}],
      "text_offset": [0, 10, 20, 30]})");
  OpenAiResponder responder(request, "cmpl-e", "tiny", 1, nullptr);
  responder.Add(0, prompt_part);
  responder.Add(0, ChunkOf("!", {10}, 1));
  responder.Add(0, CompleteOf(v1::FINISH_REASON_LENGTH));
  EXPECT_EQ(responder.Body()["choices"][0]["text"], "five six seven!");
  EXPECT_EQ(responder.Body()["choices"][0]["logprobs"], expected);

  OpenAiResponder streamed(request, "cmpl-e", "tiny", 1, nullptr);
  EXPECT_EQ(streamed.StreamMessage(0, prompt_part), "");  // Waits for the first output.
  const std::string first = streamed.StreamMessage(0, ChunkOf("!", {10}, 1));
  ASSERT_TRUE(absl::StartsWith(first, "data: ")) << first;
  const json event = json::parse(first.substr(6));
  EXPECT_EQ(event["choices"][0]["text"], "five six seven!");
  EXPECT_EQ(event["choices"][0]["logprobs"], expected);
  const json second = json::parse(streamed.StreamMessage(0, ChunkOf("?", {12}, 2)).substr(6));
  EXPECT_EQ(second["choices"][0]["text"], "?");
  EXPECT_EQ(second["choices"][0]["logprobs"]["text_offset"], json::array({41}));
}

}  // namespace
}  // namespace dsv2
