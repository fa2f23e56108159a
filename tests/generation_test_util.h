// What the tests of every server of the public API (standalone, router,
// cluster) share: greedy requests, and reading a Generate stream to its end.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dsv2/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace dsv2::testutil {

// Greedy decoding of `prompt` (token ids) for exactly `max_tokens` tokens.
inline v1::GenerateRequest Greedy(const std::string& id, const std::vector<int32_t>& prompt,
                                  uint32_t max_tokens) {
  v1::GenerateRequest request;
  request.set_request_id(id);
  for (int32_t t : prompt) request.mutable_token_ids()->add_ids(t);
  request.mutable_sampling()->set_temperature(0);
  request.mutable_stopping()->set_max_tokens(max_tokens);
  request.mutable_stopping()->set_ignore_eos(true);
  return request;
}

struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> tokens;  // Of every Chunk and the Complete.
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  std::vector<v1::TokenLogprob> prompt_logprobs;
  int chunks = 0;                  // Chunk messages.
  int responses = 0;               // Messages of any kind.
  std::optional<v1::Error> error;  // An Error message, if one came.
};

// Reads `reader` to its end and its status.
inline StreamResult ReadStream(grpc::ClientReader<v1::GenerateResponse>& reader) {
  StreamResult result;
  v1::GenerateResponse response;
  while (reader.Read(&response)) {
    ++result.responses;
    if (response.has_chunk()) {
      ++result.chunks;
      result.tokens.insert(result.tokens.end(), response.chunk().token_ids().begin(),
                           response.chunk().token_ids().end());
      result.text += response.chunk().text();
      result.prompt_logprobs.insert(result.prompt_logprobs.end(),
                                    response.chunk().prompt_logprobs().begin(),
                                    response.chunk().prompt_logprobs().end());
    } else if (response.has_complete()) {
      result.tokens.insert(result.tokens.end(), response.complete().token_ids().begin(),
                           response.complete().token_ids().end());
      result.text += response.complete().text();
      result.finish = response.complete().finish_reason();
      result.usage = response.complete().usage();
    } else if (response.has_error()) {
      result.error = response.error();
    }
  }
  result.status = reader.Finish();
  return result;
}

}  // namespace dsv2::testutil
