// The OpenAI-compatible API over a real engine (tests/data/tiny-v2), its
// dsv2.v1.Generation service on a real gRPC server, and HTTP on a loopback
// port, the frontend calling the service through the server's in-process
// channel: outputs equal the gRPC API's, errors have OpenAI's shape and the
// right statuses, a client that leaves cancels its request, and requests
// belong to the principal that sent them.
#include "server/http/openai_frontend.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/base/test_util.h"
#include "common/engine/engine.h"
#include "common/model/deepseek_v2.h"
#include "common/rpc/api_tokens.h"
#include "gmock/gmock.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/grpc/generation_service.h"
#include "server/http/http_server.h"
#include "tests/generation_test_util.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr char kAlice[] = "alice-token-0123456789";
constexpr char kBob[] = "bob-token-0123456789ab";

using testutil::WaitUntil;

class Fixture {
 public:
  explicit Fixture(EngineOptions engine_options = {.kv_cache_bytes = 32 << 20},
                   absl::Duration write_timeout = absl::Seconds(30),
                   const std::string& model_dir = "tests/data/tiny-v2") {
    const std::string dir = testutil::NewTestDir("openai_frontend");
    std::ofstream(dir + "/tokens") << "alice " << kAlice << "\nbob " << kBob << "\n";
    auto tokens = ApiTokens::Load(dir + "/tokens");
    EXPECT_TRUE(tokens.ok());
    const AccessPolicy policy =
        AccessPolicy::Public(std::shared_ptr<ApiTokens>(*std::move(tokens)), false);
    auto model = DeepseekV2Model::Load(model_dir);
    EXPECT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    auto text = TextFrontend::LoadIfPresent(model_dir);
    EXPECT_TRUE(text.ok());
    text_ = *std::move(text);
    engine_ = std::make_unique<Engine>(model_.get(), text_.get(), engine_options);
    service_ = std::make_unique<GenerationService>(engine_.get(), text_.get(), model_dir,
                                                   GenerationServiceOptions{.policy = policy});
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &grpc_port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    server_->GetHealthCheckService()->SetServingStatus(v1::Generation::service_full_name(), true);
    std::shared_ptr<grpc::Channel> channel = server_->InProcessChannel(grpc::ChannelArguments());
    frontend_channel_ = channel;
    frontend_ = std::make_unique<OpenAiFrontend>(
        std::move(channel),
        OpenAiFrontendOptions{.model_name = "tiny", .policy = policy, .text = text_.get()});
    http_ = std::make_unique<HttpServer>(
        HttpServerOptions{.listen = "127.0.0.1:0", .write_timeout = write_timeout});
    frontend_->Register(http_.get());
    const absl::Status started = http_->Start();
    EXPECT_TRUE(started.ok()) << started;
  }
  ~Fixture() {
    http_->Stop();
    server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  httplib::Result Post(const std::string& path, const json& body, const char* token = kAlice) {
    httplib::Client client("127.0.0.1", http_->port());
    client.set_read_timeout(60);
    httplib::Headers headers;
    if (token != nullptr) headers.emplace("Authorization", std::string("Bearer ") + token);
    return client.Post(path.c_str(), headers, body.dump(), "application/json");
  }

  // Generate over gRPC, as alice.
  testutil::StreamResult Grpc(const v1::GenerateRequest& request) {
    auto stub = v1::Generation::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(grpc_port_), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + kAlice);
    auto reader = stub->Generate(&context, request);
    return testutil::ReadStream(*reader);
  }
  grpc::Status Abort(const std::string& id, const char* token) {
    auto stub = v1::Generation::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(grpc_port_), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + token);
    v1::AbortRequest request;
    request.set_request_id(id);
    v1::AbortResponse response;
    return stub->Abort(&context, request, &response);
  }

  int http_port() const { return http_->port(); }
  // Stops the HTTP server and destroys the frontend; the frontend's channel
  // as a weak reference.
  std::weak_ptr<grpc::Channel> StopHttpAndFrontend() {
    http_->Stop();
    frontend_.reset();
    return frontend_channel_;
  }
  Engine& engine() { return *engine_; }
  grpc::Server& server() { return *server_; }
  OpenAiFrontend& frontend() { return *frontend_; }

 private:
  std::unique_ptr<DeepseekV2Model> model_;
  std::unique_ptr<TextFrontend> text_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  int grpc_port_ = 0;
  std::weak_ptr<grpc::Channel> frontend_channel_;
  std::unique_ptr<OpenAiFrontend> frontend_;
  std::unique_ptr<HttpServer> http_;
};

