#include "server/http/openai_frontend.h"

#include <httplib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <optional>
#include <random>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/rpc/status.h"

namespace dsv2 {
namespace {

using nlohmann::json;

void Respond(httplib::Response& response, const OpenAiError& error) {
  response.status = error.http_status;
  response.set_content(OpenAiErrorBody(error).dump(-1, ' ', false, json::error_handler_t::replace),
                       "application/json");
}

void RespondStatus(httplib::Response& response, const absl::Status& status) {
  Respond(response, OpenAiErrorFromStatus(status));
}

// 128 random bits in hex: request ids (and OpenAI's response ids).
std::string RandomId(const char* prefix) {
  thread_local std::mt19937_64 random(std::random_device{}());
  const uint64_t a = random();
  const uint64_t b = random();
  std::string bytes(16, '\0');
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>(a >> (8 * i));
    bytes[8 + i] = static_cast<char>(b >> (8 * i));
  }
  return absl::StrCat(prefix, absl::BytesToHexString(bytes));
}

}  // namespace

// The Generate calls of an OpenAiFrontend not yet destroyed. A call can be
// destroyed on a gRPC callback thread (in OnDone), releasing its context's
// reference to the channel; were that the channel's last, the callback
// completion queue of the in-process channel would be shut down from one
// of its own threads (a double free inside gRPC 1.51, seen under ASan when
// a test's frontend went away right after a cancelled call). The frontend
// therefore waits for none to be left before it lets go of the channel.
class LiveGenerateCalls {
 public:
  // Counts a call for its lifetime: the first member of GenerateCall, so
  // that it goes last, after the call's context.
  class Token {
   public:
    explicit Token(std::shared_ptr<LiveGenerateCalls> calls) : calls_(std::move(calls)) {
      MutexLock lock(&calls_->mutex_);
      ++calls_->live_;
    }
    ~Token() {
      MutexLock lock(&calls_->mutex_);
      --calls_->live_;
    }
    Token(const Token&) = delete;
    Token& operator=(const Token&) = delete;

   private:
    const std::shared_ptr<LiveGenerateCalls> calls_;  // Outlives the unlock above.
  };

  void AwaitNone() {
    MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(+[](int64_t* live) { return *live == 0; }, &live_));
  }

 private:
  Mutex mutex_;
  int64_t live_ ABSL_GUARDED_BY(mutex_) = 0;
};

namespace {

// An eventfd that is readable when one of a request's Generate calls has
// something for the handler; shared by the calls, which may outlive the
// handler.
class Waker {
 public:
  Waker() : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  ~Waker() { close(fd_); }
  Waker(const Waker&) = delete;
  Waker& operator=(const Waker&) = delete;

  int fd() const { return fd_; }
  void Wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof(one));
  }
  void Drain() {
    uint64_t ignored;
    [[maybe_unused]] ssize_t n = ::read(fd_, &ignored, sizeof(ignored));
  }

 private:
  const int fd_;
};

// What a request's calls have for its handler: a message of one choice, the
// end of one, or (`client_gone`) the HTTP client left and every call was
// cancelled.
struct CallEvent {
  int choice = -1;
  std::optional<v1::GenerateResponse> message;
  bool end = false;  // The choice's call ended with `status`.
  grpc::Status status;
  bool client_gone = false;
};

