// dsv2.v1.Generation over an Engine: the gRPC glue of the public API, on
// dsv2-standalone (for clients) and on attention workers (for routers). It
// authenticates each call, bounds and converts requests (text and chat
// through the TextFrontend), maps the gRPC deadline and cancellation onto
// the engine, and streams the engine's events back.
//
// Served with gRPC's callback API and raw messages:
// - no thread is held per call; a stream's output waits in its
//   RequestStream, and a client that stops reading is cut off (its call
//   cancelled, its request aborted) when more than `max_backlog_bytes` of its
//   output wait or a write is not taken within `write_timeout`;
// - open streams count against `max_streams` whether or not their clients
//   read (beyond it: RESOURCE_EXHAUSTED);
// - a request that does not parse is INVALID_ARGUMENT naming the field
//   (common/rpc/raw_messages.h); api_limits.h bounds every field.
//
// Identity: requests belong to the caller's principal (AccessPolicy), so
// request ids are per principal and only the principal that started a
// request may Abort it. With `trust_forwarded_principal` (attention workers,
// whose policy admits only routers), the principal is the one the router
// names in `dsv2-principal` metadata.
//
// Thread safety: gRPC calls it from many threads.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/engine.h"
#include "common/rpc/access.h"
#include "common/rpc/stream_watchdog.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "server/api/text_frontend.h"

namespace dsv2 {

// dsv2.v1.Generation with every method raw (grpc::ByteBuffer) on the
// callback API; the router implements it too.
using RawGenerationService = v1::Generation::WithRawCallbackMethod_Generate<
    v1::Generation::WithRawCallbackMethod_Abort<v1::Generation::WithRawCallbackMethod_Tokenize<
        v1::Generation::WithRawCallbackMethod_GetModelInfo<v1::Generation::Service>>>>;

// Converts a public request into the engine's, tokenizing text and chat
// input. InvalidArgument names the offending field.
absl::StatusOr<GenerationRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                                  const TextFrontend* text);

// Token ids of a request's input (text, chat or ids).
absl::StatusOr<std::vector<int32_t>> InputTokenIds(const v1::GenerateRequest& request,
                                                   const TextFrontend* text);

struct GenerationServiceOptions {
  AccessPolicy policy = AccessPolicy::Open();
  bool trust_forwarded_principal = false;
  int64_t max_streams = 512;
  absl::Duration write_timeout = absl::Seconds(30);
  size_t max_backlog_bytes = 4 << 20;
};

class GenerationService final : public RawGenerationService {
 public:
  // `engine` and `text` (nullable) must outlive the service.
  GenerationService(Engine* engine, const TextFrontend* text, std::string model_path,
                    GenerationServiceOptions options = {});
  ~GenerationService() override;

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

  // Generate calls open now (from admission until the client has the end).
  int64_t active_streams() const { return active_streams_.load(); }
  // Streams cut off because their client did not read (backlog or timeout).
  int64_t slow_readers_cut() const { return watchdog_.cancelled(); }

 private:
  class GenerateCall;
  // The owner of the call's requests, or UNAUTHENTICATED/PERMISSION_DENIED.
  absl::StatusOr<std::string> Owner(const grpc::CallbackServerContext& context,
                                    const char* method) const;

  Engine* engine_;
  const TextFrontend* text_;
  const std::string model_path_;
  const GenerationServiceOptions options_;
  StreamWatchdog watchdog_;
  std::atomic<int64_t> active_streams_{0};
};

// A write reactor that ends its call at once with `status`.
grpc::ServerWriteReactor<grpc::ByteBuffer>* FinishedStream(const grpc::Status& status);

}  // namespace dsv2