// The ids of "token_id:N" logprob tokens.
std::vector<int32_t> TokenIds(const json& tokens) {
  std::vector<int32_t> ids;
  for (const json& t : tokens) {
    int32_t id = -1;
    EXPECT_TRUE(absl::SimpleAtoi(t.get<std::string>().substr(9), &id)) << t;
    ids.push_back(id);
  }
  return ids;
}

// The JSON objects of an SSE body; checks the framing and the final [DONE].
std::vector<json> SseEvents(const std::string& body) {
  std::vector<json> events;
  EXPECT_TRUE(body.ends_with("data: [DONE]\n\n")) << body;
  for (absl::string_view event : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(event, "data: ")) << event;
    if (event == "data: [DONE]") continue;
    events.push_back(json::parse(event.substr(6)));
  }
  return events;
}

TEST(OpenAiFrontendTest, OutputsEqualTheGrpcApis) {
  Fixture f;
  const std::vector<int32_t> prompt = {0, 11, 12, 13, 14};
  const testutil::StreamResult grpc = f.Grpc(testutil::Greedy("g", prompt, 12));
  ASSERT_TRUE(grpc.status.ok()) << grpc.status.error_message();
  const json request{{"model", "tiny"},        {"prompt", prompt},
                     {"max_tokens", 12},       {"temperature", 0},
                     {"ignore_eos", true},     {"logprobs", 0},
                     {"return_tokens_as_token_ids", true}};
  auto plain = f.Post("/v1/completions", request);
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;
  EXPECT_EQ(plain->get_header_value("Content-Type"), "application/json");
  const json body = json::parse(plain->body);
  EXPECT_EQ(TokenIds(body["choices"][0]["logprobs"]["tokens"]), grpc.tokens);
  EXPECT_EQ(body["choices"][0]["text"], grpc.text);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(body["usage"]["completion_tokens"], 12);
  EXPECT_EQ(body["model"], "tiny");

  json streaming = request;
  streaming["stream"] = true;
  streaming["stream_options"] = {{"include_usage", true}};
  auto sse = f.Post("/v1/completions", streaming);
  ASSERT_TRUE(sse);
  ASSERT_EQ(sse->status, 200) << sse->body;
  EXPECT_EQ(sse->get_header_value("Content-Type"), "text/event-stream");
  std::string text;
  std::vector<int32_t> ids;
  const std::vector<json> events = SseEvents(sse->body);
  ASSERT_GE(events.size(), 2u);
  for (const json& event : events) {
    if (event["choices"].empty()) continue;
    text += event["choices"][0]["text"].get<std::string>();
    for (int32_t id : TokenIds(event["choices"][0]["logprobs"]["tokens"])) ids.push_back(id);
  }
  EXPECT_EQ(text, grpc.text);
  EXPECT_EQ(ids, grpc.tokens);
  EXPECT_EQ(events.back()["usage"]["completion_tokens"], 12);

  // logit_bias as over gRPC: 100 forces a token at every step.
  v1::GenerateRequest biased = testutil::Greedy("b", prompt, 6);
  const int32_t forced = grpc.tokens[0] == 7 ? 8 : 7;
  (*biased.mutable_sampling()->mutable_logit_bias())[forced] = 100;
  const testutil::StreamResult grpc_biased = f.Grpc(biased);
  ASSERT_TRUE(grpc_biased.status.ok()) << grpc_biased.status.error_message();
  EXPECT_EQ(grpc_biased.tokens, std::vector<int32_t>(6, forced));
  json biased_request = request;
  biased_request["max_tokens"] = 6;
  biased_request["logit_bias"] = {{std::to_string(forced), 100}};
  auto biased_plain = f.Post("/v1/completions", biased_request);
  ASSERT_TRUE(biased_plain);
  ASSERT_EQ(biased_plain->status, 200) << biased_plain->body;
  EXPECT_EQ(TokenIds(json::parse(biased_plain->body)["choices"][0]["logprobs"]["tokens"]),
            grpc_biased.tokens);

  // Chat: the same text streamed or not, and as the gRPC chat input gives.
  v1::GenerateRequest chat_request;
  chat_request.set_request_id("c");
  v1::ChatMessage* message = chat_request.mutable_chat()->add_messages();
  message->set_role("user");
  message->set_content("Hello there");
  chat_request.mutable_sampling()->set_temperature(0);
  chat_request.mutable_stopping()->set_max_tokens(10);
  const testutil::StreamResult grpc_chat = f.Grpc(chat_request);
  ASSERT_TRUE(grpc_chat.status.ok());
  const json chat{{"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                  {"temperature", 0},
                  {"max_tokens", 10}};
  auto chat_plain = f.Post("/v1/chat/completions", chat);
  ASSERT_TRUE(chat_plain);
  ASSERT_EQ(chat_plain->status, 200) << chat_plain->body;
  const json chat_body = json::parse(chat_plain->body);
  EXPECT_EQ(chat_body["choices"][0]["message"]["content"], grpc_chat.text);
  EXPECT_EQ(chat_body["choices"][0]["message"]["role"], "assistant");
  json chat_stream = chat;
  chat_stream["stream"] = true;
  auto chat_sse = f.Post("/v1/chat/completions", chat_stream);
  ASSERT_TRUE(chat_sse);
  std::string streamed;
  const std::vector<json> chat_events = SseEvents(chat_sse->body);
  ASSERT_GE(chat_events.size(), 2u);
  EXPECT_EQ(chat_events[0]["choices"][0]["delta"]["role"], "assistant");
  for (const json& event : chat_events) {
    const json& delta = event["choices"][0]["delta"];
    if (delta.contains("content")) streamed += delta["content"].get<std::string>();
  }
  EXPECT_EQ(streamed, grpc_chat.text);

  // A chat request without max_tokens runs to the end of the context.
  auto unlimited = f.Post("/v1/chat/completions",
                          json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                               {"temperature", 0},
                               {"ignore_eos", true}});
  ASSERT_TRUE(unlimited);
  ASSERT_EQ(unlimited->status, 200) << unlimited->body;
  const json usage = json::parse(unlimited->body)["usage"];
  EXPECT_EQ(usage["total_tokens"], f.engine().max_model_len());

  httplib::Client client("127.0.0.1", f.http_port());
  auto models = client.Get("/v1/models", {{"Authorization", std::string("Bearer ") + kBob}});
  ASSERT_TRUE(models);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny");
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

// echo: the prompt's text first, then the output's; with logprobs the
// prompt's tokens first (the first without a logprob) as the service's
// prompt logprobs score them, streamed or not; a text prompt is echoed as
// given and its logprobs are those of the tokens the model saw.
TEST(OpenAiFrontendTest, EchoPutsThePromptFirst) {
  Fixture f;
  const std::vector<int32_t> prompt = {0, 11, 12, 13, 14};
  v1::GenerateRequest scored = testutil::Greedy("scored", prompt, 4);
  scored.set_prompt_logprobs(2);
  const testutil::StreamResult grpc_scored = f.Grpc(scored);
  ASSERT_TRUE(grpc_scored.status.ok()) << grpc_scored.status.error_message();
  ASSERT_EQ(grpc_scored.prompt_logprobs.size(), prompt.size() - 1);
  const json echo_request{{"prompt", prompt},       {"max_tokens", 4},
                          {"temperature", 0},       {"ignore_eos", true},
                          {"echo", true},           {"logprobs", 2},
                          {"return_tokens_as_token_ids", true}};
  auto echo_plain = f.Post("/v1/completions", echo_request);
  ASSERT_TRUE(echo_plain);
  ASSERT_EQ(echo_plain->status, 200) << echo_plain->body;
  const json echoed = json::parse(echo_plain->body)["choices"][0];
  std::vector<int32_t> expected_ids = prompt;
  expected_ids.insert(expected_ids.end(), grpc_scored.tokens.begin(), grpc_scored.tokens.end());
  EXPECT_EQ(TokenIds(echoed["logprobs"]["tokens"]), expected_ids);
  EXPECT_EQ(echoed["logprobs"]["token_logprobs"][0], nullptr);
  EXPECT_EQ(echoed["logprobs"]["top_logprobs"][0], nullptr);
  for (size_t i = 1; i < prompt.size(); ++i) {
    EXPECT_FLOAT_EQ(echoed["logprobs"]["token_logprobs"][i].get<float>(),
                    grpc_scored.prompt_logprobs[i - 1].logprob())
        << i;
    EXPECT_EQ(echoed["logprobs"]["top_logprobs"][i].size(), 3u) << i;  // Top 2 and the token.
  }
  const std::string echo_text = echoed["text"].get<std::string>();
  EXPECT_TRUE(echo_text.ends_with(grpc_scored.text)) << echo_text;
  EXPECT_GT(echo_text.size(), grpc_scored.text.size());
  json echo_streaming = echo_request;
  echo_streaming["stream"] = true;
  auto echo_sse = f.Post("/v1/completions", echo_streaming);
  ASSERT_TRUE(echo_sse);
  std::string echo_streamed;
  std::vector<int32_t> echo_ids;
  for (const json& event : SseEvents(echo_sse->body)) {
    echo_streamed += event["choices"][0]["text"].get<std::string>();
    for (int32_t id : TokenIds(event["choices"][0]["logprobs"]["tokens"])) echo_ids.push_back(id);
  }
  EXPECT_EQ(echo_streamed, echo_text);
  EXPECT_EQ(echo_ids, expected_ids);
  // A text prompt is echoed as given.
  v1::GenerateRequest hello = testutil::Greedy("hello", {}, 5);
  hello.set_text("Hello there");
  const testutil::StreamResult grpc_hello = f.Grpc(hello);
  ASSERT_TRUE(grpc_hello.status.ok());
  auto echo_hello = f.Post("/v1/completions", json{{"prompt", "Hello there"},
                                                   {"max_tokens", 5},
                                                   {"temperature", 0},
                                                   {"ignore_eos", true},
                                                   {"echo", true}});
  ASSERT_TRUE(echo_hello);
  ASSERT_EQ(echo_hello->status, 200) << echo_hello->body;
  EXPECT_EQ(json::parse(echo_hello->body)["choices"][0]["text"], "Hello there" + grpc_hello.text);
  // With logprobs, the tokens the model saw (BOS included) and the output's.
  auto scored_hello = f.Post("/v1/completions", json{{"prompt", "Hello there"},
                                                     {"max_tokens", 5},
                                                     {"temperature", 0},
                                                     {"ignore_eos", true},
                                                     {"echo", true},
                                                     {"logprobs", 0},
                                                     {"return_tokens_as_token_ids", true}});
  ASSERT_TRUE(scored_hello);
  ASSERT_EQ(scored_hello->status, 200) << scored_hello->body;
  const json scored_body = json::parse(scored_hello->body);
  const std::vector<int32_t> hello_ids = TokenIds(scored_body["choices"][0]["logprobs"]["tokens"]);
  ASSERT_EQ(hello_ids.size(), scored_body["usage"]["prompt_tokens"].get<size_t>() + 5);
  EXPECT_EQ(std::vector<int32_t>(hello_ids.end() - 5, hello_ids.end()), grpc_hello.tokens);
  EXPECT_EQ(scored_body["choices"][0]["text"], "Hello there" + grpc_hello.text);
}

TEST(OpenAiFrontendTest, ErrorsHaveOpenAisShapeAndStatus) {
  Fixture f;
  const auto expect_error = [&](const std::string& path, const json& body, const char* token,
                                int status, const std::string& message, const json& param) {
    auto result = f.Post(path, body, token);
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, status) << result->body;
    EXPECT_EQ(result->get_header_value("Content-Type"), "application/json");
    const json error = json::parse(result->body)["error"];
    EXPECT_THAT(error["message"].get<std::string>(), HasSubstr(message));
    EXPECT_EQ(error["param"], param) << result->body;
    EXPECT_TRUE(error.contains("type") && error.contains("code")) << result->body;
  };
  const json ok{{"prompt", "Hello"}, {"max_tokens", 2}};
  expect_error("/v1/completions", ok, nullptr, 401, "Bearer", nullptr);
  expect_error("/v1/completions", ok, "wrong-token-0123456789", 401, "not valid", nullptr);
  expect_error("/v1/completions", json{{"prompt", "x"}, {"temperature", -1}}, kAlice, 400,
               "temperature must be >= 0", "temperature");
  expect_error("/v1/completions", json{{"prompt", "x"}, {"max_tokens", 100000}}, kAlice, 400,
               "exceeds the context limit", "max_tokens");
  expect_error("/v1/completions", json{{"prompt", "x"}, {"model", "gpt-4"}}, kAlice, 404,
               "The model `gpt-4` does not exist", "model");
  expect_error("/v1/completions", json{{"prompt", 5}}, kAlice, 400, "`prompt` must be",
               "prompt");
  expect_error("/v1/completions", json{{"prompt", "x"}, {"logit_bias", {{"99999", 5}}}}, kAlice,
               400, "logit_bias token id 99999 is outside the vocabulary", "logit_bias");
  expect_error("/v1/chat/completions", json{{"messages", {{{"role", "wizard"}, {"content", "x"}}}}},
               kAlice, 400, "wizard", nullptr);
  expect_error("/v1/embeddings", ok, kAlice, 404, "no such route", nullptr);

  // Overload and draining, as the service answers them.
  f.server().GetHealthCheckService()->SetServingStatus(v1::Generation::service_full_name(), false);
  f.engine().StopAccepting();
  expect_error("/v1/completions", ok, kAlice, 503, "shutting down", nullptr);
  httplib::Client client("127.0.0.1", f.http_port());
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
}

