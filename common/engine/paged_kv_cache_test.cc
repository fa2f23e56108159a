#include "common/engine/paged_kv_cache.h"

#include <numeric>

#include "common/model/deepseek_v2.h"
#include "common/model/latent_kv_cache.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

ModelConfig SmallConfig() {
  ModelConfig config;
  config.num_hidden_layers = 2;
  config.kv_lora_rank = 4;
  config.qk_rope_head_dim = 2;
  return config;
}

std::vector<int32_t> Iota(int n, int first = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

TEST(PagedKvCacheTest, BudgetAndAllocation) {
  const ModelConfig config = SmallConfig();
  // 2 layers × 4 positions × 6 values × 4 bytes = 192 bytes per block.
  EXPECT_EQ(PagedKvCache::BlocksForBudget(config, 4, 1000), 5);
  // A --block_size whose block bytes overflow int64 (they used to wrap to a
  // negative block size and a negative block count).
  EXPECT_EQ(PagedKvCache::BlocksForBudget(config, int64_t{1} << 60, 1000), 0);
  EXPECT_EQ(PagedKvCache::BlocksForBudget(config, 0, 1000), 0);
  PagedKvCache cache(config, 4, 3);
  auto a = cache.Allocate(), b = cache.Allocate(), c = cache.Allocate();
  ASSERT_TRUE(a && b && c);
  EXPECT_FALSE(cache.Allocate().has_value());
  EXPECT_EQ(cache.stats().used_blocks, 3);
  cache.Release(*b);
  EXPECT_EQ(cache.available_blocks(), 1);
  EXPECT_EQ(cache.Allocate(), b);
}

TEST(PagedKvCacheTest, SequenceReservesAndReturnsEveryBlock) {
  PagedKvCache cache(SmallConfig(), 4, 4);
  {
    PagedSequence seq(&cache);
    EXPECT_TRUE(seq.Reserve(9));  // 3 blocks.
    EXPECT_EQ(seq.capacity(), 12);
    EXPECT_EQ(cache.available_blocks(), 1);
    PagedSequence other(&cache);
    EXPECT_FALSE(other.Reserve(8));  // Needs 2, 1 left: takes nothing.
    EXPECT_EQ(cache.available_blocks(), 1);
    // Positions map into distinct storage, consecutive within a block.
    EXPECT_EQ(seq.At(0, 1), seq.At(0, 0) + 6);
    EXPECT_EQ(seq.ContiguousFrom(1), 3);
    EXPECT_EQ(seq.ContiguousFrom(4), 4);
    EXPECT_NE(seq.At(1, 0), seq.At(0, 0));
  }
  EXPECT_EQ(cache.available_blocks(), 4);  // Destructors released everything.
  EXPECT_EQ(cache.stats().used_blocks, 0);
}

TEST(PagedKvCacheTest, PrefixSharingAndLruEviction) {
  PagedKvCache cache(SmallConfig(), 4, 4);
  const std::vector<int32_t> prompt = Iota(10);  // Two full blocks and a partial one.
  PagedSequence first(&cache);
  EXPECT_EQ(first.AdoptCachedPrefix(prompt), 0);
  ASSERT_TRUE(first.Reserve(10));
  first.set_size(10);
  first.RegisterFullBlocks(prompt);

  PagedSequence second(&cache);
  EXPECT_EQ(second.AdoptCachedPrefix(prompt), 8);  // Both full blocks shared.
  EXPECT_EQ(second.At(0, 5), first.At(0, 5));
  EXPECT_EQ(cache.stats().prefix_hits, 8);
  EXPECT_EQ(cache.stats().prefix_queries, 20);

  // A prompt that differs in the second block shares only the first.
  std::vector<int32_t> forked = prompt;
  forked[6] = 99;
  PagedSequence third(&cache);
  EXPECT_EQ(third.AdoptCachedPrefix(forked), 4);
  // A prompt of exactly two blocks reuses one: its last token is recomputed.
  PagedSequence fourth(&cache);
  EXPECT_EQ(fourth.AdoptCachedPrefix(Iota(8)), 4);

  first.ReleaseAll();
  second.ReleaseAll();
  third.ReleaseAll();
  fourth.ReleaseAll();
  // Registered blocks stay cached; the unregistered partial block is free.
  EXPECT_EQ(cache.stats().cached_blocks, 2);
  EXPECT_EQ(cache.stats().used_blocks, 0);
  PagedSequence again(&cache);
  EXPECT_EQ(again.AdoptCachedPrefix(prompt), 8);
  again.ReleaseAll();

  // Filling the pool evicts cached blocks, oldest first.
  PagedSequence big(&cache);
  ASSERT_TRUE(big.Reserve(12));  // 2 free + 1 evicted.
  EXPECT_EQ(cache.stats().evictions, 1);
  ASSERT_TRUE(big.Reserve(16));
  EXPECT_EQ(cache.stats().evictions, 2);
  big.ReleaseAll();
  PagedSequence after(&cache);
  EXPECT_EQ(after.AdoptCachedPrefix(prompt), 0);
}

// The forward pass reads and writes paged storage exactly as contiguous
// storage: same logits bitwise, with blocks smaller than the prompt.
TEST(PagedKvCacheTest, ForwardOverPagesEqualsContiguous) {
  auto model = DeepseekV2Model::Load("tests/data/tiny-v2");
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& config = (*model)->config();
  PagedKvCache cache(config, 16, 8);
  PagedSequence paged(&cache);
  LatentKvCache contiguous(config, 128);
  const std::vector<int32_t> prompt = Iota(37, 100);
  ASSERT_TRUE(paged.Reserve(prompt.size() + 5));
  for (AttentionForm form : {AttentionForm::kDecompressed, AttentionForm::kAbsorbed}) {
    paged.set_size(0);
    contiguous.set_size(0);
    std::vector<float> a, b;
    ASSERT_TRUE((*model)->Forward(prompt, paged, {.attention = form}, &a).ok());
    ASSERT_TRUE((*model)->Forward(prompt, contiguous, {.attention = form}, &b).ok());
    EXPECT_EQ(a, b);
    for (int32_t t : {7, 8, 9}) {
      ASSERT_TRUE((*model)->Forward({&t, 1}, paged, {.attention = form}, &a).ok());
      ASSERT_TRUE((*model)->Forward({&t, 1}, contiguous, {.attention = form}, &b).ok());
      EXPECT_EQ(a, b);
    }
  }
}

}  // namespace
}  // namespace dsv2
