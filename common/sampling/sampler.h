// Picks the next token from a row of logits: greedy when temperature is 0,
// otherwise a seeded draw from softmax(logits / temperature) restricted to
// the top_k most likely tokens and then to the smallest set whose
// probability reaches top_p (the order vLLM and HF apply them in).
#pragma once

#include <cstdint>
#include <random>

#include "absl/status/status.h"

namespace dsv2 {

struct SamplingParams {
  float temperature = 0.0f;  // 0 means greedy.
  float top_p = 1.0f;        // In (0, 1].
  int64_t top_k = 0;         // 0 means all tokens.
  uint64_t seed = 0;

  // InvalidArgument naming the field when a value is out of range.
  absl::Status Validate() const;
};

// Index of the largest logit, the lowest index among equals.
int32_t ArgMax(const float* logits, int64_t n);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  int32_t Sample(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace dsv2
