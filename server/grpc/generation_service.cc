#include "server/grpc/generation_service.h"

#include <chrono>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/mutex.h"
#include "common/base/status_macros.h"
#include "common/rpc/raw_messages.h"
#include "common/rpc/status.h"
#include "server/api/api_limits.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

absl::StatusOr<std::vector<int32_t>> EncodeInput(const v1::GenerateRequest::InputCase input,
                                                 const std::string& text_input,
                                                 const v1::ChatInput& chat,
                                                 const v1::TokenIds& ids, const TextFrontend* text) {
  switch (input) {
    case v1::GenerateRequest::kTokenIds:
      return std::vector<int32_t>(ids.ids().begin(), ids.ids().end());
    case v1::GenerateRequest::kText:
      if (text == nullptr) {
        return absl::InvalidArgumentError("this model has no tokenizer: send token_ids");
      }
      return text->EncodeText(text_input);
    case v1::GenerateRequest::kChat: {
      if (text == nullptr) {
        return absl::InvalidArgumentError("this model has no tokenizer: send token_ids");
      }
      std::vector<ChatMessage> turns;
      turns.reserve(chat.messages_size());
      for (const v1::ChatMessage& m : chat.messages()) turns.push_back({m.role(), m.content()});
      return text->EncodeChat(turns);
    }
    case v1::GenerateRequest::INPUT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("input is required: text, chat or token_ids");
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kAbort: return v1::FINISH_REASON_ABORT;
    case FinishReason::kTimeLimit: return v1::FINISH_REASON_TIME_LIMIT;
    case FinishReason::kError: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void FillUsage(const Usage& usage, v1::Usage* out) {
  out->set_prompt_tokens(static_cast<uint32_t>(usage.prompt_tokens));
  out->set_completion_tokens(static_cast<uint32_t>(usage.completion_tokens));
  out->set_cached_tokens(static_cast<uint32_t>(usage.cached_tokens));
}

void FillLogprob(const TokenLogprobs& lp, v1::TokenLogprob* entry) {
  entry->set_token_id(lp.token);
  entry->set_logprob(lp.logprob);
  for (const TokenLogprob& top : lp.top) {
    v1::TopLogprob* alt = entry->add_top();
    alt->set_token_id(top.token);
    alt->set_logprob(top.logprob);
  }
}

template <typename Message>
void FillOutput(const GenerationOutput& output, Message* out) {
  for (int32_t id : output.token_ids) out->add_token_ids(id);
  out->set_text(output.text);
  for (const TokenLogprobs& lp : output.logprobs) FillLogprob(lp, out->add_logprobs());
  FillUsage(output.usage, out->mutable_usage());
}

// Ends a unary call with `status` (and `response` when OK).
grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const absl::Status& status,
                                      const google::protobuf::Message* response = nullptr,
                                      grpc::ByteBuffer* out = nullptr) {
  if (status.ok() && response != nullptr) *out = SerializeMessage(*response);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

class FinishedReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit FinishedReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* FinishedStream(const grpc::Status& status) {
  return new FinishedReactor(status);
}

absl::StatusOr<std::vector<int32_t>> InputTokenIds(const v1::GenerateRequest& request,
                                                   const TextFrontend* text) {
  return EncodeInput(request.input_case(), request.text(), request.chat(), request.token_ids(),
                     text);
}

absl::StatusOr<GenerationRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                                  const TextFrontend* text) {
  RETURN_IF_ERROR(CheckBounds(request));
  GenerationRequest out;
  out.id = request.request_id();
  ASSIGN_OR_RETURN(out.prompt, InputTokenIds(request, text));

  const v1::SamplingParams& s = request.sampling();
  out.sampling.temperature = s.has_temperature() ? s.temperature() : 1.0f;
  out.sampling.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  out.sampling.top_k = s.has_top_k() ? s.top_k() : 0;
  out.sampling.min_p = s.has_min_p() ? s.min_p() : 0.0f;
  out.sampling.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0f;
  out.sampling.presence_penalty = s.presence_penalty();
  out.sampling.frequency_penalty = s.frequency_penalty();
  out.has_seed = s.has_seed();
  out.sampling.seed = s.seed();
  for (const auto& [token, bias] : s.logit_bias()) out.sampling.logit_bias.push_back({token, bias});
  // The map's order is unspecified; the engine's is the ids'.
  std::sort(out.sampling.logit_bias.begin(), out.sampling.logit_bias.end(),
            [](const TokenBias& a, const TokenBias& b) { return a.token < b.token; });

  const v1::StoppingCriteria& stop = request.stopping();
  out.max_tokens = stop.has_max_tokens() ? stop.max_tokens() : 16;
  out.min_tokens = stop.min_tokens();
  out.stop.assign(stop.stop().begin(), stop.stop().end());
  out.stop_token_ids.assign(stop.stop_token_ids().begin(), stop.stop_token_ids().end());
  out.ignore_eos = stop.ignore_eos();
  out.include_stop_str = stop.include_stop_str_in_output();
  if (request.has_logprobs()) out.logprobs = request.logprobs();
  if (request.has_prompt_logprobs()) out.prompt_logprobs = request.prompt_logprobs();
  out.skip_special_tokens = !request.has_skip_special_tokens() || request.skip_special_tokens();
  return out;
}

// One Generate call: the engine's events for the request, written to the
// client one at a time as the client takes them. Lives from admission
// until gRPC's OnDone (self_ keeps it); the engine's listener holds only a
// weak reference, so the stream may outlive the call.
class GenerationService::GenerateCall final
    : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
      public std::enable_shared_from_this<GenerateCall> {
 public:
  GenerateCall(GenerationService* service, grpc::CallbackServerContext* context,
               std::string owner, std::string id, std::shared_ptr<RequestStream> stream)
      : service_(service),
        owner_(std::move(owner)),
        id_(std::move(id)),
        stream_(std::move(stream)),
        guard_(service->watchdog_.NewGuard(context)) {}

  // Starts writing; call once, right after construction.
  void Start() {
    self_ = shared_from_this();
    std::weak_ptr<GenerateCall> weak = self_;
    stream_->SetListener([weak] {
      if (std::shared_ptr<GenerateCall> call = weak.lock()) call->Pump();
    });
  }

  void OnWriteDone(bool ok) override {
    service_->watchdog_.Disarm(guard_);
    bool stop = false;
    bool finish = false;
    bool last = false;
    grpc::Status last_status;
    {
      MutexLock lock(&mutex_);
      writing_ = false;
      stop = !ok || cancelled_;
      if (stop && !finished_) finished_ = finish = true;
      last = last_written_;
      last_status = last_status_;
    }
    if (last && !stop) {
      Finish(last_status);
      return;
    }
    if (last) {
      // The client left while the last message was on its way.
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled"));
      return;
    }
    if (stop) {
      // The client went away, or was cut off by the watchdog.
      service_->engine_->Abort(owner_, id_);
      if (finish) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled"));
      return;
    }
    Pump();
  }

  void OnCancel() override {
    service_->engine_->Abort(owner_, id_);
    bool finish = false;
    {
      MutexLock lock(&mutex_);
      cancelled_ = true;
      if (!writing_ && !finished_) finished_ = finish = true;
    }
    if (finish) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled"));
  }

  void OnDone() override {
    service_->watchdog_.Forget(guard_);
    --service_->active_streams_;
    self_.reset();  // May destroy this; nothing may follow.
  }

 private:
  // Writes the next event if none is being written. From the engine's
  // listener and from OnWriteDone; Start*/Finish are called without the lock.
  void Pump() ABSL_LOCKS_EXCLUDED(mutex_) {
    std::shared_ptr<GenerateCall> keep = shared_from_this();
    enum { kNothing, kWrite, kCutOff } action = kNothing;
    {
      MutexLock lock(&mutex_);
      if (finished_ || cancelled_) return;
      if (stream_->backlog_bytes() > service_->options_.max_backlog_bytes) {
        // Its writes do not keep up: the client is not reading.
        cancelled_ = true;
        action = kCutOff;
      } else if (writing_) {
        return;
      } else if (std::optional<GenerationOutput> output = stream_->TryNext()) {
        v1::GenerateResponse response;
        if (output->finish == FinishReason::kError) {
          last_status_ = ToGrpcStatus(output->error);
          response.mutable_error()->set_code(last_status_.error_code());
          response.mutable_error()->set_message(last_status_.error_message());
        } else if (output->finish) {
          v1::Complete* complete = response.mutable_complete();
          complete->set_finish_reason(ToProto(*output->finish));
          FillOutput(*output, complete);
        } else {
          FillOutput(*output, response.mutable_chunk());
          for (const TokenLogprobs& lp : output->prompt_logprobs) {
            FillLogprob(lp, response.mutable_chunk()->add_prompt_logprobs());
          }
        }
        buffer_ = SerializeMessage(response);
        writing_ = true;
        if (output->finish) finished_ = last_written_ = true;
        action = kWrite;
      }
    }
    switch (action) {
      case kNothing:
        break;
      case kWrite:
        service_->watchdog_.Arm(guard_);
        StartWrite(&buffer_);
        break;
      case kCutOff:
        // The pending write then fails and OnWriteDone finishes the call.
        service_->engine_->Abort(owner_, id_);
        DSV2_LOG(WARNING) << "request " << id_ << ": more than "
                          << service_->options_.max_backlog_bytes
                          << " bytes of output wait for a client that does not read; cut off";
        service_->watchdog_.CancelNow(guard_);
        break;
    }
  }

  GenerationService* const service_;
  const std::string owner_;
  const std::string id_;
  const std::shared_ptr<RequestStream> stream_;
  const std::shared_ptr<StreamWatchdog::Guard> guard_;
  std::shared_ptr<GenerateCall> self_;  // gRPC's reference, until OnDone.
  Mutex mutex_;
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;    // A write is in flight.
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;   // Finish was (or is being) called.
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  // The last message (Complete or Error) is being written; once it is,
  // OnWriteDone finishes the call with last_status_. (Not one
  // StartWriteAndFinish: over the in-process channel that the HTTP front end
  // reads, its message was sometimes lost and the call ended without it.)
  bool last_written_ ABSL_GUARDED_BY(mutex_) = false;
  grpc::Status last_status_ ABSL_GUARDED_BY(mutex_);
  // The message being written: filled under mutex_ as writing_ turns true,
  // then read by gRPC, without the lock, until OnWriteDone.
  grpc::ByteBuffer buffer_;
};

GenerationService::GenerationService(Engine* engine, const TextFrontend* text,
                                     std::string model_path, GenerationServiceOptions options)
    : engine_(engine),
      text_(text),
      model_path_(std::move(model_path)),
      options_(std::move(options)),
      watchdog_(options_.write_timeout) {}

GenerationService::~GenerationService() = default;

absl::StatusOr<std::string> GenerationService::Owner(const grpc::CallbackServerContext& context,
                                                     const char* method) const {
  ASSIGN_OR_RETURN(Caller caller, options_.policy.Authorize(context, {Role::kRouter}, method));
  if (options_.trust_forwarded_principal) {
    const auto& metadata = context.client_metadata();
    if (auto it = metadata.find(kPrincipalMetadata); it != metadata.end()) {
      return std::string(it->second.data(), it->second.size());
    }
  }
  return caller.principal;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  absl::StatusOr<std::string> owner = Owner(*context, "Generate");
  if (!owner.ok()) return FinishedStream(ToGrpcStatus(owner.status()));
  v1::GenerateRequest request;
  if (absl::Status s = ParseMessage(*raw, &request); !s.ok()) {
    return FinishedStream(ToGrpcStatus(s));
  }
  // Admission counts every open stream, read or not.
  if (++active_streams_ > options_.max_streams) {
    --active_streams_;
    return FinishedStream(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("too many open streams (", options_.max_streams, "); retry later")));
  }
  absl::StatusOr<GenerationRequest> converted = ToEngineRequest(request, text_);
  if (converted.ok()) {
    converted->owner = *owner;
    // End a little before the call's deadline, so the client still receives
    // the final message with finish reason TIME_LIMIT.
    const auto deadline = context->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      const auto remaining = deadline - std::chrono::system_clock::now();
      const auto margin = std::min<std::chrono::system_clock::duration>(remaining / 10, 200ms);
      converted->deadline =
          std::chrono::steady_clock::now() +
          std::chrono::duration_cast<std::chrono::steady_clock::duration>(remaining - margin);
    }
  }
  absl::StatusOr<std::shared_ptr<RequestStream>> stream =
      converted.ok() ? engine_->Submit(*converted)
                     : absl::StatusOr<std::shared_ptr<RequestStream>>(converted.status());
  if (!stream.ok()) {
    --active_streams_;
    return FinishedStream(ToGrpcStatus(stream.status()));
  }
  auto call = std::make_shared<GenerateCall>(this, context, *owner, request.request_id(),
                                             *std::move(stream));
  call->Start();
  return call.get();
}