// One Generate call on the in-process channel, read one message at a time
// by an HTTP handler thread: the next message is asked for only when the
// handler has taken the last, so a client that reads slowly leaves its
// output in the service's stream, under the service's bounds. Lives until
// both the handler has let go and gRPC has called OnDone, counted in the
// frontend's LiveGenerateCalls.
class GenerateCall final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  static std::shared_ptr<GenerateCall> Start(v1::Generation::Stub& stub,
                                             std::shared_ptr<LiveGenerateCalls> live,
                                             std::shared_ptr<Waker> waker,
                                             v1::GenerateRequest request,
                                             const std::string& principal) {
    std::shared_ptr<GenerateCall> call(
        new GenerateCall(std::move(live), std::move(waker), std::move(request)));
    call->self_ = call;
    if (!principal.empty()) call->context_.AddMetadata(kPrincipalMetadata, principal);
    stub.async()->Generate(&call->context_, &call->request_, call.get());
    // Reads are started by the handler, outside the reactions: the hold
    // keeps OnDone from coming while one may still be started.
    call->AddHold();
    {
      MutexLock lock(&call->mutex_);
      call->hold_ = true;
      call->reading_ = true;
    }
    call->StartRead(&call->incoming_);
    call->StartCall();
    return call;
  }

  // The next message (then the next read starts) or, after the last, the
  // end, if there is one now.
  std::optional<CallEvent> Poll() {
    CallEvent event;
    bool read_more = false;
    {
      MutexLock lock(&mutex_);
      if (ready_) {
        event.message = std::move(*ready_);
        ready_.reset();
        if (!abandoned_) read_more = reading_ = true;
      } else if (done_) {
        event.end = true;
        event.status = status_;
      } else {
        return std::nullopt;
      }
    }
    if (read_more) {
      incoming_.Clear();
      StartRead(&incoming_);
    }
    return event;
  }

  // Ends the call (the service aborts the request); idempotent: true only
  // the first time.
  bool Cancel() {
    context_.TryCancel();
    bool release = false;
    bool first = false;
    {
      MutexLock lock(&mutex_);
      first = !abandoned_;
      abandoned_ = true;
      if (hold_ && !reading_) {
        hold_ = false;
        release = true;
      }
    }
    if (release) RemoveHold();
    return first;
  }

  void OnReadDone(bool ok) override {
    bool release = false;
    {
      MutexLock lock(&mutex_);
      reading_ = false;
      if (ok) {
        ready_ = std::move(incoming_);
      } else if (hold_) {
        // No more messages: nothing will be read again.
        hold_ = false;
        release = true;
      }
      if (abandoned_ && hold_) {
        hold_ = false;
        release = true;
      }
    }
    waker_->Wake();
    if (release) RemoveHold();
  }

  void OnDone(const grpc::Status& status) override {
    {
      MutexLock lock(&mutex_);
      status_ = status;
      done_ = true;
    }
    waker_->Wake();
    self_.reset();  // May destroy this; nothing may follow.
  }

 private:
  GenerateCall(std::shared_ptr<LiveGenerateCalls> live, std::shared_ptr<Waker> waker,
               v1::GenerateRequest request)
      : live_(std::move(live)), waker_(std::move(waker)), request_(std::move(request)) {}

  const LiveGenerateCalls::Token live_;  // First: released after everything below.
  const std::shared_ptr<Waker> waker_;
  const v1::GenerateRequest request_;
  grpc::ClientContext context_;
  v1::GenerateResponse incoming_;  // Written by gRPC while reading_.
  std::shared_ptr<GenerateCall> self_;  // gRPC's reference, until OnDone.

  Mutex mutex_;
  std::optional<v1::GenerateResponse> ready_ ABSL_GUARDED_BY(mutex_);
  bool reading_ ABSL_GUARDED_BY(mutex_) = false;
  bool hold_ ABSL_GUARDED_BY(mutex_) = false;
  bool abandoned_ ABSL_GUARDED_BY(mutex_) = false;
  bool done_ ABSL_GUARDED_BY(mutex_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mutex_);
};

// A request's calls, one per choice, read as their messages come (in turn,
// so that no choice starves the others).
class ChoiceCalls {
 public:
  ChoiceCalls(v1::Generation::Stub& stub, std::shared_ptr<LiveGenerateCalls> live,
              const OpenAiRequest& request, const std::string& id, const std::string& principal)
      : waker_(std::make_shared<Waker>()), ended_(request.choices(), false) {
    for (int i = 0; i < request.choices(); ++i) {
      calls_.push_back(
          GenerateCall::Start(stub, live, waker_, ChoiceRequest(request, id, i), principal));
    }
  }

  // Whether every choice's end has been returned by Next.
  bool AllEnded() const { return ended_count_ == static_cast<int>(calls_.size()); }

