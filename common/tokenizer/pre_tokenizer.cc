#include "common/tokenizer/pre_tokenizer.h"

#include "common/tokenizer/unicode.h"

namespace dsv2::tokenizer_internal {
namespace {

// GPT-2's pre-tokenization regex, as Hugging Face's ByteLevel uses it.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Span {
  uint32_t start, end;
  bool match;
};

// Hugging Face's NormalizedString::split: the matched and unmatched spans
// (covering the piece) combined as `behavior` says; non-empty, kept spans
// are appended to `out`.
void ApplyBehavior(std::string_view piece, const std::vector<Span>& spans, SplitBehavior behavior,
                   std::vector<std::string_view>* out) {
  auto emit = [&](uint32_t start, uint32_t end) {
    if (end > start) out->push_back(piece.substr(start, end - start));
  };
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) emit(s.start, s.end);
      return;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.match) emit(s.start, s.end);
      }
      return;
    case SplitBehavior::kContiguous:
    case SplitBehavior::kMergedWithPrevious: {
      // Contiguous merges runs with the same flag; MergedWithPrevious
      // appends a match to the span before it.
      std::vector<Span> merged;
      bool previous_match = false;
      for (const Span& s : spans) {
        const bool merge = behavior == SplitBehavior::kContiguous ? s.match == previous_match
                                                                  : s.match && !previous_match;
        if (merge && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.match;
      }
      for (const Span& s : merged) emit(s.start, s.end);
      return;
    }
    case SplitBehavior::kMergedWithNext: {
      // A match is prepended to the span after it (walking backwards).
      std::vector<Span> merged;
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous_match && !merged.empty()) {
          merged.back().start = it->start;
        } else {
          merged.push_back(*it);
        }
        previous_match = it->match;
      }
      for (auto it = merged.rbegin(); it != merged.rend(); ++it) emit(it->start, it->end);
      return;
    }
  }
}

// The spans of `piece` given its sorted, non-overlapping matches.
void SpansFromMatches(std::string_view piece, const std::vector<Regex::Match>& matches, bool invert,
                      std::vector<Span>* spans) {
  uint32_t previous = 0;
  for (const Regex::Match& m : matches) {
    if (m.start != previous) spans->push_back({previous, m.start, invert});
    spans->push_back({m.start, m.end, !invert});
    previous = m.end;
  }
  if (previous != piece.size())
    spans->push_back({previous, static_cast<uint32_t>(piece.size()), invert});
}

}  // namespace

absl::Status SplitStage::Split(std::string_view piece, PieceStorage*,
                               std::vector<std::string_view>* out) const {
  thread_local std::vector<Regex::Match> matches;
  thread_local std::vector<Span> spans;
  matches.clear();
  spans.clear();
  if (regex_ != nullptr) {
    if (absl::Status status = regex_->FindAll(piece, &matches); !status.ok()) return status;
  } else if (!literal_.empty()) {
    for (size_t at = piece.find(literal_); at != std::string_view::npos;
         at = piece.find(literal_, at + literal_.size())) {
      matches.push_back({static_cast<uint32_t>(at), static_cast<uint32_t>(at + literal_.size())});
    }
  }
  if (matches.empty() && !invert_ && behavior_ != SplitBehavior::kRemoved) {
    out->push_back(piece);  // Nothing to split; every behaviour keeps the piece whole.
    return absl::OkStatus();
  }
  SpansFromMatches(piece, matches, invert_, &spans);
  ApplyBehavior(piece, spans, behavior_, out);
  return absl::OkStatus();
}

absl::Status DigitsStage::Split(std::string_view piece, PieceStorage*,
                                std::vector<std::string_view>* out) const {
  // Hugging Face: each numeric character is a match of its own; Isolated
  // (individual digits) or Contiguous (runs).
  size_t run_start = 0;  // Start of the current run of the same kind.
  bool run_numeric = false;
  for (size_t pos = 0; pos < piece.size();) {
    char32_t c;
    const size_t len = DecodeUtf8(piece, pos, &c);
    const bool numeric = IsNumeric(c);
    if (pos > run_start && (numeric != run_numeric || (numeric && individual_))) {
      out->push_back(piece.substr(run_start, pos - run_start));
      run_start = pos;
    }
    run_numeric = numeric;
    pos += len;
  }
  if (run_start < piece.size()) out->push_back(piece.substr(run_start));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ByteLevelStage>> ByteLevelStage::Create(bool add_prefix_space,
                                                                       bool use_regex) {
  std::unique_ptr<ByteLevelStage> stage(new ByteLevelStage());
  stage->add_prefix_space_ = add_prefix_space;
  if (use_regex) {
    auto regex = Regex::Compile(kGpt2Pattern);
    if (!regex.ok()) return regex.status();
    stage->regex_ = *std::move(regex);
  }
  return stage;
}

absl::Status ByteLevelStage::Split(std::string_view piece, PieceStorage* storage,
                                   std::vector<std::string_view>* out) const {
  if (add_prefix_space_ && !piece.starts_with(' ')) {
    storage->push_back(std::string(" ").append(piece));
    piece = storage->back();
  }
  if (regex_ == nullptr) {
    out->push_back(piece);
    return absl::OkStatus();
  }
  thread_local std::vector<Regex::Match> matches;
  matches.clear();
  if (absl::Status status = regex_->FindAll(piece, &matches); !status.ok()) return status;
  uint32_t previous = 0;
  for (const Regex::Match& m : matches) {
    if (m.start != previous) out->push_back(piece.substr(previous, m.start - previous));
    if (m.end > m.start) out->push_back(piece.substr(m.start, m.end - m.start));
    previous = m.end;
  }
  if (previous != piece.size()) out->push_back(piece.substr(previous));
  return absl::OkStatus();
}

absl::Status PreTokenizer::Run(std::vector<std::string_view>* pieces, PieceStorage* storage,
                               std::vector<std::string_view>* scratch) const {
  for (const auto& stage : stages_) {
    scratch->clear();
    for (std::string_view piece : *pieces) {
      if (absl::Status status = stage->Split(piece, storage, scratch); !status.ok()) return status;
    }
    pieces->swap(*scratch);
  }
  return absl::OkStatus();
}

}  // namespace dsv2::tokenizer_internal