grpc::ServerUnaryReactor* GenerationService::Abort(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw,
                                                   grpc::ByteBuffer* out) {
  absl::StatusOr<std::string> owner = Owner(*context, "Abort");
  if (!owner.ok()) return FinishUnary(context, owner.status());
  v1::AbortRequest request;
  absl::Status status = ParseMessage(*raw, &request);
  if (status.ok()) status = CheckBounds(request);
  if (status.ok() && !engine_->Abort(*owner, request.request_id())) {
    status = absl::NotFoundError(absl::StrCat("no active request '", request.request_id(), "'"));
  }
  const v1::AbortResponse response;
  return FinishUnary(context, status, &response, out);
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* raw,
                                                      grpc::ByteBuffer* out) {
  absl::StatusOr<std::string> owner = Owner(*context, "Tokenize");
  if (!owner.ok()) return FinishUnary(context, owner.status());
  v1::TokenizeRequest request;
  absl::Status status = ParseMessage(*raw, &request);
  if (status.ok()) status = CheckBounds(request);
  v1::TokenizeResponse response;
  if (status.ok()) {
    const v1::TokenIds no_ids;
    const auto input = request.input_case() == v1::TokenizeRequest::kText
                           ? v1::GenerateRequest::kText
                           : v1::GenerateRequest::kChat;
    absl::StatusOr<std::vector<int32_t>> ids =
        EncodeInput(input, request.text(), request.chat(), no_ids, text_);
    if (ids.ok()) {
      for (int32_t id : *ids) response.add_token_ids(id);
    } else {
      status = ids.status();
    }
  }
  return FinishUnary(context, status, &response, out);
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* raw,
                                                          grpc::ByteBuffer* out) {
  absl::StatusOr<std::string> owner = Owner(*context, "GetModelInfo");
  if (!owner.ok()) return FinishUnary(context, owner.status());
  v1::GetModelInfoRequest request;
  if (absl::Status s = ParseMessage(*raw, &request); !s.ok()) return FinishUnary(context, s);
  const ModelConfig& config = engine_->model_config();
  v1::ModelInfo response;
  response.set_model_path(model_path_);
  response.set_model_type(config.model_type);
  response.set_vocab_size(static_cast<uint32_t>(config.vocab_size));
  response.set_num_hidden_layers(static_cast<uint32_t>(config.num_hidden_layers));
  response.set_max_model_len(static_cast<uint32_t>(engine_->max_model_len()));
  response.set_kv_cache_tokens(static_cast<uint32_t>(engine_->kv_capacity_tokens()));
  response.set_kv_block_size(static_cast<uint32_t>(engine_->block_size()));
  response.set_bos_token_id(static_cast<int32_t>(config.bos_token_id));
  response.set_eos_token_id(static_cast<int32_t>(config.eos_token_id));
  response.set_has_tokenizer(text_ != nullptr);
  return FinishUnary(context, absl::OkStatus(), &response, out);
}

}  // namespace dsv2
