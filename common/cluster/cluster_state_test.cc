#include "common/cluster/cluster_state.h"

#include <algorithm>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using ::testing::HasSubstr;

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

// Test ids are short; their hash is a distinct nonzero peer id.
uint32_t PeerOf(const std::string& id) {
  return static_cast<uint32_t>(std::hash<std::string>{}(id)) | 1u;
}

WorkerInfo Expert(const std::string& id) {
  return {id, WorkerRole::kExpert, id + ":1", "ucx://" + id, 0, PeerOf(id)};
}

WorkerInfo Attention(const std::string& id) {
  return {id, WorkerRole::kAttention, id + ":1", "", 4096, PeerOf(id)};
}

WorkerState StateOf(const ClusterMap& map, const std::string& id) {
  const ClusterMap::Worker* worker = map.Find(id);
  EXPECT_NE(worker, nullptr) << id;
  return worker == nullptr ? WorkerState::kDead : worker->state;
}

// The ids holding each unit: the placement as every process sees it.
std::vector<std::vector<std::string>> Holders(const ClusterMap& map) {
  std::vector<std::vector<std::string>> holders;
  for (const auto& unit : map.placement.unit_workers) {
    holders.emplace_back();
    for (int32_t w : unit) holders.back().push_back(map.expert_workers[w]);
  }
  return holders;
}

using Ids = std::vector<std::string>;

TEST(ClusterStateTest, RegistrationPublishesVersionedPlacement) {
  ClusterState state(V2Routing(), 1, 5s, /*epoch=*/77);
  const auto t0 = Clock::time_point{};
  EXPECT_FALSE(state.map().complete);
  ASSERT_TRUE(state.Register(Attention("a1"), t0).ok());
  EXPECT_FALSE(state.map().complete);  // No expert worker yet.
  EXPECT_EQ(state.map().WhyIncomplete(), "no expert worker has joined the cluster");
  EXPECT_EQ(state.map().placement.num_units, 0);
  ASSERT_TRUE(state.Register(Expert("e1"), t0).ok());
  ASSERT_TRUE(state.Register(Expert("e2"), t0).ok());
  const ClusterMap& map = state.map();
  EXPECT_EQ(map.epoch, 77u);
  EXPECT_EQ(map.version, 3u);
  EXPECT_TRUE(map.complete);
  EXPECT_EQ(map.workers.size(), 3u);
  EXPECT_EQ(map.expert_workers, (Ids{"e1", "e2"}));
  EXPECT_EQ(map.placement.num_units, 4);
  EXPECT_EQ(map.placement.worker_units[0].size(), 2u);
  EXPECT_EQ(Holders(map), (std::vector<Ids>{{"e1"}, {"e2"}, {"e1"}, {"e2"}}));
  // A retried registration changes nothing, so it publishes nothing.
  ASSERT_TRUE(state.Register(Expert("e2"), t0 + 1s).ok());
  EXPECT_EQ(state.map().version, 3u);
}