// A model without a tokenizer (token-id prompts only) cannot echo text.
TEST(OpenAiFrontendTest, EchoWithoutATokenizerIsRefused) {
  Fixture f({.kv_cache_bytes = 32 << 20}, absl::Seconds(30), "tests/data/tiny-eps");
  auto refused =
      f.Post("/v1/completions", json{{"prompt", {0, 5, 6}}, {"max_tokens", 2}, {"echo", true}});
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 400) << refused->body;
  const json error = json::parse(refused->body)["error"];
  EXPECT_EQ(error["message"], "echo needs the model's tokenizer, and this model has none");
  EXPECT_EQ(error["param"], "echo");
  auto served = f.Post("/v1/completions", json{{"prompt", {0, 5, 6}}, {"max_tokens", 2}});
  ASSERT_TRUE(served);
  EXPECT_EQ(served->status, 200) << served->body;
}

TEST(OpenAiFrontendTest, AFullQueueIs429) {
  Fixture f({.kv_cache_bytes = 32 << 20, .max_waiting = 0});
  for (int n : {1, 4}) {
    auto result =
        f.Post("/v1/completions", json{{"prompt", "Hello"}, {"max_tokens", 2}, {"n", n}});
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 429) << result->body;
    EXPECT_THAT(result->body, HasSubstr("the waiting queue is full"));
  }
  ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == 0; }));
  EXPECT_EQ(f.engine().stats().kv_blocks_used, 0);
}

