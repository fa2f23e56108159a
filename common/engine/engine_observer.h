// What the engine reports as it serves, for metrics: a small interface the
// engine calls so that it needs no metrics library (common/metrics fills it
// with Prometheus histograms). Counters and gauges the engine already keeps
// are read through Engine::stats(); this carries the per-request and
// per-step observations that a snapshot cannot.
//
// Thread safety: the engine calls every method from its step thread only,
// never with its own lock held; an implementation must not call back into
// the engine.
#pragma once

#include <cstdint>

#include "common/engine/request.h"

namespace dsv2 {

// One request's life, when it ends. Times are seconds on the steady clock.
// A request that ended before it was scheduled has queue_s up to its end
// and no prefill or decode; one that ended before its first token has no
// decode. The phases follow vLLM's: queue = arrival → first scheduled,
// prefill = first scheduled → first token, decode = first token → last
// token, e2e = arrival → end (preempted time counts where it falls).
struct FinishedRequest {
  FinishReason reason = FinishReason::kStop;
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
  double e2e_s = 0;
  double queue_s = 0;
  bool scheduled = false;
  double prefill_s = 0;      // When scheduled and generation_tokens > 0.
  double decode_s = 0;       // When generation_tokens > 0.
};

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  // A step computed `tokens` tokens (prompt chunks and decode tokens).
  virtual void OnStep(int64_t tokens) = 0;
  // A request's first token, `seconds` after it arrived (time to first token).
  virtual void OnFirstToken(double seconds) = 0;
  // A later token, `seconds` after the request's previous one.
  virtual void OnNextToken(double seconds) = 0;
  virtual void OnFinished(const FinishedRequest& request) = 0;
};

}  // namespace dsv2
