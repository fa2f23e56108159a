#include "common/cluster/cluster_state.h"

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;
using Clock = ClusterState::Clock;

ModelConfig V2Routing() {
  ModelConfig config;
  config.topk_method = TopkMethod::kGroupLimitedGreedy;
  config.n_routed_experts = 16;
  config.n_group = 4;
  config.topk_group = 2;
  config.num_experts_per_tok = 4;
  return config;
}

WorkerInfo Expert(const std::string& id) {
  return {id, WorkerRole::kExpert, id + ":1", "ucx://" + id, 0};
}

TEST(ClusterStateTest, RegistrationPublishesVersionedPlacement) {
  ClusterState state(V2Routing(), 1, 5s);
  const auto t0 = Clock::time_point{};
  EXPECT_FALSE(state.map().complete);
  ASSERT_TRUE(state.Register({"a1", WorkerRole::kAttention, "a1:1", "", 4096}, t0).ok());
  EXPECT_FALSE(state.map().complete);  // No expert worker yet.
  ASSERT_TRUE(state.Register(Expert("e1"), t0).ok());
  ASSERT_TRUE(state.Register(Expert("e2"), t0).ok());
  const ClusterMap& map = state.map();
  EXPECT_EQ(map.version, 3u);
  EXPECT_TRUE(map.complete);
  EXPECT_EQ(map.workers.size(), 3u);
  EXPECT_EQ(map.expert_workers, (std::vector<std::string>{"e1", "e2"}));
  EXPECT_EQ(map.placement.num_units, 4);
  EXPECT_EQ(map.placement.worker_units[0].size(), 2u);
  EXPECT_EQ(state.Register({"", WorkerRole::kExpert, "x", "y", 0}, t0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Register({"e3", WorkerRole::kExpert, "e3:1", "", 0}, t0).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ClusterStateTest, LapsedLeasesMarkWorkersDeadUntilTheyRegisterAgain) {
  ClusterState state(V2Routing(), 1, 5s);
  const auto t0 = Clock::time_point{};
  ASSERT_TRUE(state.Register(Expert("e1"), t0).ok());
  ASSERT_TRUE(state.Register(Expert("e2"), t0).ok());
  ASSERT_TRUE(state.Heartbeat("e1", t0 + 4s).ok());
  EXPECT_FALSE(state.ExpireLeases(t0 + 5s));  // Not lapsed yet.
  EXPECT_TRUE(state.ExpireLeases(t0 + 6s));   // e2's lease ended at 5 s.
  EXPECT_EQ(state.map().workers[1].state, WorkerState::kDead);
  EXPECT_EQ(state.map().expert_workers, (std::vector<std::string>{"e1"}));
  EXPECT_TRUE(state.map().complete);  // e1 now holds every group.
  EXPECT_EQ(state.map().placement.worker_units[0].size(), 4u);
  EXPECT_EQ(state.Heartbeat("e2", t0 + 7s).code(), absl::StatusCode::kNotFound);
  const uint64_t before = state.map().version;
  ASSERT_TRUE(state.Register(Expert("e2"), t0 + 7s).ok());
  EXPECT_GT(state.map().version, before);
  EXPECT_EQ(state.map().expert_workers.size(), 2u);
  EXPECT_TRUE(state.ExpireLeases(t0 + 20s));
  EXPECT_FALSE(state.map().complete);  // No live expert worker.
}

TEST(ClusterStateTest, DrainMovesAWorkerOutOfThePlacement) {
  ClusterState state(V2Routing(), 2, 5s);
  const auto t0 = Clock::time_point{};
  for (const char* id : {"e1", "e2", "e3"}) ASSERT_TRUE(state.Register(Expert(id), t0).ok());
  for (const auto& holders : state.map().placement.unit_workers) EXPECT_EQ(holders.size(), 2u);
  ASSERT_TRUE(state.Drain("e2").ok());
  EXPECT_EQ(state.map().workers[1].state, WorkerState::kDraining);
  EXPECT_EQ(state.map().expert_workers, (std::vector<std::string>{"e1", "e3"}));
  ASSERT_TRUE(state.Drain("e1").ok());
  // One live worker left: replicas shrink to what exists.
  for (const auto& holders : state.map().placement.unit_workers) EXPECT_EQ(holders.size(), 1u);
  EXPECT_EQ(state.Drain("nobody").code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace dsv2