// A raw HTTP client: sends a request, reads what comes, and hangs up.
class Socket {
 public:
  // receive_buffer: SO_RCVBUF before connecting (0: the system's default).
  explicit Socket(int port, int receive_buffer = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (receive_buffer > 0) {
      EXPECT_EQ(setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer)), 0);
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    EXPECT_EQ(connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  }
  ~Socket() { Close(); }
  void Post(const std::string& path, const json& body, const char* token) {
    const std::string text = body.dump();
    const std::string request = "POST " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                token + "\r\nContent-Type: application/json\r\nContent-Length: " +
                                std::to_string(text.size()) + "\r\n\r\n" + text;
    EXPECT_EQ(send(fd_, request.data(), request.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(request.size()));
  }
  // Reads until `needle` has arrived.
  std::string ReadUntil(const std::string& needle) {
    std::string out;
    char buffer[4096];
    while (out.find(needle) == std::string::npos) {
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A completion of 120 tokens: long enough to be cut off.
json LongRequest() {
  return json{{"prompt", {0, 11, 12}}, {"max_tokens", 120}, {"ignore_eos", true}};
}

// Posts LongRequest() as alice, as a stream.
void PostLongStream(Socket& client) {
  json streaming = LongRequest();
  streaming["stream"] = true;
  client.Post("/v1/completions", streaming, kAlice);
}

// The JSON body of a request that must succeed (null, and a failure, if not).
json PostOk(Fixture& f, const std::string& path, const json& request) {
  auto result = f.Post(path, request);
  if (!result || result->status != 200) {
    ADD_FAILURE() << path << ": " << (result ? result->body : "no answer");
    return nullptr;
  }
  return json::parse(result->body);
}

// n choices are n requests of the service: greedy, each is the gRPC API's
// greedy output (of its prompt, when there are several); sampled with a seed, choice i is the gRPC API's output with
// seed + i; streamed, each choice's events carry its index and add up to the
// same text; usage counts the prompt once. A client that leaves cancels
// every choice.
TEST(OpenAiFrontendTest, SeveralChoicesAreSeveralRequests) {
  Fixture f;
  const std::vector<int32_t> prompt = {0, 11, 12, 13, 14};
  const testutil::StreamResult greedy = f.Grpc(testutil::Greedy("g", prompt, 6));
  ASSERT_TRUE(greedy.status.ok()) << greedy.status.error_message();
  const json request{{"prompt", prompt}, {"max_tokens", 6}, {"temperature", 0},
                     {"ignore_eos", true}, {"n", 3}};
  const json body = PostOk(f, "/v1/completions", request);
  ASSERT_EQ(body["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(body["choices"][i]["index"], i);
    EXPECT_EQ(body["choices"][i]["text"], greedy.text) << i;
  }
  EXPECT_EQ(body["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(body["usage"]["completion_tokens"], 18);

  // Several prompts, n each: choice i is prompt i / n.
  const std::vector<int32_t> other = {0, 21, 22};
  const testutil::StreamResult other_greedy = f.Grpc(testutil::Greedy("o", other, 6));
  ASSERT_TRUE(other_greedy.status.ok()) << other_greedy.status.error_message();
  json batch = request;
  batch["prompt"] = {prompt, other};
  batch["n"] = 2;
  const json batch_body = PostOk(f, "/v1/completions", batch);
  ASSERT_EQ(batch_body["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(batch_body["choices"][i]["text"], i < 2 ? greedy.text : other_greedy.text) << i;
  }
  EXPECT_EQ(batch_body["usage"]["prompt_tokens"], 8);
  EXPECT_EQ(batch_body["usage"]["completion_tokens"], 24);

  // Sampled: choice i has seed 7 + i.
  std::vector<std::string> sampled;
  for (uint64_t seed : {7, 8, 9}) {
    v1::GenerateRequest one = testutil::Greedy("s", prompt, 6);
    one.mutable_sampling()->set_temperature(1.0f);
    one.mutable_sampling()->set_seed(seed);
    const testutil::StreamResult result = f.Grpc(one);
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    sampled.push_back(result.text);
  }
  json seeded = request;
  seeded["temperature"] = 1.0;
  seeded["seed"] = 7;
  const json varied_body = PostOk(f, "/v1/completions", seeded);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(varied_body["choices"][i]["text"], sampled[i]) << i;
  EXPECT_NE(sampled[0], sampled[1]);

  // Streamed (chat and completions): per index, the same texts.
  seeded["stream"] = true;
  seeded["stream_options"] = {{"include_usage", true}};
  auto sse = f.Post("/v1/completions", seeded);
  ASSERT_TRUE(sse);
  ASSERT_EQ(sse->status, 200) << sse->body;
  std::vector<std::string> streamed(3);
  const std::vector<json> events = SseEvents(sse->body);
  for (const json& event : events) {
    for (const json& choice : event["choices"]) {
      streamed.at(choice["index"].get<int>()) += choice["text"].get<std::string>();
    }
  }
  EXPECT_EQ(streamed, sampled);
  EXPECT_EQ(events.back()["usage"]["completion_tokens"], 18);
  EXPECT_EQ(events.back()["usage"]["prompt_tokens"], 5);
  auto chat = f.Post("/v1/chat/completions",
                     json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                          {"max_tokens", 4}, {"n", 2}, {"stream", true}});
  ASSERT_TRUE(chat);
  ASSERT_EQ(chat->status, 200) << chat->body;
  std::vector<int> roles(2, 0), finishes(2, 0);
  for (const json& event : SseEvents(chat->body)) {
    for (const json& choice : event["choices"]) {
      const int i = choice["index"];
      roles.at(i) += choice["delta"].contains("role");
      finishes.at(i) += !choice["finish_reason"].is_null();
    }
  }
  EXPECT_EQ(roles, (std::vector<int>{1, 1}));
  EXPECT_EQ(finishes, (std::vector<int>{1, 1}));

  // The client leaves mid-stream: all three are aborted, counted once.
  {
    Socket client(f.http_port());
    json streaming = LongRequest();
    streaming["stream"] = true;
    streaming["n"] = 3;
    client.Post("/v1/completions", streaming, kAlice);
    client.ReadUntil("data: {");
  }
  ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == 0; }));
  EXPECT_TRUE(WaitUntil([&] { return f.frontend().cancelled_for_clients_gone() == 1; }))
      << f.frontend().cancelled_for_clients_gone();
  const EngineStats stats = f.engine().stats();
  EXPECT_EQ(stats.finished[static_cast<int>(FinishReason::kAbort)], 3);
  EXPECT_EQ(stats.kv_blocks_used, 0);
}

TEST(OpenAiFrontendTest, AClientThatLeavesCancelsItsRequest) {
  Fixture f;
  // Mid-stream.
  {
    Socket client(f.http_port());
    PostLongStream(client);
    client.ReadUntil("data: {");
    EXPECT_EQ(f.engine().num_active(), 1);
  }
  ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == 0; }));
  // While a non-streaming request generates.
  {
    Socket client(f.http_port());
    client.Post("/v1/completions", LongRequest(), kAlice);
    ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == 1; }));
  }
  ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == 0; }));
  // The handler counts its cancel after making it, so the engine may be
  // done with the request first.
  EXPECT_TRUE(WaitUntil([&] { return f.frontend().cancelled_for_clients_gone() == 2; }))
      << f.frontend().cancelled_for_clients_gone();
  // The engine aborted both and holds none of their blocks.
  const EngineStats stats = f.engine().stats();
  EXPECT_EQ(stats.finished[static_cast<int>(FinishReason::kAbort)], 2);
  EXPECT_LT(stats.generation_tokens, 2 * 120);
  EXPECT_EQ(stats.kv_blocks_used, 0);
  // Others are served after.
  auto after = f.Post("/v1/completions", json{{"prompt", "Hello"}, {"max_tokens", 3}});
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200);
}

