// What dsv2-load sends and when (docs/load-tests.md): the prompts (a JSONL
// dataset or synthetic ones, optionally sharing a prefix) and the arrival
// schedule of each stage (fixed concurrency, Poisson arrivals, bursts; a
// ramp is a list of stages).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv2::load {

struct Prompt {
  std::string text;                // Either text...
  std::vector<int32_t> token_ids;  // ...or token ids.
  int64_t max_tokens = 0;          // 0: the run's --max-tokens.
};

// A JSONL file: one object per line with "prompt" (a string) or
// "token_ids" (an array of non-negative integers), and optionally
// "max_tokens" (a positive integer); blank lines are skipped. At most
// `limit` prompts are read (0: all). InvalidArgument names the line and
// the field; a file without prompts is an error.
absl::StatusOr<std::vector<Prompt>> ReadDataset(const std::string& path, int64_t limit);

struct SyntheticSpec {
  int64_t count = 100;
  int64_t input_len = 128;  // Prompt tokens, ± input_jitter (uniform).
  int64_t input_jitter = 0;
  int64_t output_len = 128;  // max_tokens, ± output_jitter (uniform).
  int64_t output_jitter = 0;
  int64_t prefix_len = 0;  // Tokens every prompt starts with (the prefix cache's case).
  int64_t vocab = 32000;   // Ids are drawn from [0, vocab).
  uint64_t seed = 0;
};

// Random token-id prompts as `spec` says (the same for the same seed).
std::vector<Prompt> SyntheticPrompts(const SyntheticSpec& spec);

// One stage of a run. Closed loop: `concurrency` requests in flight, each
// answered one followed by the next. Open loop: arrivals at `rate` per
// second (Poisson: exponential gaps), or `burst` requests at once every
// `burst_period_s`; `concurrency`, if > 0, caps what is in flight (an
// arrival beyond waits). A stage ends after `duration_s` (0: none) or
// `requests` arrivals (0: none), whichever comes first.
struct Stage {
  int64_t concurrency = 0;
  double rate = 0;
  int64_t burst = 0;
  double burst_period_s = 1;
  double duration_s = 0;
  int64_t requests = 0;

  bool open_loop() const { return rate > 0 || burst > 0; }
};

// The arrival times (seconds from the stage's start) of an open-loop stage.
std::vector<double> ArrivalTimes(const Stage& stage, std::mt19937_64& rng);

// "1,2,4" → stages at those rates, each `duration_s` long.
absl::StatusOr<std::vector<Stage>> RampStages(const std::string& rates, double duration_s,
                                              int64_t max_concurrency);

}  // namespace dsv2::load