  // The next message or end of a choice not ended yet (there must be one);
  // cancels every call and says so if the client leaves first.
  CallEvent Next(ClientConnection& connection) {
    const int n = static_cast<int>(calls_.size());
    while (true) {
      waker_->Drain();
      for (int k = 0; k < n; ++k) {
        const int i = (next_ + k) % n;
        if (ended_[i]) continue;
        std::optional<CallEvent> event = calls_[i]->Poll();
        if (!event) continue;
        event->choice = i;
        if (event->end) {
          ended_[i] = true;
          ++ended_count_;
        }
        next_ = (i + 1) % n;
        return *std::move(event);
      }
      if (connection.WaitReadable(waker_->fd(), absl::InfiniteFuture()) ==
          ClientConnection::Wake::kClientGone) {
        Cancel();
        return CallEvent{.client_gone = true};
      }
    }
  }

  // Ends every call; true if one was ended by this (the first time).
  bool Cancel() {
    bool first = false;
    for (const std::shared_ptr<GenerateCall>& call : calls_) first = call->Cancel() || first;
    return first;
  }

 private:
  const std::shared_ptr<Waker> waker_;
  std::vector<std::shared_ptr<GenerateCall>> calls_;
  std::vector<bool> ended_;
  int ended_count_ = 0;
  int next_ = 0;  // Where the next look starts.
};

// The failure an event reports: an end with an error status, or a message
// carrying the service's error; OK otherwise.
absl::Status EventError(const CallEvent& event) {
  if (event.end) return FromGrpcStatus(event.status);
  if (!event.message->has_error()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(event.message->error().code()),
                      event.message->error().message());
}

// What a streaming response's content provider works through.
struct StreamState {
  std::unique_ptr<ChoiceCalls> calls;
  OpenAiRequest request;
  std::unique_ptr<OpenAiResponder> responder;
  std::vector<CallEvent> early;  // Taken before the headers went out.
  bool finished = false;
};

}  // namespace

OpenAiFrontend::OpenAiFrontend(std::shared_ptr<grpc::Channel> channel,
                               OpenAiFrontendOptions options)
    : channel_(std::move(channel)),
      options_(std::move(options)),
      generation_(v1::Generation::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)),
      created_(absl::ToUnixSeconds(absl::Now())),
      live_calls_(std::make_shared<LiveGenerateCalls>()) {}

OpenAiFrontend::~OpenAiFrontend() { live_calls_->AwaitNone(); }

void OpenAiFrontend::Register(HttpServer* http) {
  const AccessPolicy policy = options_.policy;
  http->SetAuthenticate([policy](const httplib::Request& head,
                                 const ClientConnection& connection)
                            -> absl::StatusOr<std::string> {
    PresentedCredentials presented;
    const std::string authorization = head.get_header_value("Authorization");
    if (!authorization.empty()) presented.bearer_token = ParseBearer(authorization);
    if (connection.certificate()) {
      presented.certificate_name = connection.certificate()->name;
      presented.certificate_pem = connection.certificate()->pem;
    }
    absl::StatusOr<Caller> caller = policy.Authenticate(presented);
    if (!caller.ok()) return caller.status();
    return caller->principal;
  });
  http->SetErrorBody([](int status, const std::string& message, httplib::Response& response) {
    Respond(response, OpenAiErrorForHttpStatus(status, message));
  });
  http->Route("POST", "/v1/completions", true,
              [this](HttpRequest& request, httplib::Response& response) {
                Generate(OpenAiEndpoint::kCompletions, request, response);
              });
  http->Route("POST", "/v1/chat/completions", true,
              [this](HttpRequest& request, httplib::Response& response) {
                Generate(OpenAiEndpoint::kChat, request, response);
              });
  http->Route("GET", "/v1/models", true, [this](HttpRequest& request, httplib::Response& response) {
    Models(request, response);
  });
  http->Route("GET", "/health", false, [this](HttpRequest& request, httplib::Response& response) {
    Health(request, response);
  });
}

std::unique_ptr<grpc::ClientContext> OpenAiFrontend::UnaryContext(
    const std::string& principal) const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.unary_timeout));
  if (!principal.empty()) context->AddMetadata(kPrincipalMetadata, principal);
  return context;
}