TEST(ClusterStateTest, RejectsIncompleteRegistrationsAndTakenPeerIds) {
  ClusterState state(V2Routing(), 1, 5s);
  const auto t0 = Clock::time_point{};
  EXPECT_EQ(state.Register({"", WorkerRole::kExpert, "x", "y", 0, 9}, t0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Register({"e3", WorkerRole::kExpert, "e3:1", "", 0, 9}, t0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Register({"e3", WorkerRole::kExpert, "", "ucx://e3", 0, 9}, t0).code(),
            absl::StatusCode::kInvalidArgument);
  // Attention workers dispatch on the data plane too: they need a peer id.
  WorkerInfo no_peer = Attention("a1");
  no_peer.peer_id = 0;
  EXPECT_EQ(state.Register(no_peer, t0).code(), absl::StatusCode::kInvalidArgument);
  no_peer = Expert("e1");
  no_peer.peer_id = 0;
  EXPECT_EQ(state.Register(no_peer, t0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.map().version, 0u);

  ASSERT_TRUE(state.Register(Expert("e1"), t0).ok());
  WorkerInfo clash = Expert("e2");
  clash.peer_id = PeerOf("e1");
  const absl::Status taken = state.Register(clash, t0);
  EXPECT_EQ(taken.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(taken.message().find("e1"), std::string::npos) << taken;
  ASSERT_TRUE(state.Drain("e1").ok());  // Draining still holds its peer id.
  EXPECT_EQ(state.Register(clash, t0).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(state.ExpireLeases(t0 + 6s));  // A dead worker's id is free again.
  ASSERT_TRUE(state.Register(clash, t0 + 6s).ok());
  // The same worker may register again with its own peer id.
  ASSERT_TRUE(state.Register(clash, t0 + 7s).ok());
}

TEST(ClusterStateTest, DeathKeepsThePlacementAndWithoutReplicasMakesTheMapIncomplete) {
  ClusterState state(V2Routing(), 1, 5s);
  const auto t0 = Clock::time_point{};
  ASSERT_TRUE(state.Register(Expert("e1"), t0).ok());
  ASSERT_TRUE(state.Register(Expert("e2"), t0).ok());
  const auto placed = Holders(state.map());
  ASSERT_TRUE(state.Heartbeat("e1", t0 + 4s).ok());
  EXPECT_FALSE(state.ExpireLeases(t0 + 5s));  // Not lapsed yet.
  EXPECT_TRUE(state.ExpireLeases(t0 + 6s));   // e2's lease ended at 5 s.
  EXPECT_EQ(StateOf(state.map(), "e2"), WorkerState::kDead);
  // e2 keeps its slot: its groups do not move to e1, they have no server.
  EXPECT_EQ(state.map().expert_workers, (Ids{"e1", "e2"}));
  EXPECT_EQ(Holders(state.map()), placed);
  EXPECT_FALSE(state.map().complete);
  // e2's two groups of four experts (units 1 and 3) lack a live worker.
  EXPECT_EQ(state.map().WhyIncomplete(),
            "experts 4..7 have no live expert worker (e2 dead); 1 more unit(s) neither");
  EXPECT_EQ(state.Heartbeat("e2", t0 + 7s).code(), absl::StatusCode::kNotFound);

  // The same worker registering again takes its slot back: serving resumes.
  const uint64_t before = state.map().version;
  ASSERT_TRUE(state.Register(Expert("e2"), t0 + 7s).ok());
  EXPECT_GT(state.map().version, before);
  EXPECT_EQ(StateOf(state.map(), "e2"), WorkerState::kAlive);
  EXPECT_EQ(state.map().expert_workers, (Ids{"e1", "e2"}));
  EXPECT_EQ(Holders(state.map()), placed);
  EXPECT_TRUE(state.map().complete);
  EXPECT_EQ(state.map().WhyIncomplete(), "");

  EXPECT_TRUE(state.ExpireLeases(t0 + 20s));
  EXPECT_FALSE(state.map().complete);  // No live expert worker.
  EXPECT_EQ(state.map().expert_workers, (Ids{"e1", "e2"}));
  // e2 lapsed twice, e1 once.
  EXPECT_EQ(state.counters().lease_expiries, 3);
  EXPECT_EQ(state.counters().suspect_marks, 0);
}

TEST(ClusterStateTest, WithReplicasADeadWorkersUnitsStayServedByTheOthers) {
  ClusterState state(V2Routing(), 2, 5s);
  const auto t0 = Clock::time_point{};
  for (const char* id : {"e1", "e2", "e3"}) ASSERT_TRUE(state.Register(Expert(id), t0).ok());
  const auto placed = Holders(state.map());
  for (const auto& holders : placed) EXPECT_EQ(holders.size(), 2u);
  ASSERT_TRUE(state.Heartbeat("e1", t0 + 4s).ok());
  ASSERT_TRUE(state.Heartbeat("e2", t0 + 4s).ok());
  ASSERT_TRUE(state.ExpireLeases(t0 + 6s));
  EXPECT_EQ(StateOf(state.map(), "e3"), WorkerState::kDead);
  EXPECT_EQ(Holders(state.map()), placed);  // Nothing moves...
  EXPECT_TRUE(state.map().complete);        // ...and every unit still has a live copy.
  // Both holders of some unit dead: incomplete.
  ASSERT_TRUE(state.Heartbeat("e1", t0 + 8s).ok());
  ASSERT_TRUE(state.ExpireLeases(t0 + 10s));
  EXPECT_EQ(StateOf(state.map(), "e2"), WorkerState::kDead);
  EXPECT_FALSE(state.map().complete);
}

TEST(ClusterStateTest, ASuspectWorkerServesNoUnitUntilItExpiresOrRegistersAgain) {
  ClusterState state(V2Routing(), 2, 50s);
  const auto t0 = Clock::time_point{};
  for (const char* id : {"e1", "e2"}) ASSERT_TRUE(state.Register(Expert(id), t0).ok());
  ASSERT_TRUE(state.Register(Attention("a1"), t0).ok());
  const uint64_t version = state.map().version;
  // With two replicas a suspect worker leaves the map complete...
  ASSERT_TRUE(state.Suspect("e1", t0 + 5s).ok());
  EXPECT_GT(state.map().version, version);
  EXPECT_TRUE(state.map().Find("e1")->suspect);
  EXPECT_EQ(StateOf(state.map(), "e1"), WorkerState::kAlive);
  EXPECT_TRUE(state.map().complete);
  // ...both suspect: incomplete. A repeated report publishes nothing new.
  ASSERT_TRUE(state.Suspect("e2", t0 + 3s).ok());
  EXPECT_FALSE(state.map().complete);
  EXPECT_THAT(state.map().WhyIncomplete(),
              HasSubstr("have no live expert worker (e1 suspect (hung), e2 suspect (hung))"));
  const uint64_t both = state.map().version;
  ASSERT_TRUE(state.Suspect("e2", t0 + 4s).ok());
  EXPECT_EQ(state.map().version, both);
  EXPECT_EQ(state.counters().suspect_marks, 2);
  // Suspicions end when they expire...
  EXPECT_FALSE(state.ExpireLeases(t0 + 2s));
  ASSERT_TRUE(state.ExpireLeases(t0 + 4s));
  EXPECT_FALSE(state.map().Find("e2")->suspect);
  EXPECT_TRUE(state.map().Find("e1")->suspect);
  EXPECT_TRUE(state.map().complete);
  // ...or when the worker registers again (anew: another address).
  WorkerInfo moved = Expert("e1");
  moved.grpc_address = "elsewhere:1";
  ASSERT_TRUE(state.Register(moved, t0 + 4s).ok());
  EXPECT_FALSE(state.map().Find("e1")->suspect);
  // Only expert workers can be suspect; unknown ones are NotFound.
  EXPECT_EQ(state.Suspect("a1", t0 + 9s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.Suspect("nobody", t0 + 9s).code(), absl::StatusCode::kNotFound);
}

TEST(ClusterStateTest, ANewWorkerTakesTheFirstDeadSlot) {
  ClusterState state(V2Routing(), 1, 5s);
  const auto t0 = Clock::time_point{};
  for (const char* id : {"e1", "e2", "e3"}) ASSERT_TRUE(state.Register(Expert(id), t0).ok());
  const auto placed = Holders(state.map());  // Groups 0..3 on e1, e2, e3, e1.
  ASSERT_TRUE(state.Register(Attention("a1"), t0).ok());
  ASSERT_TRUE(state.Heartbeat("e3", t0 + 4s).ok());
  ASSERT_TRUE(state.Heartbeat("a1", t0 + 4s).ok());
  ASSERT_TRUE(state.ExpireLeases(t0 + 6s));  // e1 and e2 die.
  EXPECT_FALSE(state.map().complete);

  // e4 replaces e1 (the first dead slot) and serves exactly its groups;
  // e1 leaves the map.
  ASSERT_TRUE(state.Register(Expert("e4"), t0 + 6s).ok());
  EXPECT_EQ(state.map().expert_workers, (Ids{"e4", "e2", "e3"}));
  EXPECT_EQ(state.map().Find("e1"), nullptr);
  EXPECT_EQ(StateOf(state.map(), "e2"), WorkerState::kDead);
  auto expected = placed;
  for (auto& holders : expected) {
    for (auto& id : holders) id = id == "e1" ? "e4" : id;
  }
  EXPECT_EQ(Holders(state.map()), expected);
  EXPECT_FALSE(state.map().complete);  // e2's group still has nobody.
  ASSERT_TRUE(state.Register(Expert("e5"), t0 + 6s).ok());
  EXPECT_EQ(state.map().expert_workers, (Ids{"e4", "e5", "e3"}));
  EXPECT_TRUE(state.map().complete);
  EXPECT_EQ(state.map().workers.size(), 4u);  // a1, e3, e4, e5.

  // No dead slot left: a newcomer (e1 is new now) appends one, and the
  // placement is recomputed over four slots.
  ASSERT_TRUE(state.Register(Expert("e1"), t0 + 6s).ok());
  EXPECT_EQ(state.map().expert_workers, (Ids{"e4", "e5", "e3", "e1"}));
  EXPECT_EQ(Holders(state.map()), (std::vector<Ids>{{"e4"}, {"e5"}, {"e3"}, {"e1"}}));
  EXPECT_TRUE(state.map().complete);
}

// A restarted controller hears the workers back in any order; their slot
// hints put them back in their old slots, so the placement does not move.
TEST(ClusterStateTest, SlotHintsRestoreThePlacementAfterARestart) {
  const auto t0 = Clock::time_point{};
  ClusterState before(V2Routing(), 2, 5s);
  for (const char* id : {"e1", "e2", "e3", "e4"}) ASSERT_TRUE(before.Register(Expert(id), t0).ok());
  const ClusterMap& old_map = before.map();

  ClusterState after(V2Routing(), 2, 5s, /*epoch=*/2);
  for (const char* id : {"e3", "e1", "e4", "e2"}) {
    const auto slot = std::find(old_map.expert_workers.begin(), old_map.expert_workers.end(), id);
    ASSERT_TRUE(after.Register(Expert(id), t0, slot - old_map.expert_workers.begin()).ok());
  }
  EXPECT_EQ(after.map().expert_workers, old_map.expert_workers);
  EXPECT_EQ(Holders(after.map()), Holders(old_map));

  // Without hints the order is the registration order: the placement moves.
  ClusterState unhinted(V2Routing(), 2, 5s, /*epoch=*/3);
  for (const char* id : {"e3", "e1", "e4", "e2"}) ASSERT_TRUE(unhinted.Register(Expert(id), t0).ok());
  EXPECT_NE(Holders(unhinted.map()), Holders(old_map));
}

TEST(ClusterStateTest, DrainRemovesTheSlotAndRePlaces) {
  ClusterState state(V2Routing(), 2, 5s);
  const auto t0 = Clock::time_point{};
  for (const char* id : {"e1", "e2", "e3"}) ASSERT_TRUE(state.Register(Expert(id), t0).ok());
  for (const auto& holders : state.map().placement.unit_workers) EXPECT_EQ(holders.size(), 2u);
  ASSERT_TRUE(state.Drain("e2").ok());
  EXPECT_EQ(StateOf(state.map(), "e2"), WorkerState::kDraining);
  EXPECT_EQ(state.map().expert_workers, (Ids{"e1", "e3"}));
  EXPECT_EQ(Holders(state.map()),
            (std::vector<Ids>{{"e1", "e3"}, {"e3", "e1"}, {"e1", "e3"}, {"e3", "e1"}}));
  EXPECT_TRUE(state.map().complete);
  const uint64_t drained = state.map().version;
  ASSERT_TRUE(state.Drain("e2").ok());  // Already draining: no new map.
  EXPECT_EQ(state.map().version, drained);
  ASSERT_TRUE(state.Drain("e1").ok());
  // One slot left: replicas shrink to what exists.
  EXPECT_EQ(Holders(state.map()), (std::vector<Ids>{{"e3"}, {"e3"}, {"e3"}, {"e3"}}));
  EXPECT_EQ(state.Drain("nobody").code(), absl::StatusCode::kNotFound);
  // A draining worker that lapses is dead but had no slot: a newcomer
  // appends rather than taking anything over.
  ASSERT_TRUE(state.Heartbeat("e3", t0 + 4s).ok());
  ASSERT_TRUE(state.ExpireLeases(t0 + 6s));
  EXPECT_EQ(StateOf(state.map(), "e1"), WorkerState::kDead);
  EXPECT_EQ(state.Drain("e1").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(state.Register(Expert("e4"), t0 + 6s).ok());
  EXPECT_EQ(state.map().expert_workers, (Ids{"e3", "e4"}));
  EXPECT_NE(state.map().Find("e1"), nullptr);
}

TEST(ClusterStateTest, AnExpertComingBackAsAttentionGivesUpItsSlot) {
  ClusterState state(V2Routing(), 1, 5s);
  const auto t0 = Clock::time_point{};
  ASSERT_TRUE(state.Register(Expert("e1"), t0).ok());
  ASSERT_TRUE(state.Register(Expert("e2"), t0).ok());
  ASSERT_TRUE(state.Register(Attention("e2"), t0).ok());
  EXPECT_EQ(state.map().expert_workers, (Ids{"e1"}));
  EXPECT_EQ(Holders(state.map()), (std::vector<Ids>{{"e1"}, {"e1"}, {"e1"}, {"e1"}}));
}

}  // namespace
}  // namespace dsv2
