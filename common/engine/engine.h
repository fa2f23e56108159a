// The serving engine of one process: requests in, streams of tokens out.
// A single step thread runs the scheduler, one batched forward pass per
// step over every scheduled sequence, sampling, stop checks and streaming.
// Requests join and leave at step boundaries; Abort, client cancellation
// and deadlines take effect at the next step, and every block a request
// holds goes back to the pool when it ends, however it ends.
//
// Usage:
//   Engine engine(model, tokenizer_adapter, EngineOptions{});
//   ASSIGN_OR_RETURN(auto stream, engine.Submit(request));
//   while (auto out = stream->Next(100ms)) { ... if (out->finish) break; }
//
// Thread safety: Submit, Abort, Drain, stats() and Health() may be called
// from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/base/mutex.h"
#include "common/engine/engine_observer.h"
#include "common/engine/paged_kv_cache.h"
#include "common/engine/request.h"
#include "common/engine/scheduler.h"
#include "common/engine/text_decoder.h"
#include "common/model/deepseek_v2.h"

namespace dsv2 {

struct EngineOptions {
  int64_t block_size = 64;                  // Token positions per KV block.
  int64_t kv_cache_bytes = int64_t{1} << 30;  // Memory budget of the KV cache.
  int64_t max_num_seqs = 64;                // Running sequences at most.
  int64_t max_batch_tokens = 2048;          // Tokens per step (chunked prefill).
  int64_t max_waiting = 256;                // Waiting queue bound.
  int64_t max_model_len = 0;                // Prompt + output; 0: the model's context.
  bool prefix_caching = true;
  int32_t max_logprobs = 20;
  // Micro-batches a step is split into (1–4), run concurrently so that one
  // computes while another's routed experts are on remote workers.
  int64_t micro_batches = 1;
  // Called once, from the step thread, if the engine fails fatally. A step
  // failing UNAVAILABLE or DEADLINE_EXCEEDED (remote experts unreachable or
  // late) is not fatal: the requests in that step end with that error.
  std::function<void(const absl::Status&)> on_fatal;
  // Told of every step, token and finished request (metrics); may be null.
  // Must outlive the engine.
  EngineObserver* observer = nullptr;
};

struct EngineStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;     // Referenced by a request.
  int64_t kv_blocks_cached = 0;   // Kept only for prefix reuse.
  double kv_usage = 0;            // used / total.
  int64_t prefix_queries = 0;     // Prompt tokens looked up in the prefix cache.
  int64_t prefix_hits = 0;        // Of those, tokens found.
  int64_t preemptions = 0;
  int64_t steps = 0;
  int64_t prompt_tokens = 0;      // Computed, i.e. not served from the cache.
  int64_t generation_tokens = 0;
  int64_t finished[5] = {0, 0, 0, 0, 0};  // By FinishReason.
  // Submit refusals by cause: a field out of bounds (INVALID_ARGUMENT), the
  // waiting queue full (RESOURCE_EXHAUSTED), draining or failed (UNAVAILABLE).
  int64_t rejected_invalid = 0;
  int64_t rejected_queue_full = 0;
  int64_t rejected_unavailable = 0;
};

class Engine {
 public:
  // `text` may be null for a model without a tokenizer (then stop strings
  // are rejected and outputs carry ids only). Both must outlive the engine.
  Engine(const DeepseekV2Model* model, const TextDecoderFactory* text, EngineOptions options);
  ~Engine();  // Aborts what is left and joins the step thread.
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request. InvalidArgument names the offending
  // field; ResourceExhausted when the waiting queue is full; Unavailable
  // while draining or after a fatal error.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(GenerationRequest request);
  // Ends `owner`'s request `id` with finish reason abort at the next step;
  // false if `owner` has no active request with that id.
  bool Abort(const std::string& owner, const std::string& id);
  // Stops admitting new requests (Submit returns Unavailable).
  void StopAccepting();
  // Aborts every active request.
  void AbortAll();

  EngineStats stats() const;
  int64_t num_active() const;
  // OK while the engine computes. Otherwise why it does not, for a health
  // report: after a fatal error that error (failure()), prefixed "engine
  // failed: "; when work is pending and no step has finished for
  // `stall_timeout`, UNAVAILABLE "engine stalled: ...".
  absl::Status Health(std::chrono::milliseconds stall_timeout = std::chrono::seconds(60)) const;
  // The error that made the engine fail (what on_fatal was given), or OK
  // while it has not failed: what a server reports with NOT_SERVING.
  absl::Status failure() const;
  const ModelConfig& model_config() const { return model_->config(); }
  int64_t max_model_len() const { return max_model_len_; }
  int64_t block_size() const { return cache_.block_size(); }
  int64_t kv_capacity_tokens() const { return cache_.num_blocks() * cache_.block_size(); }

 private:
  absl::StatusOr<std::shared_ptr<RequestStream>> SubmitUncounted(GenerationRequest request);
  void Loop();
  void Step();
  // ForwardBatch over options_.micro_batches concurrent micro-batches.
  absl::Status Forward(std::span<const SequenceChunk> chunks, std::vector<float>* logits);
  // Finishes aborted and timed-out sequences.
  void ReapCancelled();
  // Streams the prompt logprobs that the logits of positions [start, start
  // + n) give (n rows) and were not streamed before.
  void PushPromptLogprobs(Sequence* sequence, int64_t start, int64_t n, const float* logits);
  // Samples the next token of a sequence whose pending tokens were computed.
  void Advance(Sequence* sequence, const float* logits);
  // Ends a sequence: `out` (with the last token, if any) becomes its final
  // event, its blocks go back and its id is freed.
  void Finish(Sequence* sequence, FinishReason reason, GenerationOutput out = {});
  // Copies the scheduler's and the cache's figures into stats_ (step thread).
  void UpdateStatsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const DeepseekV2Model* model_;
  const TextDecoderFactory* text_;
  // The model's vocabulary rows the tokenizer has no token for (padding):
  // never sampled. Set before the step thread starts; read-only after.
  std::vector<int32_t> unsampled_;
  EngineOptions options_;
  int64_t max_model_len_;
  PagedKvCache cache_;
  Scheduler scheduler_;  // Step thread only.

  // The step thread waits on it for work.
  mutable Mutex mutex_;
  std::vector<std::unique_ptr<Sequence>> inbox_ ABSL_GUARDED_BY(mutex_);
  // (owner, id) of every active request, and of those to abort.
  using RequestKey = std::pair<std::string, std::string>;
  std::set<RequestKey> active_ids_ ABSL_GUARDED_BY(mutex_);
  std::set<RequestKey> abort_ids_ ABSL_GUARDED_BY(mutex_);
  bool accepting_ ABSL_GUARDED_BY(mutex_) = true;
  bool stop_ ABSL_GUARDED_BY(mutex_) = false;
  bool failed_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status failure_ ABSL_GUARDED_BY(mutex_);  // Why failed_ is set.
  bool abort_all_ ABSL_GUARDED_BY(mutex_) = false;
  EngineStats stats_ ABSL_GUARDED_BY(mutex_);
  std::chrono::steady_clock::time_point last_progress_ ABSL_GUARDED_BY(mutex_);

  std::thread thread_;
};

}  // namespace dsv2
