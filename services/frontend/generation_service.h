// dsv2.v1.Generation over an Engine: the gRPC glue of the public API. It
// converts requests (text and chat through the TextFrontend), maps the
// gRPC deadline and cancellation onto the engine, and streams the engine's
// events back. Everything else lives in the engine.
//
// Thread safety: gRPC calls its methods from many threads at once.
#pragma once

#include <atomic>
#include <string>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "services/frontend/text_frontend.h"

namespace dsv2 {

// The largest text or chat message accepted, in bytes.
inline constexpr size_t kMaxInputBytes = 1 << 20;

// Converts a public request into the engine's, tokenizing text and chat
// input. InvalidArgument names the offending field.
absl::StatusOr<GenerationRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                                  const TextFrontend* text);

// Token ids of a request's input (text, chat or ids).
absl::StatusOr<std::vector<int32_t>> InputTokenIds(const v1::GenerateRequest& request,
                                                   const TextFrontend* text);

// grpc::Status with the same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

class GenerationService final : public v1::Generation::Service {
 public:
  // `engine` and `text` (nullable) must outlive the service.
  GenerationService(Engine* engine, const TextFrontend* text, std::string model_path)
      : engine_(engine), text_(text), model_path_(std::move(model_path)) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                     v1::AbortResponse* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

  // Generate calls being served now.
  int64_t active_streams() const { return active_streams_.load(); }

 private:
  Engine* engine_;
  const TextFrontend* text_;
  std::string model_path_;
  std::atomic<int64_t> active_streams_{0};
};

}  // namespace dsv2
