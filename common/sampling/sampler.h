// Turning a row of logits into the next token, as vLLM and HF do:
//   1. the request's logit biases added to the raw logits, then penalties
//      (repetition over prompt and output; presence and frequency over the
//      output),
//   2. greedy when temperature is 0; otherwise softmax(logits / temperature)
//      restricted to the top_k most likely tokens, then to the smallest set
//      whose probability reaches top_p, then to tokens with at least min_p
//      times the top probability, and a seeded draw from what is left.
// Logprobs are reported from the raw model distribution (before penalties
// and temperature), as vLLM does by default.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace dsv2 {

struct TokenBias {
  int32_t token = 0;
  float bias = 0.0f;  // In [-100, 100].
};

struct SamplingParams {
  float temperature = 0.0f;  // 0 means greedy.
  float top_p = 1.0f;        // In (0, 1].
  int64_t top_k = 0;         // 0 means all tokens.
  float min_p = 0.0f;        // In [0, 1].
  float repetition_penalty = 1.0f;  // > 0; 1 is off.
  float presence_penalty = 0.0f;    // In [-2, 2].
  float frequency_penalty = 0.0f;   // In [-2, 2].
  uint64_t seed = 0;
  std::vector<TokenBias> logit_bias;  // Its ids are the engine's to check against the vocabulary.

  // InvalidArgument naming the field when a value is out of range.
  absl::Status Validate() const;
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// Index of the largest logit, the lowest index among equals.
int32_t ArgMax(const float* logits, int64_t n);

// Applies the logit biases, then the penalties, of `params` to `logits`
// [vocab] in place: each bias added to its token's logit; repetition
// (HF/vLLM: positive logits divided, negative multiplied) for tokens in the
// prompt or the output, presence (once) and frequency (per occurrence)
// subtracted for tokens in the output.
void AdjustLogits(const SamplingParams& params, std::span<const int32_t> prompt,
                  std::span<const int32_t> output, float* logits, int64_t vocab);

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};
// log softmax(logits)[token], and the `top_n` most likely tokens (best first).
float Logprob(const float* logits, int64_t vocab, int32_t token);
std::vector<TokenLogprob> TopLogprobs(const float* logits, int64_t vocab, int64_t top_n);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  // Picks from `logits` (already penalized).
  int32_t Sample(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace dsv2
