// What a generation request asks of the engine, and what comes back.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "common/base/mutex.h"
#include "common/sampling/sampler.h"

namespace dsv2 {

struct GenerationRequest {
  // Who sent it (the authenticated principal; "" when anonymous). Ids are
  // unique per owner, and only the owner may abort a request.
  std::string owner;
  std::string id;  // Chosen by the client; unique among its owner's active requests.
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  bool has_seed = false;  // Without a seed, a random one is drawn.
  int64_t max_tokens = 16;
  int64_t min_tokens = 0;  // EOS and stop ids/strings are ignored before this many.
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;  // Stop strings; the text never includes them,
  bool include_stop_str = false;  // unless this is set: then it ends with the one that matched.
  bool ignore_eos = false;
  int32_t logprobs = -1;  // -1: none; 0: the chosen token's; N: and the top N.
  // -1: none; N: every prompt token's after the first (given the tokens
  // before it) and the top N in its place.
  int32_t prompt_logprobs = -1;
  bool skip_special_tokens = true;
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

enum class FinishReason { kStop, kLength, kAbort, kTimeLimit, kError };
const char* FinishReasonName(FinishReason reason);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // Prompt tokens found in the prefix cache.
};

struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;
};

// One event of a request's stream: new tokens and text, and on the last
// event the finish reason.
struct GenerationOutput {
  std::vector<int32_t> token_ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  // With prompt_logprobs: prompt tokens 1, 2, … in order across the events
  // that carry them (events of their own, before the first generated token).
  std::vector<TokenLogprobs> prompt_logprobs;
  std::optional<FinishReason> finish;
  absl::Status error;  // With kError: why; its code is the call's status code.
  Usage usage;        // Cumulative.
};

// The events of one request, produced by the engine and consumed by one
// reader (a gRPC stream, the CLI, a test), either by waiting (Next) or by
// being told (SetListener, then TryNext). Thread-safe.
class RequestStream {
 public:
  void Push(GenerationOutput output);
  // The next event, or nullopt when none arrives before `timeout`.
  std::optional<GenerationOutput> Next(std::chrono::milliseconds timeout);
  // The next event if one is queued.
  std::optional<GenerationOutput> TryNext();
  // Whether the final event has been pushed.
  bool finished() const;
  // Bytes of token ids, text and logprobs pushed and not yet taken: what a
  // reader that does not keep up leaves behind.
  size_t backlog_bytes() const;

  // Calls `listener` after every Push from then on (and once now if events
  // are queued), on the pushing thread; it must be quick and must not call
  // SetListener. SetListener(nullptr) returns once no call is running, so
  // the listener's owner may then go.
  void SetListener(std::function<void()> listener) ABSL_LOCKS_EXCLUDED(mutex_, listener_mutex_);

 private:
  mutable Mutex mutex_;  // Next waits on it for an event.
  std::deque<GenerationOutput> events_ ABSL_GUARDED_BY(mutex_);
  size_t backlog_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  // Held while the listener runs, so that SetListener(nullptr) can wait for
  // a call in progress; the listener may take mutex_ (TryNext).
  Mutex listener_mutex_ ABSL_ACQUIRED_BEFORE(mutex_);
  std::function<void()> listener_ ABSL_GUARDED_BY(listener_mutex_);
};

}  // namespace dsv2