// A client that keeps its connection but stops reading a stream of several
// choices is cut off by the HTTP server's write timeout: every choice is
// aborted and frees its blocks, and others are served meanwhile and after.
TEST(OpenAiFrontendTest, AClientThatStopsReadingLosesAllItsChoices) {
  Fixture f({.kv_cache_bytes = 32 << 20}, absl::Milliseconds(300));
  // A small receive window, and 48 choices of 120 tokens with 20 logprobs
  // each, about 135 KB a choice: the stream outgrows the socket buffers
  // (Linux lets a send buffer grow to 4 MiB by default) long before its end.
  // The engine runs up to 64 sequences: 16 are left for others.
  constexpr int kChoices = 48;
  Socket stalled(f.http_port(), /*receive_buffer=*/4096);
  json request = LongRequest();
  request["stream"] = true;
  request["n"] = kChoices;
  request["logprobs"] = 20;
  stalled.Post("/v1/completions", request, kAlice);
  ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == kChoices; }));
  // Served while the stalled stream waits on its client.
  const json meanwhile =
      PostOk(f, "/v1/completions", json{{"prompt", "Hello"}, {"max_tokens", 3}});
  EXPECT_EQ(meanwhile["choices"].size(), 1u);
  ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == 0; }));
  EXPECT_TRUE(WaitUntil([&] { return f.frontend().cancelled_for_clients_gone() == 1; }))
      << f.frontend().cancelled_for_clients_gone();
  const EngineStats stats = f.engine().stats();
  EXPECT_EQ(stats.finished[static_cast<int>(FinishReason::kAbort)], kChoices);
  EXPECT_LT(stats.generation_tokens, kChoices * 120);
  EXPECT_EQ(stats.kv_blocks_used, 0);
  // The server closed the connection: what was sent ends without [DONE].
  const std::string received = stalled.ReadUntil("data: [DONE]");
  EXPECT_THAT(received, HasSubstr("data: {"));
  EXPECT_THAT(received, ::testing::Not(HasSubstr("data: [DONE]")));
  EXPECT_EQ(PostOk(f, "/v1/completions", json{{"prompt", "Hello"}, {"max_tokens", 3}})["choices"]
                .size(),
            1u);
}