absl::StatusOr<uint32_t> OpenAiFrontend::ContextLeft(const v1::GenerateRequest& request,
                                                     const std::string& principal) {
  v1::TokenizeRequest tokenize;
  *tokenize.mutable_chat() = request.chat();
  v1::TokenizeResponse ids;
  if (grpc::Status s = generation_->Tokenize(UnaryContext(principal).get(), tokenize, &ids);
      !s.ok()) {
    return FromGrpcStatus(s);
  }
  v1::ModelInfo info;
  if (grpc::Status s = generation_->GetModelInfo(UnaryContext(principal).get(), {}, &info);
      !s.ok()) {
    return FromGrpcStatus(s);
  }
  const int64_t room =
      std::min<int64_t>(info.max_model_len(), info.kv_cache_tokens()) - ids.token_ids_size();
  if (room < 1) {
    absl::Status status = absl::InvalidArgumentError(absl::StrCat(
        "the prompt is ", ids.token_ids_size(), " tokens, which leaves no room in the context of ",
        std::min<int64_t>(info.max_model_len(), info.kv_cache_tokens()), " tokens"));
    return status;
  }
  return static_cast<uint32_t>(room);
}

absl::Status OpenAiFrontend::PrepareEcho(OpenAiRequest* request, const std::string& principal) {
  if (options_.text == nullptr) {
    return absl::InvalidArgumentError(
        "echo needs the model's tokenizer, and this model has none");
  }
  for (size_t p = 0; p < request->prompts.size(); ++p) {
    v1::GenerateRequest& prompt = request->prompts[p];
    if (prompt.has_token_ids()) {
      std::unique_ptr<IncrementalTextDecoder> decoder =
          options_.text->NewDecoder(/*skip_special_tokens=*/false);
      std::string& text = request->echo_texts[p];
      for (int32_t id : prompt.token_ids().ids()) text += decoder->Append(id);
      text += decoder->Finish();
      continue;
    }
    if (request->logprobs < 0) continue;
    v1::TokenizeRequest tokenize;
    tokenize.set_text(prompt.text());
    v1::TokenizeResponse ids;
    if (grpc::Status s = generation_->Tokenize(UnaryContext(principal).get(), tokenize, &ids);
        !s.ok()) {
      return FromGrpcStatus(s);
    }
    prompt.mutable_token_ids()->mutable_ids()->Swap(ids.mutable_token_ids());
  }
  return absl::OkStatus();
}

