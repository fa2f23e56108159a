#include "services/frontend/generation_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/status_macros.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;

constexpr size_t kMaxRequestIdBytes = 256;
constexpr std::chrono::seconds kAbortWait{10};
constexpr int kMaxChatMessages = 4096;

absl::StatusOr<std::vector<ChatMessage>> ChatMessages(const v1::ChatInput& chat) {
  if (chat.messages_size() > kMaxChatMessages) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat has ", chat.messages_size(), " messages; at most ", kMaxChatMessages));
  }
  std::vector<ChatMessage> turns;
  size_t total = 0;
  for (const v1::ChatMessage& m : chat.messages()) {
    total += m.content().size();
    turns.push_back({m.role(), m.content()});
  }
  if (total > kMaxInputBytes) {
    return absl::InvalidArgumentError(absl::StrCat("chat messages hold ", total,
                                                   " bytes; at most ", kMaxInputBytes));
  }
  return turns;
}

absl::StatusOr<std::vector<int32_t>> EncodeInput(const v1::GenerateRequest::InputCase input,
                                                 const std::string& text_input,
                                                 const v1::ChatInput& chat,
                                                 const v1::TokenIds& ids, const TextFrontend* text) {
  switch (input) {
    case v1::GenerateRequest::kTokenIds:
      return std::vector<int32_t>(ids.ids().begin(), ids.ids().end());
    case v1::GenerateRequest::kText:
      if (text_input.size() > kMaxInputBytes) {
        return absl::InvalidArgumentError(absl::StrCat("text is ", text_input.size(),
                                                       " bytes; at most ", kMaxInputBytes));
      }
      if (text == nullptr) {
        return absl::InvalidArgumentError("this model has no tokenizer: send token_ids");
      }
      return text->EncodeText(text_input);
    case v1::GenerateRequest::kChat: {
      ASSIGN_OR_RETURN(std::vector<ChatMessage> turns, ChatMessages(chat));
      if (text == nullptr) {
        return absl::InvalidArgumentError("this model has no tokenizer: send token_ids");
      }
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

template <typename Message>
void FillOutput(const GenerationOutput& output, Message* out) {
  for (int32_t id : output.token_ids) out->add_token_ids(id);
  out->set_text(output.text);
  for (const TokenLogprobs& lp : output.logprobs) {
    v1::TokenLogprob* entry = out->add_logprobs();
    entry->set_token_id(lp.token);
    entry->set_logprob(lp.logprob);
    for (const TokenLogprob& top : lp.top) {
      v1::TopLogprob* alt = entry->add_top();
      alt->set_token_id(top.token);
      alt->set_logprob(top.logprob);
    }
  }
  FillUsage(output.usage, out->mutable_usage());
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<std::vector<int32_t>> InputTokenIds(const v1::GenerateRequest& request,
                                                   const TextFrontend* text) {
  return EncodeInput(request.input_case(), request.text(), request.chat(), request.token_ids(),
                     text);
}

absl::StatusOr<GenerationRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                                  const TextFrontend* text) {
  GenerationRequest out;
  if (request.request_id().empty()) return absl::InvalidArgumentError("request_id is required");
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id is longer than ", kMaxRequestIdBytes, " bytes"));
  }
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

  const v1::StoppingCriteria& stop = request.stopping();
  out.max_tokens = stop.has_max_tokens() ? stop.max_tokens() : 16;
  out.min_tokens = stop.min_tokens();
  out.stop.assign(stop.stop().begin(), stop.stop().end());
  out.stop_token_ids.assign(stop.stop_token_ids().begin(), stop.stop_token_ids().end());
  out.ignore_eos = stop.ignore_eos();
  if (request.has_logprobs()) {
    if (request.logprobs() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("logprobs must be >= 0, got ", request.logprobs()));
    }
    out.logprobs = request.logprobs();
  }
  out.skip_special_tokens = !request.has_skip_special_tokens() || request.skip_special_tokens();
  return out;
}

grpc::Status GenerationService::Generate(grpc::ServerContext* context,
                                         const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  absl::StatusOr<GenerationRequest> converted = ToEngineRequest(*request, text_);
  if (!converted.ok()) return ToGrpcStatus(converted.status());
  // End a little before the call's deadline, so the client still receives
  // the final message with finish reason TIME_LIMIT.
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    const auto remaining = deadline - std::chrono::system_clock::now();
    const auto margin = std::min<std::chrono::system_clock::duration>(remaining / 10, 200ms);
    converted->deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(remaining - margin);
  }
  const std::string id = converted->id;
  absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine_->Submit(*std::move(converted));
  if (!stream.ok()) return ToGrpcStatus(stream.status());

  ++active_streams_;
  // When the client goes away the request is aborted, and the handler waits
  // a bounded time for the engine to confirm before it lets go.
  std::optional<std::chrono::steady_clock::time_point> aborted_at;
  grpc::Status result = grpc::Status::OK;
  while (true) {
    std::optional<GenerationOutput> output = (*stream)->Next(50ms);
    if (!output) {
      if (!aborted_at && context->IsCancelled()) {
        engine_->Abort(id);
        aborted_at = std::chrono::steady_clock::now();
      } else if (aborted_at && std::chrono::steady_clock::now() - *aborted_at > kAbortWait) {
        DSV2_LOG(WARNING) << "request " << id << " not ended " << kAbortWait.count()
                          << " s after its abort; leaving it to the engine";
        result = grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
        break;
      }
      continue;
    }
    v1::GenerateResponse response;
    if (output->finish == FinishReason::kError) {
      result = ToGrpcStatus(output->error);
      response.mutable_error()->set_code(result.error_code());
      response.mutable_error()->set_message(result.error_message());
    } else if (output->finish) {
      v1::Complete* complete = response.mutable_complete();
      complete->set_finish_reason(ToProto(*output->finish));
      FillOutput(*output, complete);
    } else {
      FillOutput(*output, response.mutable_chunk());
    }
    if (!aborted_at && !writer->Write(response)) {
      engine_->Abort(id);
      aborted_at = std::chrono::steady_clock::now();
    }
    if (output->finish) break;
  }
  --active_streams_;
  return result;
}

