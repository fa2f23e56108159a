#include "common/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

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
  return absl::OkStatus();
}

int32_t ArgMax(const float* logits, int64_t n) {
  return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
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
  const double kept_mass = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  double draw = std::uniform_real_distribution<double>(0.0, kept_mass)(rng_);
  for (int64_t i = 0; i < keep; ++i) {
    draw -= probs[i];
    if (draw < 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace dsv2