// A frontend destroyed right after its HTTP server stopped mid-stream lets
// go of its channel itself: the cancelled call is over and gone when the
// destructor returns, so its context cannot drop the channel's last
// reference on a gRPC callback thread later.
TEST(OpenAiFrontendTest, DestroyedFrontendHasLetGoOfItsCalls) {
  // Without the wait, a round sees the call still alive about one time in
  // five.
  for (int round = 0; round < 20; ++round) {
    Fixture f;
    Socket client(f.http_port());
    PostLongStream(client);
    client.ReadUntil("data: {");
    const std::weak_ptr<grpc::Channel> channel = f.StopHttpAndFrontend();
    EXPECT_TRUE(channel.expired()) << "round " << round;
    ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == 0; }));
  }
}

// The principal reaches the service: an HTTP request is alice's, so bob
// cannot abort it over gRPC and alice can.
TEST(OpenAiFrontendTest, RequestsBelongToTheirPrincipal) {
  Fixture f;
  Socket client(f.http_port());
  PostLongStream(client);
  const std::string first = client.ReadUntil("\n\n");
  const size_t start = first.find("data: ");
  ASSERT_NE(start, std::string::npos) << first;
  const json event = json::parse(first.substr(start + 6, first.find("\n\n", start) - start - 6));
  const std::string id = event["id"];
  EXPECT_EQ(f.Abort(id, kBob).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(f.Abort(id, kAlice).ok());
  const std::string rest = client.ReadUntil("data: [DONE]");
  EXPECT_THAT(rest, HasSubstr("data: [DONE]"));
  EXPECT_THAT(rest, HasSubstr("\"finish_reason\":\"abort\""));
  ASSERT_TRUE(WaitUntil([&] { return f.engine().num_active() == 0; }));
  EXPECT_EQ(f.engine().stats().finished[static_cast<int>(FinishReason::kAbort)], 1);
}

}  // namespace
}  // namespace dsv2
