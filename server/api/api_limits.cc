#include "server/api/api_limits.h"

#include "absl/strings/str_cat.h"

namespace dsv2 {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::Status CheckRequestId(const std::string& id) {
  if (id.empty()) return Invalid("request_id is required");
  if (id.size() > kMaxRequestIdBytes) {
    return Invalid(absl::StrCat("request_id is ", id.size(), " bytes; at most ",
                                kMaxRequestIdBytes));
  }
  return absl::OkStatus();
}

absl::Status CheckText(const std::string& text) {
  if (text.empty()) return Invalid("text is empty");
  if (text.size() > kMaxInputBytes) {
    return Invalid(absl::StrCat("text is ", text.size(), " bytes; at most ", kMaxInputBytes));
  }
  return absl::OkStatus();
}

absl::Status CheckChat(const v1::ChatInput& chat) {
  if (chat.messages_size() == 0) return Invalid("chat.messages is empty");
  if (chat.messages_size() > kMaxChatMessages) {
    return Invalid(absl::StrCat("chat.messages has ", chat.messages_size(), " messages; at most ",
                                kMaxChatMessages));
  }
  size_t total = 0;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    if (m.role().size() > kMaxRoleBytes) {
      return Invalid(absl::StrCat("chat.messages[", i, "].role is ", m.role().size(),
                                  " bytes; at most ", kMaxRoleBytes));
    }
    total += m.content().size();
  }
  if (total > kMaxInputBytes) {
    return Invalid(absl::StrCat("chat.messages[].content hold ", total, " bytes; at most ",
                                kMaxInputBytes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckBounds(const v1::GenerateRequest& request) {
  if (absl::Status s = CheckRequestId(request.request_id()); !s.ok()) return s;
  switch (request.input_case()) {
    case v1::GenerateRequest::kText:
      if (absl::Status s = CheckText(request.text()); !s.ok()) return s;
      break;
    case v1::GenerateRequest::kChat:
      if (absl::Status s = CheckChat(request.chat()); !s.ok()) return s;
      break;
    case v1::GenerateRequest::kTokenIds:
      if (request.token_ids().ids_size() == 0) return Invalid("token_ids.ids is empty");
      if (request.token_ids().ids_size() > kMaxPromptIds) {
        return Invalid(absl::StrCat("token_ids.ids has ", request.token_ids().ids_size(),
                                    " ids; at most ", kMaxPromptIds));
      }
      break;
    case v1::GenerateRequest::INPUT_NOT_SET:
      return Invalid("input is required: text, chat or token_ids");
  }
  const v1::StoppingCriteria& stopping = request.stopping();
  if (stopping.stop_size() > kMaxStopStrings) {
    return Invalid(absl::StrCat("stopping.stop has ", stopping.stop_size(), " strings; at most ",
                                kMaxStopStrings));
  }
  for (int i = 0; i < stopping.stop_size(); ++i) {
    const size_t bytes = stopping.stop(i).size();
    if (bytes == 0 || bytes > kMaxStopStringBytes) {
      return Invalid(absl::StrCat("stopping.stop[", i, "] is ", bytes, " bytes; 1 to ",
                                  kMaxStopStringBytes));
    }
  }
  if (stopping.stop_token_ids_size() > kMaxStopTokenIds) {
    return Invalid(absl::StrCat("stopping.stop_token_ids has ", stopping.stop_token_ids_size(),
                                " ids; at most ", kMaxStopTokenIds));
  }
  if (request.sampling().logit_bias_size() > kMaxLogitBias) {
    return Invalid(absl::StrCat("sampling.logit_bias has ", request.sampling().logit_bias_size(),
                                " entries; at most ", kMaxLogitBias));
  }
  if (request.has_logprobs() && (request.logprobs() < 0 || request.logprobs() > kMaxLogprobs)) {
    return Invalid(
        absl::StrCat("logprobs must be in [0, ", kMaxLogprobs, "], got ", request.logprobs()));
  }
  if (request.has_prompt_logprobs() &&
      (request.prompt_logprobs() < 0 || request.prompt_logprobs() > kMaxLogprobs)) {
    return Invalid(absl::StrCat("prompt_logprobs must be in [0, ", kMaxLogprobs, "], got ",
                                request.prompt_logprobs()));
  }
  return absl::OkStatus();
}

absl::Status CheckBounds(const v1::TokenizeRequest& request) {
  switch (request.input_case()) {
    case v1::TokenizeRequest::kText:
      return CheckText(request.text());
    case v1::TokenizeRequest::kChat:
      return CheckChat(request.chat());
    case v1::TokenizeRequest::INPUT_NOT_SET:
      break;
  }
  return Invalid("input is required: text or chat");
}

absl::Status CheckBounds(const v1::AbortRequest& request) {
  return CheckRequestId(request.request_id());
}

}  // namespace dsv2
