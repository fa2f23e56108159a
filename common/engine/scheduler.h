// Continuous batching over the paged KV cache, first come first served:
// every step, running sequences continue (one token each in decode, the
// next chunk of the prompt in prefill) and waiting ones join while the step's
// token budget, the bound on running sequences and free blocks allow. When
// blocks run out, the newest running sequence is preempted: its blocks are
// released and it waits at the front of the queue to be recomputed (prefix
// caching usually finds most of its blocks again).
//
// Thread safety: none; owned by the engine's step thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/engine/paged_kv_cache.h"
#include "common/engine/request.h"
#include "common/engine/text_decoder.h"
#include "common/sampling/sampler.h"

namespace dsv2 {

// A request inside the engine.
struct Sequence {
  Sequence(GenerationRequest request, std::shared_ptr<RequestStream> stream, PagedKvCache* cache)
      : request(std::move(request)), stream(std::move(stream)), kv(cache) {}

  GenerationRequest request;
  std::shared_ptr<RequestStream> stream;
  std::vector<int32_t> tokens;  // The prompt, then every generated token.
  int64_t prompt_len = 0;
  PagedSequence kv;             // Holds the latents of tokens[0, kv.size()).
  int64_t cached_tokens = 0;    // Prompt tokens the prefix cache supplied at admission.
  bool admitted_before = false;
  // Prompt positions whose logits gave a prompt logprob (position p: token
  // p + 1's); recomputed positions are not reported again.
  int64_t prompt_logprobs_done = 0;
  // Output state, owned by the engine.
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<IncrementalTextDecoder> decoder;
  std::string text;             // All generated text so far.
  size_t text_sent = 0;         // Bytes of `text` already streamed.
  bool stopped_by_string = false;
  bool abort_requested = false;
  // For metrics (EngineObserver): when it arrived, was first scheduled,
  // produced its first and latest token.
  std::chrono::steady_clock::time_point arrival_time;
  std::optional<std::chrono::steady_clock::time_point> first_scheduled_time;
  std::optional<std::chrono::steady_clock::time_point> first_token_time;
  std::chrono::steady_clock::time_point last_token_time;

  int64_t num_generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
  // Whether its next chunk needs the logits of every position (prompt logprobs).
  bool wants_prompt_logits() const {
    return request.prompt_logprobs >= 0 && prompt_logprobs_done < prompt_len - 1;
  }
  int64_t num_pending() const { return static_cast<int64_t>(tokens.size()) - kv.size(); }
};

struct SchedulerOptions {
  int64_t max_num_seqs = 64;        // Running sequences at most.
  int64_t max_batch_tokens = 2048;  // Tokens per step, prefill chunks included.
  bool prefix_caching = true;
  // Positions whose logits one step computes whole for prompt logprobs:
  // bounds that step's logits to this many rows of the vocabulary.
  int64_t max_prompt_logits_tokens = 128;
};

// One sequence's work in a step: tokens[kv.size(), kv.size() + num_tokens).
struct ScheduledChunk {
  Sequence* sequence = nullptr;
  int64_t num_tokens = 0;
  bool completes = false;  // Reaches the last token, so a new token is sampled.
};

class Scheduler {
 public:
  Scheduler(PagedKvCache* cache, SchedulerOptions options) : cache_(cache), options_(options) {}

  void AddWaiting(std::unique_ptr<Sequence> sequence);
  // The work of the next step; preempts when blocks run out.
  std::vector<ScheduledChunk> Schedule();
  // Takes a sequence out (finished or aborted), returning its blocks.
  std::unique_ptr<Sequence> Remove(Sequence* sequence);

  // Every sequence, running then waiting.
  std::vector<Sequence*> AllSequences() const;
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_preemptions() const { return preemptions_; }

 private:
  void Preempt(Sequence* sequence);

  PagedKvCache* cache_;
  SchedulerOptions options_;
  std::vector<std::unique_ptr<Sequence>> running_;  // In admission order.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  int64_t preemptions_ = 0;
};

}  // namespace dsv2
