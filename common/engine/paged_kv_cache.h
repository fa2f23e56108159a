// The paged latent KV cache of a serving process: a fixed pool of blocks of
// `block_size` token positions, each holding every layer's latent vector
// (normalized c and roped k_pe, latent_dim float32 values) for those
// positions. Sequences own blocks through block tables (PagedSequence);
// blocks go back to the pool when a sequence releases them.
//
// Prefix caching: a block that is full is identified by a hash chain over
// its tokens and every token before it. Another sequence whose prompt starts
// with the same tokens shares the block instead of recomputing it. Blocks no
// sequence references stay cached until the pool needs them, evicted least
// recently used first.
//
// Thread safety: none; the engine's step thread owns the cache.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/model/backend.h"
#include "common/model/config.h"
#include "common/model/kv_cache_view.h"

namespace dsv2 {

class PagedKvCache {
 public:
  using BlockId = int32_t;

  struct Stats {
    int64_t num_blocks = 0;
    int64_t used_blocks = 0;    // Referenced by at least one sequence.
    int64_t cached_blocks = 0;  // Unreferenced but kept for prefix reuse.
    int64_t prefix_queries = 0;     // Prompt tokens looked up.
    int64_t prefix_hits = 0;        // Of those, tokens found cached.
    int64_t evictions = 0;
  };

  // How many blocks fit in `bytes` for this model; 0 when a block would not
  // fit in int64 bytes or `block_size` is not positive.
  static int64_t BlocksForBudget(const ModelConfig& config, int64_t block_size, int64_t bytes);

  // The latents live in `backend`'s memory (the model's backend).
  PagedKvCache(const ModelConfig& config, int64_t block_size, int64_t num_blocks,
               Backend& backend = CpuBackendInstance());

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t latent_dim() const { return latent_dim_; }
  // Blocks that Allocate can still hand out (free or evictable).
  int64_t available_blocks() const {
    return static_cast<int64_t>(free_.size() + lru_.size());
  }
  Stats stats() const;

  // A block for one sequence (reference count 1), evicting the least
  // recently used cached block when no block is free; nullopt when every
  // block is in use.
  std::optional<BlockId> Allocate();
  // Drops one reference; an unreferenced block is kept for reuse when it is
  // registered for prefix caching, freed otherwise.
  void Release(BlockId block);

  // The blocks of the longest cached prefix of `tokens` made of full blocks,
  // at most `max_blocks` of them, each with a reference taken for the caller,
  // and the chain hash of the last one (0 when none).
  struct PrefixMatch {
    std::vector<BlockId> blocks;
    uint64_t last_hash = 0;
  };
  PrefixMatch MatchPrefix(std::span<const int32_t> tokens, int64_t max_blocks);
  // Registers a full block whose tokens are `tokens` (block_size of them)
  // after the blocks hashed `parent_hash`; returns its hash for the next
  // block. A block with the same contents already registered stays the one
  // that is found.
  uint64_t Register(BlockId block, uint64_t parent_hash, std::span<const int32_t> tokens);

  const Backend* backend() const { return data_.backend(); }
  float* Latent(BlockId block, int64_t layer, int64_t offset) {
    return data_.data() + ((layer * num_blocks_ + block) * block_size_ + offset) * latent_dim_;
  }

 private:
  struct Block {
    int32_t refs = 0;
    std::optional<uint64_t> hash;              // Set once registered.
    std::vector<int32_t> tokens;               // Its tokens, to confirm hash matches.
    uint64_t parent_hash = 0;
    std::list<BlockId>::iterator lru_position;  // Valid while in lru_.
  };

  static uint64_t ChainHash(uint64_t parent, std::span<const int32_t> tokens);
  void TakeReference(BlockId block);

  int64_t block_size_;
  int64_t num_blocks_;
  int64_t num_layers_;
  int64_t latent_dim_;
  Buffer data_;  // [layer][block][offset][latent]
  std::vector<Block> blocks_;
  std::vector<BlockId> free_;                  // Unreferenced, unregistered.
  std::list<BlockId> lru_;                     // Unreferenced, registered; front = oldest.
  std::unordered_map<uint64_t, BlockId> by_hash_;
  int64_t prefix_queries_ = 0;
  int64_t prefix_hits_ = 0;
  int64_t evictions_ = 0;
};

// One sequence's block table: a KvCacheView over the blocks it holds.
class PagedSequence final : public KvCacheView {
 public:
  explicit PagedSequence(PagedKvCache* cache) : cache_(cache) {}
  ~PagedSequence() override { ReleaseAll(); }
  PagedSequence(const PagedSequence&) = delete;
  PagedSequence& operator=(const PagedSequence&) = delete;

  int64_t size() const override { return size_; }
  int64_t capacity() const override {
    return static_cast<int64_t>(blocks_.size()) * cache_->block_size();
  }
  float* At(int64_t layer, int64_t pos) override {
    const int64_t block_size = cache_->block_size();
    return cache_->Latent(blocks_[pos / block_size], layer, pos % block_size);
  }
  int64_t ContiguousFrom(int64_t pos) const override {
    return cache_->block_size() - pos % cache_->block_size();
  }
  void set_size(int64_t size) override { size_ = size; }
  const Backend* backend() const override { return cache_->backend(); }

  // Starts the sequence from the cached prefix of `tokens`, leaving at least
  // one token to compute; returns how many positions were found.
  int64_t AdoptCachedPrefix(std::span<const int32_t> tokens);
  // Grows the table to hold `positions`; false (nothing taken) when the pool
  // has too few blocks.
  bool Reserve(int64_t positions);
  // Registers the blocks that `tokens` (the sequence so far) fills completely.
  void RegisterFullBlocks(std::span<const int32_t> tokens);
  // Gives every block back; the sequence is empty again.
  void ReleaseAll();

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }

 private:
  PagedKvCache* cache_;
  std::vector<PagedKvCache::BlockId> blocks_;
  int64_t size_ = 0;
  int64_t registered_ = 0;  // Leading blocks registered (or adopted) so far.
  uint64_t last_hash_ = 0;  // Hash of block registered_ − 1.
};

}  // namespace dsv2