void OpenAiFrontend::Generate(OpenAiEndpoint endpoint, HttpRequest& request,
                              httplib::Response& response) {
  absl::StatusOr<OpenAiRequest> parsed = ParseOpenAiRequest(endpoint, request.body);
  if (!parsed.ok()) return RespondStatus(response, parsed.status());
  if (!parsed->model.empty() && parsed->model != options_.model_name) {
    return Respond(response, OpenAiError{.http_status = 404,
                                         .message = absl::StrCat("The model `", parsed->model,
                                                                 "` does not exist; this server "
                                                                 "serves `",
                                                                 options_.model_name, "`."),
                                         .type = "not_found_error",
                                         .param = "model",
                                         .code = "model_not_found"});
  }
  const std::string id =
      RandomId(endpoint == OpenAiEndpoint::kChat ? "chatcmpl-" : "cmpl-");
  if (parsed->echo) {
    if (absl::Status s = PrepareEcho(&*parsed, request.principal); !s.ok()) {
      return RespondStatus(response, s);
    }
  }
  if (parsed->fill_context) {
    absl::StatusOr<uint32_t> left = ContextLeft(parsed->generate, request.principal);
    if (!left.ok()) return RespondStatus(response, left.status());
    parsed->generate.mutable_stopping()->set_max_tokens(*left);
  }

  auto calls = std::make_unique<ChoiceCalls>(*generation_, live_calls_, *parsed, id,
                                             request.principal);
  ClientConnection& connection = request.connection;
  // Nothing is sent before every choice's first message or end, so that a
  // request the service refuses, or that fails meanwhile (any of its
  // choices), gets its HTTP status.
  std::vector<CallEvent> early;
  std::vector<bool> started(parsed->choices(), false);
  for (int waiting = parsed->choices(); waiting > 0;) {
    CallEvent event = calls->Next(connection);
    if (event.client_gone) {
      ++cancelled_;
      return;
    }
    absl::Status refused = EventError(event);
    if (refused.ok() && event.end && !started[event.choice]) {
      refused = absl::InternalError("the stream ended without output");
    }
    if (!refused.ok()) {
      calls->Cancel();
      return RespondStatus(response, refused);
    }
    if (!started[event.choice]) {
      started[event.choice] = true;
      --waiting;
    }
    early.push_back(std::move(event));
  }
  const int64_t created = absl::ToUnixSeconds(absl::Now());

  if (!parsed->stream) {
    OpenAiResponder responder(*parsed, id, options_.model_name, created, options_.text);
    // The early events, then the rest until every choice has ended.
    for (size_t e = 0; !calls->AllEnded() || e < early.size(); ++e) {
      CallEvent event = e < early.size() ? std::move(early[e]) : calls->Next(connection);
      if (event.client_gone) {
        ++cancelled_;
        return;
      }
      if (absl::Status failed = EventError(event); !failed.ok()) {
        calls->Cancel();
        return RespondStatus(response, failed);
      }
      if (event.message) responder.Add(event.choice, *event.message);
    }
    response.set_content(responder.Body().dump(-1, ' ', false, json::error_handler_t::replace),
                         "application/json");
    return;
  }

  auto state = std::make_shared<StreamState>();
  state->calls = std::move(calls);
  state->request = *std::move(parsed);
  state->responder = std::make_unique<OpenAiResponder>(state->request, id, options_.model_name,
                                                       created, options_.text);
  state->early = std::move(early);
  response.set_header("Cache-Control", "no-cache");
  response.set_header("X-Accel-Buffering", "no");
  ClientConnection* client = &connection;
  std::atomic<int64_t>* cancelled = &cancelled_;
  response.set_chunked_content_provider(
      "text/event-stream",
      [state, client, cancelled](size_t, httplib::DataSink& sink) {
        // The events of the early messages at once, then one at a time.
        std::vector<CallEvent> events;
        std::string out;
        if (!state->early.empty()) {
          out = state->responder->StreamStart();
          events = std::move(state->early);
          state->early.clear();
        } else {
          events.push_back(state->calls->Next(*client));
        }
        bool last = false;
        for (CallEvent& event : events) {
          if (event.client_gone) {
            ++*cancelled;
            return false;
          }
          if (absl::Status failed = EventError(event); !failed.ok()) {
            state->calls->Cancel();
            out += OpenAiResponder::StreamError(OpenAiErrorFromStatus(failed));
            last = true;
            break;
          }
          if (event.message) out += state->responder->StreamMessage(event.choice, *event.message);
        }
        if (!last && state->calls->AllEnded()) {
          out += state->responder->StreamEnd();
          last = true;
        }
        // (An empty write would end cpp-httplib's chunked stream.)
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          // The client stopped reading or left.
          if (state->calls->Cancel()) ++*cancelled;
          return false;
        }
        if (last) {
          state->finished = true;
          sink.done();
        }
        return true;
      },
      [state, cancelled](bool) {
        // The stream ended before its last message: the client left.
        if (!state->finished && state->calls->Cancel()) ++*cancelled;
      });
}

void OpenAiFrontend::Models(HttpRequest& request, httplib::Response& response) {
  v1::ModelInfo info;
  const grpc::Status status =
      generation_->GetModelInfo(UnaryContext(request.principal).get(), {}, &info);
  if (!status.ok()) return RespondStatus(response, FromGrpcStatus(status));
  json model{{"id", options_.model_name},
             {"object", "model"},
             {"created", created_},
             {"owned_by", "dsv2-serve"},
             {"root", info.model_path()},
             {"parent", nullptr},
             {"max_model_len", info.max_model_len()}};
  response.set_content(json{{"object", "list"}, {"data", json::array({std::move(model)})}}.dump(
                           -1, ' ', false, json::error_handler_t::replace),
                       "application/json");
}

void OpenAiFrontend::Health(HttpRequest&, httplib::Response& response) {
  grpc::health::v1::HealthCheckRequest check;
  check.set_service(v1::Generation::service_full_name());
  grpc::health::v1::HealthCheckResponse answer;
  const grpc::Status status = health_->Check(UnaryContext("").get(), check, &answer);
  if (status.ok() && answer.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
    response.status = 200;
    return;
  }
  Respond(response, OpenAiErrorForHttpStatus(
                        503, status.ok() ? "the server is not serving (health NOT_SERVING)"
                                         : "the server is not serving: " + status.error_message()));
}

}  // namespace dsv2
