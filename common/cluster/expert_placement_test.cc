#include "common/cluster/expert_placement.h"

#include <set>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

ModelConfig Routing(TopkMethod method, int64_t experts, int64_t groups, int64_t topk_group) {
  ModelConfig config;
  config.topk_method = method;
  config.n_routed_experts = experts;
  config.n_group = groups;
  config.topk_group = topk_group;
  config.num_experts_per_tok = 6;
  return config;
}

// Every unit on exactly `replicas` distinct workers, loads within one unit.
void CheckBalanced(const ExpertPlacement& p, int64_t workers, int64_t replicas) {
  std::vector<int64_t> load(workers, 0);
  for (const auto& holders : p.unit_workers) {
    ASSERT_EQ(static_cast<int64_t>(holders.size()), replicas);
    EXPECT_EQ(std::set<int32_t>(holders.begin(), holders.end()).size(), holders.size());
    for (int32_t w : holders) ++load[w];
  }
  const int64_t ideal = p.num_units * replicas / workers;
  for (int64_t w = 0; w < workers; ++w) {
    EXPECT_GE(load[w], ideal) << "worker " << w;
    EXPECT_LE(load[w], ideal + 1) << "worker " << w;
    EXPECT_EQ(static_cast<int64_t>(p.worker_units[w].size()), load[w]);
  }
}

TEST(ExpertPlacementTest, GroupsStayWholeSoATokenReachesAtMostTopkGroupWorkers) {
  const ModelConfig v2 = Routing(TopkMethod::kGroupLimitedGreedy, 160, 8, 3);
  for (int64_t workers : {1, 3, 8, 11}) {
    auto p = PlaceExperts(v2, workers, 1);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->num_units, 8);
    EXPECT_EQ(p->unit_begin[1], 20);
    EXPECT_EQ(p->UnitOf(39), 1);
    EXPECT_EQ(p->UnitOf(159), 7);
    CheckBalanced(*p, workers, 1);
    // Any choice of 3 groups touches at most 3 workers.
    for (int a = 0; a < 8; ++a) {
      for (int b = a + 1; b < 8; ++b) {
        for (int c = b + 1; c < 8; ++c) {
          const std::set<int32_t> reached = {p->unit_workers[a][0], p->unit_workers[b][0],
                                             p->unit_workers[c][0]};
          EXPECT_LE(reached.size(), 3u);
        }
      }
    }
  }
  auto p = PlaceExperts(v2, 4, 1);
  EXPECT_EQ(p->ExpertsOf(1).front(), 20);  // Group 1 is experts 20..39.
  EXPECT_EQ(p->ExpertsOf(1).size(), 40u);  // Groups 1 and 5.
}

TEST(ExpertPlacementTest, GreedyRoutingGetsContiguousBalancedSlices) {
  const ModelConfig lite = Routing(TopkMethod::kGreedy, 64, 1, 1);
  auto p = PlaceExperts(lite, 4, 1);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ExpertsOf(2).front(), 32);
  EXPECT_EQ(p->ExpertsOf(2).back(), 47);
  // Three workers share 64 experts as slices of 21, 21 and 22.
  p = PlaceExperts(lite, 3, 1);
  ASSERT_TRUE(p.ok());
  CheckBalanced(*p, 3, 1);
  EXPECT_EQ(p->ExpertsOf(0).size(), 21u);
  EXPECT_EQ(p->ExpertsOf(2).size(), 22u);
  EXPECT_EQ(p->ExpertsOf(2).back(), 63);
  EXPECT_EQ(p->UnitOf(41), 1);
  EXPECT_EQ(p->UnitOf(42), 2);
}

TEST(ExpertPlacementTest, ReplicasLandOnDistinctWorkers) {
  const ModelConfig v2 = Routing(TopkMethod::kGroupLimitedGreedy, 160, 8, 3);
  for (int64_t workers : {2, 3, 5, 10, 16}) {
    auto p = PlaceExperts(v2, workers, 2);
    ASSERT_TRUE(p.ok());
    CheckBalanced(*p, workers, 2);
  }
  EXPECT_EQ(PlaceExperts(v2, 1, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlaceExperts(Routing(TopkMethod::kGreedy, 0, 1, 1), 2, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dsv2
