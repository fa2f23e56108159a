#include "common/tokenizer/normalizer.h"

namespace dsv2::tokenizer_internal {

absl::Status Normalizer::Normalize(std::string_view text, std::string* out) const {
  std::string current(text), next;
  std::vector<Regex::Match> matches;
  for (const Step& step : steps_) {
    if (step.kind == Step::Kind::kPrepend) {
      // Hugging Face prepends only to a non-empty text.
      if (!current.empty()) current.insert(0, step.content);
      continue;
    }
    next.clear();
    size_t copied = 0;
    if (step.regex != nullptr) {
      matches.clear();
      if (absl::Status status = step.regex->FindAll(current, &matches); !status.ok()) return status;
      for (const Regex::Match& m : matches) {
        next.append(current, copied, m.start - copied);
        next += step.content;
        copied = m.end;
      }
    } else if (!step.literal.empty()) {
      for (size_t at = current.find(step.literal); at != std::string::npos;
           at = current.find(step.literal, copied)) {
        next.append(current, copied, at - copied);
        next += step.content;
        copied = at + step.literal.size();
      }
    }
    next.append(current, copied, std::string::npos);
    current.swap(next);
  }
  *out = std::move(current);
  return absl::OkStatus();
}

}  // namespace dsv2::tokenizer_internal
