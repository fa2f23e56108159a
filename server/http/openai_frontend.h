// The OpenAI-compatible HTTP API of dsv2-standalone and dsv2-router:
//
//   POST /v1/completions, POST /v1/chat/completions   (JSON, or server-sent events with stream)
//   GET  /v1/models
//   GET  /health                                      (200 serving, 503 not; no credentials)
//
// A translation, nothing more: each request is authenticated with the
// process's AccessPolicy (bearer tokens, client certificates of the HTTP
// server's TLS), converted by openai_protocol.h and sent to the process's
// own dsv2.v1.Generation service through its gRPC server's in-process
// channel, naming the principal (kPrincipalMetadata; trusted from the
// in-process channel only). Tokenization, bounds, admission, deadlines,
// routing and streaming are the service's, exactly as for gRPC clients:
// requests belong to their principal (Abort over gRPC reaches them), the
// same overload is refused the same way (429), and draining refuses new
// requests (503). /health asks grpc.health.v1 of the same server.
//
// A client that disconnects, mid-stream or while a non-streaming request
// is generating, cancels its call (the engine aborts the request at its
// next step and returns its KV blocks), as a cancelled gRPC call does. A
// client that stops reading is cut off by the HTTP server's write timeout.
//
// Chat requests without max_tokens generate up to the end of the context
// (OpenAI's default): the prompt is measured with Tokenize first. Echoed
// completions with logprobs send their text prompts as the ids Tokenize
// gives, so that the echoed tokens are those the model saw.
//
// Thread safety: handlers run on the HTTP server's connection threads.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/base/mutex.h"
#include "common/rpc/access.h"
#include "dsv2/v1/generation.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/api/text_frontend.h"
#include "server/http/http_server.h"
#include "server/http/openai_protocol.h"

namespace dsv2 {

class LiveGenerateCalls;  // openai_frontend.cc

struct OpenAiFrontendOptions {
  // The name /v1/models lists and requests' `model` must match (when given).
  std::string model_name;
  AccessPolicy policy = AccessPolicy::Open();
  const TextFrontend* text = nullptr;  // Token names in logprobs; may be null.
  // Deadline of the Tokenize, GetModelInfo and health calls.
  absl::Duration unary_timeout = absl::Seconds(10);
};

class OpenAiFrontend {
 public:
  // `channel` reaches the process's own dsv2.v1.Generation and
  // grpc.health.v1 (grpc::Server::InProcessChannel).
  OpenAiFrontend(std::shared_ptr<grpc::Channel> channel, OpenAiFrontendOptions options);
  // Waits until every Generate call it started is over and gone (the HTTP
  // server it registered with must be stopped first; the calls its
  // handlers left end once gRPC reports them done), so that the channel's
  // last reference is dropped here, never on a gRPC callback thread.
  ~OpenAiFrontend();

  // Adds the routes, authentication and error bodies to `http` (before it
  // starts; it must not outlive this object).
  void Register(HttpServer* http);

  // Calls cancelled because their client left.
  int64_t cancelled_for_clients_gone() const { return cancelled_.load(); }

 private:
  void Generate(OpenAiEndpoint endpoint, HttpRequest& request, httplib::Response& response);
  void Models(HttpRequest& request, httplib::Response& response);
  void Health(HttpRequest& request, httplib::Response& response);
  // max_tokens for a chat request that gave none: the context left after
  // its prompt.
  absl::StatusOr<uint32_t> ContextLeft(const v1::GenerateRequest& request,
                                       const std::string& principal);
  // For `echo`: the token-id prompts' echo_texts, decoded; with logprobs,
  // text prompts become their token ids.
  absl::Status PrepareEcho(OpenAiRequest* request, const std::string& principal);
  std::unique_ptr<grpc::ClientContext> UnaryContext(const std::string& principal) const;

  const std::shared_ptr<grpc::Channel> channel_;
  const OpenAiFrontendOptions options_;
  const std::unique_ptr<v1::Generation::Stub> generation_;
  const std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  const int64_t created_;  // When the model was first served (for /v1/models).
  std::atomic<int64_t> cancelled_{0};
  const std::shared_ptr<LiveGenerateCalls> live_calls_;
};

}  // namespace dsv2
