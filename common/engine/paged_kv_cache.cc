#include "common/engine/paged_kv_cache.h"

#include <algorithm>

namespace dsv2 {

int64_t PagedKvCache::BlocksForBudget(const ModelConfig& config, int64_t block_size,
                                      int64_t bytes) {
  // block_size comes from a flag: a block too large to count in int64 holds
  // zero blocks' worth of any budget (and the caller reports that).
  int64_t block_bytes = 0;
  if (block_size < 1 || __builtin_mul_overflow(config.num_hidden_layers * config.latent_dim() *
                                                   static_cast<int64_t>(sizeof(float)),
                                               block_size, &block_bytes)) {
    return 0;
  }
  return bytes / block_bytes;
}

PagedKvCache::PagedKvCache(const ModelConfig& config, int64_t block_size, int64_t num_blocks,
                           Backend& backend)
    : block_size_(block_size),
      num_blocks_(num_blocks),
      num_layers_(config.num_hidden_layers),
      latent_dim_(config.latent_dim()),
      data_(backend.Allocate(num_layers_ * num_blocks * block_size * latent_dim_)),
      blocks_(num_blocks) {
  free_.reserve(num_blocks);
  for (BlockId b = static_cast<BlockId>(num_blocks) - 1; b >= 0; --b) free_.push_back(b);
}

PagedKvCache::Stats PagedKvCache::stats() const {
  Stats s;
  s.num_blocks = num_blocks_;
  s.cached_blocks = static_cast<int64_t>(lru_.size());
  s.used_blocks = num_blocks_ - static_cast<int64_t>(free_.size()) - s.cached_blocks;
  s.prefix_queries = prefix_queries_;
  s.prefix_hits = prefix_hits_;
  s.evictions = evictions_;
  return s;
}

uint64_t PagedKvCache::ChainHash(uint64_t parent, std::span<const int32_t> tokens) {
  // FNV-1a over the parent hash and the token ids, then a final mix.
  uint64_t h = 0xcbf29ce484222325ull ^ parent;
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  mix(parent);
  for (int32_t t : tokens) mix(static_cast<uint32_t>(t));
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

std::optional<PagedKvCache::BlockId> PagedKvCache::Allocate() {
  BlockId block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    block = lru_.front();
    lru_.pop_front();
    Block& evicted = blocks_[block];
    by_hash_.erase(*evicted.hash);
    evicted.hash.reset();
    evicted.tokens.clear();
    ++evictions_;
  } else {
    return std::nullopt;
  }
  blocks_[block].refs = 1;
  return block;
}

void PagedKvCache::TakeReference(BlockId block) {
  Block& b = blocks_[block];
  if (b.refs++ == 0) lru_.erase(b.lru_position);  // Registered blocks only reach refs 0 in lru_.
}

void PagedKvCache::Release(BlockId block) {
  Block& b = blocks_[block];
  if (--b.refs > 0) return;
  if (b.hash) {
    b.lru_position = lru_.insert(lru_.end(), block);
  } else {
    free_.push_back(block);
  }
}

PagedKvCache::PrefixMatch PagedKvCache::MatchPrefix(std::span<const int32_t> tokens,
                                                    int64_t max_blocks) {
  PrefixMatch match;
  uint64_t& parent = match.last_hash;
  const int64_t full_blocks = std::min<int64_t>(max_blocks, tokens.size() / block_size_);
  for (int64_t i = 0; i < full_blocks; ++i) {
    const auto block_tokens = tokens.subspan(i * block_size_, block_size_);
    const uint64_t hash = ChainHash(parent, block_tokens);
    auto it = by_hash_.find(hash);
    if (it == by_hash_.end()) break;
    const Block& b = blocks_[it->second];
    if (b.parent_hash != parent || !std::equal(b.tokens.begin(), b.tokens.end(), block_tokens.begin())) {
      break;  // A hash collision: not the same prefix.
    }
    TakeReference(it->second);
    match.blocks.push_back(it->second);
    parent = hash;
  }
  prefix_queries_ += static_cast<int64_t>(tokens.size());
  prefix_hits_ += static_cast<int64_t>(match.blocks.size()) * block_size_;
  return match;
}

uint64_t PagedKvCache::Register(BlockId block, uint64_t parent_hash,
                                std::span<const int32_t> tokens) {
  const uint64_t hash = ChainHash(parent_hash, tokens);
  Block& b = blocks_[block];
  if (!b.hash && !by_hash_.contains(hash)) {
    b.hash = hash;
    b.parent_hash = parent_hash;
    b.tokens.assign(tokens.begin(), tokens.end());
    by_hash_[hash] = block;
  }
  return hash;
}

int64_t PagedSequence::AdoptCachedPrefix(std::span<const int32_t> tokens) {
  // At least the last token is computed, for its logits.
  const int64_t max_blocks = (static_cast<int64_t>(tokens.size()) - 1) / cache_->block_size();
  PagedKvCache::PrefixMatch match = cache_->MatchPrefix(tokens, max_blocks);
  blocks_ = std::move(match.blocks);
  last_hash_ = match.last_hash;
  registered_ = static_cast<int64_t>(blocks_.size());
  size_ = registered_ * cache_->block_size();
  return size_;
}

bool PagedSequence::Reserve(int64_t positions) {
  const int64_t needed =
      (positions + cache_->block_size() - 1) / cache_->block_size() - num_blocks();
  if (needed <= 0) return true;
  if (needed > cache_->available_blocks()) return false;
  for (int64_t i = 0; i < needed; ++i) blocks_.push_back(*cache_->Allocate());
  return true;
}

void PagedSequence::RegisterFullBlocks(std::span<const int32_t> tokens) {
  const int64_t block_size = cache_->block_size();
  const int64_t full = std::min<int64_t>(size_, tokens.size()) / block_size;
  for (; registered_ < full; ++registered_) {
    last_hash_ = cache_->Register(blocks_[registered_], last_hash_,
                                  tokens.subspan(registered_ * block_size, block_size));
  }
}

void PagedSequence::ReleaseAll() {
  for (PagedKvCache::BlockId block : blocks_) cache_->Release(block);
  blocks_.clear();
  size_ = 0;
  registered_ = 0;
  last_hash_ = 0;
}

}  // namespace dsv2
