#include "common/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"

namespace dsv2 {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", temperature));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", min_p));
  }
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be > 0, got ", repetition_penalty));
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("presence_penalty must be in [-2, 2], got ", presence_penalty));
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("frequency_penalty must be in [-2, 2], got ", frequency_penalty));
  }
  for (const TokenBias& b : logit_bias) {
    if (!(b.bias >= -100.0f && b.bias <= 100.0f)) {
      return absl::InvalidArgumentError(absl::StrCat("logit_bias of token id ", b.token,
                                                     " must be in [-100, 100], got ", b.bias));
    }
  }
  return absl::OkStatus();
}

int32_t ArgMax(const float* logits, int64_t n) {
  return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
}

void AdjustLogits(const SamplingParams& params, std::span<const int32_t> prompt,
                  std::span<const int32_t> output, float* logits, int64_t vocab) {
  for (const TokenBias& b : params.logit_bias) logits[b.token] += b.bias;
  if (!params.has_penalties()) return;
  std::unordered_map<int32_t, int32_t> output_counts;
  for (int32_t t : output) ++output_counts[t];
  if (params.repetition_penalty != 1.0f) {
    std::vector<bool> seen(vocab, false);
    for (int32_t t : prompt) seen[t] = true;
    for (const auto& [t, count] : output_counts) seen[t] = true;
    for (int64_t t = 0; t < vocab; ++t) {
      if (!seen[t]) continue;
      logits[t] = logits[t] > 0 ? logits[t] / params.repetition_penalty
                                : logits[t] * params.repetition_penalty;
    }
  }
  for (const auto& [t, count] : output_counts) {
    logits[t] -= params.frequency_penalty * static_cast<float>(count) + params.presence_penalty;
  }
}

namespace {

// log Σ exp(logits), computed stably in double.
double LogSumExp(const float* logits, int64_t vocab) {
  const double max = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(logits[i] - max);
  return max + std::log(sum);
}

}  // namespace

float Logprob(const float* logits, int64_t vocab, int32_t token) {
  return static_cast<float>(logits[token] - LogSumExp(logits, vocab));
}

std::vector<TokenLogprob> TopLogprobs(const float* logits, int64_t vocab, int64_t top_n) {
  top_n = std::min(top_n, vocab);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + top_n, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const double norm = LogSumExp(logits, vocab);
  std::vector<TokenLogprob> top(top_n);
  for (int64_t i = 0; i < top_n; ++i) {
    top[i] = {order[i], static_cast<float>(logits[order[i]] - norm)};
  }
  return top;
}

int32_t Sampler::Sample(const float* logits, int64_t vocab) {
  if (params_.temperature == 0.0f) return ArgMax(logits, vocab);
  // Candidates by descending logit (ties: lower id first), cut to top_k.
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
  order.resize(k);
  // Probabilities of the candidates at this temperature (in double, so the
  // cumulative sum for top_p is exact enough at any vocabulary size).
  std::vector<double> probs(k);
  const double max = logits[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    probs[i] = std::exp((logits[order[i]] - max) / params_.temperature);
    sum += probs[i];
  }
  // Smallest prefix whose mass reaches top_p (at least one token).
  int64_t keep = k;
  if (params_.top_p < 1.0f) {
    double cumulative = 0;
    for (int64_t i = 0; i < k; ++i) {
      cumulative += probs[i] / sum;
      if (cumulative >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  // Tokens below min_p times the most likely one (probs[0] is the largest).
  if (params_.min_p > 0.0f) {
    const double floor = params_.min_p * probs[0];
    while (keep > 1 && probs[keep - 1] < floor) --keep;
  }
  const double kept_mass = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  double draw = std::uniform_real_distribution<double>(0.0, kept_mass)(rng_);
  for (int64_t i = 0; i < keep; ++i) {
    draw -= probs[i];
    if (draw < 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace dsv2
