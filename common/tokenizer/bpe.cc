#include "common/tokenizer/bpe.h"

#include <limits>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/tokenizer/unicode.h"

namespace dsv2::tokenizer_internal {
namespace {

// Abseil here has its own string_view, which its hash maps look up by.
absl::string_view Key(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    std::vector<std::pair<std::string, int32_t>> vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options) {
  std::unique_ptr<BpeModel> model(new BpeModel());
  model->options_ = std::move(options);
  int32_t limit = 0;
  for (const auto& [token, id] : vocab) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("model.vocab: negative id ", id));
    limit = std::max(limit, id + 1);
  }
  model->id_to_token_.resize(limit);
  model->id_known_.resize(limit, false);
  model->vocab_.reserve(vocab.size());
  for (auto& [token, id] : vocab) {
    model->id_to_token_[id] = token;
    model->id_known_[id] = true;
    model->vocab_[std::move(token)] = id;
  }
  model->merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const auto ia = model->TokenToId(a), ib = model->TokenToId(b), merged = model->TokenToId(a + b);
    if (!ia || !ib || !merged) {
      return absl::InvalidArgumentError(absl::StrCat("model.merges[", rank, "] ('", a, "', '", b,
                                                     "'): '",
                                                     !ia   ? a
                                                     : !ib ? b
                                                           : a + b,
                                                     "' is not in the vocabulary"));
    }
    model->merges_[PairKey(*ia, *ib)] = Merge{static_cast<int32_t>(rank), *merged};
  }
  model->byte_ids_complete_ = true;
  for (int b = 0; b < 256; ++b) {
    const auto id = model->TokenToId(ByteLevelChars()[b]);
    model->byte_ids_[b] = id.value_or(-1);
    if (!id) model->byte_ids_complete_ = false;
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(Key(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id >= IdLimit() || !id_known_[id]) return nullptr;
  return &id_to_token_[id];
}

absl::Status BpeModel::InitialSymbols(std::string_view word, std::vector<int32_t>* symbols) const {
  // Hugging Face's merge_word: each character is a symbol; an unknown one
  // becomes its <0xXX> byte tokens (byte_fallback) or the unknown token,
  // consecutive unknowns fused when fuse_unk. A pending unknown token is
  // written when the next known character arrives or at the end, so byte
  // fallback tokens can precede it, as in Hugging Face.
  int32_t pending_unk = -1;  // -1: none.
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = Utf8Length(static_cast<unsigned char>(word[pos]));
    const std::string_view ch = word.substr(pos, len);
    pos += len;
    if (auto it = vocab_.find(Key(ch)); it != vocab_.end()) {
      if (pending_unk >= 0) symbols->push_back(pending_unk);
      pending_unk = -1;
      symbols->push_back(it->second);
      continue;
    }
    if (options_.byte_fallback) {
      int32_t byte_ids[4];
      bool all = true;
      for (size_t i = 0; i < ch.size() && all; ++i) {
        auto it = vocab_.find(absl::StrFormat("<0x%02X>", static_cast<unsigned char>(ch[i])));
        if (it == vocab_.end())
          all = false;
        else
          byte_ids[i] = it->second;
      }
      if (all) {
        symbols->insert(symbols->end(), byte_ids, byte_ids + ch.size());
        continue;
      }
    }
    if (options_.unk_token) {
      if (pending_unk >= 0 && options_.fuse_unk) continue;
      if (pending_unk >= 0) symbols->push_back(pending_unk);
      auto it = vocab_.find(*options_.unk_token);
      if (it == vocab_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("unk_token '", *options_.unk_token, "' is not in the vocabulary"));
      }
      pending_unk = it->second;
    }
    // Without an unknown token the character is dropped, as in Hugging Face.
  }
  if (pending_unk >= 0) symbols->push_back(pending_unk);
  return absl::OkStatus();
}

void BpeModel::MergeAll(std::vector<int32_t>* symbols, bool force_heap) const {
  std::vector<int32_t>& s = *symbols;
  if (s.size() < 2) return;
  if (force_heap || s.size() > kScanMergeLimit) {
    MergeWithHeap(symbols);
    return;
  }
  // Short words: keep each adjacent pair's merge and pick the lowest rank
  // (leftmost on ties) by scanning; only the neighbours of a merge change.
  constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  int32_t ranks[kScanMergeLimit], new_ids[kScanMergeLimit];
  size_t n = s.size();
  auto set_pair = [&](size_t i) {
    const Merge* m = FindMerge(s[i], s[i + 1]);
    ranks[i] = m ? m->rank : kNone;
    new_ids[i] = m ? m->new_id : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) set_pair(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (ranks[i] < ranks[best]) best = i;
    }
    if (ranks[best] == kNone) break;
    s[best] = new_ids[best];
    for (size_t i = best + 1; i + 1 < n; ++i) {
      s[i] = s[i + 1];
      if (i + 1 < n - 1) {
        ranks[i] = ranks[i + 1];
        new_ids[i] = new_ids[i + 1];
      }
    }
    --n;
    if (best > 0) set_pair(best - 1);
    if (best + 1 < n) set_pair(best);
  }
  s.resize(n);
}

void BpeModel::MergeWithHeap(std::vector<int32_t>* symbols) const {
  // Hugging Face's Word::merge_all: a doubly linked list of symbols and a
  // queue of candidate merges ordered by (rank, position); stale entries
  // are recognised by re-checking the pair.
  std::vector<int32_t>& s = *symbols;
  const int32_t n = static_cast<int32_t>(s.size());
  std::vector<int32_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const Merge* m = FindMerge(s[pos], s[next[pos]])) queue.push({m->rank, pos, m->new_id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (!alive[top.pos] || next[top.pos] < 0) continue;
    const int32_t right = next[top.pos];
    const Merge* m = FindMerge(s[top.pos], s[right]);
    if (m == nullptr || m->new_id != top.new_id) continue;
    s[top.pos] = top.new_id;
    alive[right] = false;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    push(prev[top.pos]);
    push(top.pos);
  }
  int32_t out = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (alive[i]) s[out++] = s[i];
  }
  s.resize(out);
}

absl::Status BpeModel::Tokenize(std::string_view word, bool byte_level,
                                std::vector<int32_t>* out) const {
  if (word.empty()) return absl::OkStatus();
  std::string mapped;
  std::string_view text = word;
  if (byte_level && (options_.ignore_merges || !byte_ids_complete_)) {
    mapped.reserve(word.size() * 2);
    for (unsigned char b : word) mapped += ByteLevelChars()[b];
    text = mapped;
  }
  if (options_.ignore_merges) {
    if (auto it = vocab_.find(Key(text)); it != vocab_.end()) {
      out->push_back(it->second);
      return absl::OkStatus();
    }
  }
  thread_local std::vector<int32_t> symbols;
  symbols.clear();
  if (byte_level && byte_ids_complete_) {
    for (unsigned char b : word) symbols.push_back(byte_ids_[b]);
  } else if (absl::Status status = InitialSymbols(text, &symbols); !status.ok()) {
    return status;
  }
  MergeAll(&symbols);
  out->insert(out->end(), symbols.begin(), symbols.end());
  return absl::OkStatus();
}

}  // namespace dsv2::tokenizer_internal
