// The BPE model of tokenizer.json: a vocabulary and ranked merges, applied to
// one pre-tokenized word at a time exactly as Hugging Face's BPE does
// (lowest-ranked adjacent pair first, leftmost on ties; `ignore_merges`,
// `byte_fallback`, `unk_token` and `fuse_unk`).
//
// Immutable after Create; Tokenize is safe to call from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv2::tokenizer_internal {

struct BpeOptions {
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  // `merges` in rank order (the first merges first); each side and their
  // concatenation must be in `vocab`. A repeated pair keeps its last rank,
  // as in Hugging Face.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      std::vector<std::pair<std::string, int32_t>> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options);

  // Appends the ids of `word` to `out`. With `byte_level`, `word` is raw
  // text whose bytes stand for their ByteLevel characters (the form the
  // vocabulary is written in); otherwise it is matched character by character.
  // Fails only when an unknown character needs an `unk_token` that is not in
  // the vocabulary (as Hugging Face does).
  absl::Status Tokenize(std::string_view word, bool byte_level, std::vector<int32_t>* out) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token of `id`, or nullptr.
  const std::string* IdToToken(int32_t id) const;
  // The number of tokens in the vocabulary.
  size_t VocabularySize() const { return vocab_.size(); }
  // One more than the largest id.
  int32_t IdLimit() const { return static_cast<int32_t>(id_to_token_.size()); }

  // Words longer than this (in initial symbols) are merged with a priority
  // queue rather than by scanning; exposed for tests.
  static constexpr size_t kScanMergeLimit = 48;
  // Merges `symbols` in place; `force_heap` is for tests.
  void MergeAll(std::vector<int32_t>* symbols, bool force_heap = false) const;

 private:
  BpeModel() = default;
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* FindMerge(int32_t a, int32_t b) const {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }
  absl::Status InitialSymbols(std::string_view word, std::vector<int32_t>* symbols) const;
  void MergeWithHeap(std::vector<int32_t>* symbols) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_known_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  BpeOptions options_;
  // The id of each byte's ByteLevel character, when all 256 are in the vocabulary.
  bool byte_ids_complete_ = false;
  int32_t byte_ids_[256];
};

}  // namespace dsv2::tokenizer_internal
