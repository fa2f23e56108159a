// Reading a dsv2.v1.Generation.Generate stream to its end: what the tests
// of every server of the public API (standalone, router) compare.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dsv2/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace dsv2::testutil {

struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> tokens;  // Of every Chunk and the Complete.
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
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