grpc::Status GenerationService::Abort(grpc::ServerContext* context,
                                      const v1::AbortRequest* request,
                                      v1::AbortResponse* response) {
  if (!engine_->Abort(request->request_id())) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no active request '", request->request_id(), "'"));
  }
  return grpc::Status::OK;
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext* context,
                                         const v1::TokenizeRequest* request,
                                         v1::TokenizeResponse* response) {
  const v1::ChatInput empty_chat;
  const v1::TokenIds no_ids;
  const auto input = request->input_case() == v1::TokenizeRequest::kText   ? v1::GenerateRequest::kText
                     : request->input_case() == v1::TokenizeRequest::kChat ? v1::GenerateRequest::kChat
                                                                           : v1::GenerateRequest::INPUT_NOT_SET;
  absl::StatusOr<std::vector<int32_t>> ids =
      EncodeInput(input, request->text(), request->chat(), no_ids, text_);
  if (!ids.ok()) return ToGrpcStatus(ids.status());
  for (int32_t id : *ids) response->add_token_ids(id);
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext* context,
                                             const v1::GetModelInfoRequest* request,
                                             v1::ModelInfo* response) {
  const ModelConfig& config = engine_->model_config();
  response->set_model_path(model_path_);
  response->set_model_type(config.model_type);
  response->set_vocab_size(static_cast<uint32_t>(config.vocab_size));
  response->set_num_hidden_layers(static_cast<uint32_t>(config.num_hidden_layers));
  response->set_max_model_len(static_cast<uint32_t>(engine_->max_model_len()));
  response->set_kv_cache_tokens(static_cast<uint32_t>(engine_->kv_capacity_tokens()));
  response->set_kv_block_size(static_cast<uint32_t>(engine_->block_size()));
  response->set_bos_token_id(static_cast<int32_t>(config.bos_token_id));
  response->set_eos_token_id(static_cast<int32_t>(config.eos_token_id));
  response->set_has_tokenizer(text_ != nullptr);
  return grpc::Status::OK;
}

}  // namespace dsv2
