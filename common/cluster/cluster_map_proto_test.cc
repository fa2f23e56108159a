#include "common/cluster/cluster_map_proto.h"
#include "common/cluster/control_client.h"

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

using namespace std::chrono_literals;
using Clock = ClusterState::Clock;

ModelConfig Groups() {
  ModelConfig config;
  config.topk_method = TopkMethod::kGroupLimitedGreedy;
  config.n_routed_experts = 16;
  config.n_group = 4;
  config.topk_group = 2;
  config.num_experts_per_tok = 4;
  return config;
}

ModelConfig Greedy() {
  ModelConfig config;
  config.topk_method = TopkMethod::kGreedy;
  config.n_routed_experts = 10;
  config.num_experts_per_tok = 2;
  return config;
}

WorkerInfo Expert(const std::string& id, uint32_t peer) {
  return {id, WorkerRole::kExpert, id + ":1", "ucx://" + id, 0, peer};
}

void ExpectSameMap(const ClusterMap& got, const ClusterMap& want) {
  EXPECT_EQ(got.epoch, want.epoch);
  EXPECT_EQ(got.version, want.version);
  EXPECT_EQ(got.workers, want.workers);
  EXPECT_EQ(got.expert_workers, want.expert_workers);
  EXPECT_EQ(got.complete, want.complete);
  EXPECT_EQ(got.placement.num_units, want.placement.num_units);
  EXPECT_EQ(got.placement.unit_begin, want.placement.unit_begin);
  EXPECT_EQ(got.placement.unit_workers, want.placement.unit_workers);
  EXPECT_EQ(got.placement.worker_units, want.placement.worker_units);
}

TEST(ClusterMapProtoTest, RoundTripsTheControllersMap) {
  for (int64_t replicas : {1, 2, 3}) {
    for (int workers : {1, 3, 4}) {
      SCOPED_TRACE(::testing::Message() << replicas << " replicas, " << workers << " workers");
      ClusterState state(Groups(), replicas, 5s, /*epoch=*/1234);
      const auto t0 = Clock::time_point{};
      ASSERT_TRUE(
          state.Register({"a1", WorkerRole::kAttention, "a1:1", "tcp://a1", 8192, 99}, t0).ok());
      for (int w = 0; w < workers; ++w) {
        const std::string id = "e" + std::to_string(w);
        ASSERT_TRUE(state.Register(Expert(id, 100 + w), t0).ok());
      }
      // A dead worker keeps its place; the wire form must keep it too.
      for (int w = 1; w < workers; ++w) {
        ASSERT_TRUE(state.Heartbeat("e" + std::to_string(w), t0 + 4s).ok());
      }
      ASSERT_TRUE(state.Heartbeat("a1", t0 + 4s).ok());
      ASSERT_TRUE(state.ExpireLeases(t0 + 6s));
      const internal::ClusterMap wire = ToProto(state.map());
      EXPECT_EQ(wire.epoch(), 1234u);
      absl::StatusOr<ClusterMap> back = FromProto(wire, Groups());
      ASSERT_TRUE(back.ok()) << back.status();
      ExpectSameMap(*back, state.map());
    }
  }
}

TEST(ClusterMapProtoTest, RoundTripsGreedySlicesAndAMapWithoutExperts) {
  ClusterState state(Greedy(), 1, 5s, 5);
  ASSERT_TRUE(state.Register({"a1", WorkerRole::kAttention, "a1:1", "", 1, 7}, {}).ok());
  absl::StatusOr<ClusterMap> empty = FromProto(ToProto(state.map()), Greedy());
  ASSERT_TRUE(empty.ok()) << empty.status();
  ExpectSameMap(*empty, state.map());
  EXPECT_FALSE(empty->complete);
  for (int w = 0; w < 3; ++w) {
    ASSERT_TRUE(state.Register(Expert("e" + std::to_string(w), 10 + w), {}).ok());
  }
  const internal::ClusterMap wire = ToProto(state.map());
  ASSERT_EQ(wire.placement_size(), 3);
  EXPECT_EQ(wire.placement(1).expert_begin(), 3u);
  EXPECT_EQ(wire.placement(1).expert_end(), 6u);
  EXPECT_EQ(wire.placement(1).worker_ids(0), "e1");
  EXPECT_EQ(wire.workers(1).info().peer_id(), 10u);
  absl::StatusOr<ClusterMap> back = FromProto(wire, Greedy());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameMap(*back, state.map());
  EXPECT_EQ(back->placement.ExpertsOf(2), (std::vector<int32_t>{6, 7, 8, 9}));
}

TEST(ClusterMapProtoTest, WorkerInfoRoundTripsAndNeedsARole) {
  const WorkerInfo info{"a7", WorkerRole::kAttention, "h:1", "tcp://h:2", 65536, 0xdeadbeef};
  absl::StatusOr<WorkerInfo> back = FromProto(ToProto(info));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, info);
  internal::WorkerInfo no_role = ToProto(info);
  no_role.set_role(internal::ROLE_UNSPECIFIED);
  EXPECT_EQ(FromProto(no_role).status().code(), absl::StatusCode::kInvalidArgument);
}

// A valid wire map (two experts, two groups of 16 experts' model) to break.
internal::ClusterMap ValidWire() {
  ClusterState state(Groups(), 1, 5s, 1);
  EXPECT_TRUE(state.Register(Expert("e0", 1), {}).ok());
  EXPECT_TRUE(state.Register(Expert("e1", 2), {}).ok());
  EXPECT_TRUE(state.Register({"a1", WorkerRole::kAttention, "a1:1", "", 1, 3}, {}).ok());
  return ToProto(state.map());
}

void ExpectInvalid(const internal::ClusterMap& wire, const std::string& message) {
  absl::StatusOr<ClusterMap> map = FromProto(wire, Groups());
  EXPECT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument) << map.status();
  EXPECT_NE(map.status().message().find(message), std::string::npos) << map.status();
}

TEST(ClusterMapProtoTest, RejectsPlacementsThatDoNotCoverTheModel) {
  ASSERT_TRUE(FromProto(ValidWire(), Groups()).ok());
  internal::ClusterMap wire = ValidWire();
  wire.mutable_placement(1)->set_expert_begin(5);  // Gap after [0, 4).
  ExpectInvalid(wire,
                "placement unit 1 holds experts [5, 8); expected a non-empty range starting "
                "at expert 4");
  wire = ValidWire();
  wire.mutable_placement(3)->set_expert_end(15);
  ExpectInvalid(wire, "placement ends at expert 15; the model has 16 routed experts");
  wire = ValidWire();
  wire.mutable_placement(3)->set_expert_end(20);
  ExpectInvalid(wire, "placement unit 3 ends at expert 20; the model has 16 routed experts");
  wire = ValidWire();
  wire.mutable_placement(2)->set_expert_end(8);  // Empty unit.
  ExpectInvalid(wire, "placement unit 2 holds experts [8, 8)");
  wire = ValidWire();
  wire.mutable_placement(0)->clear_worker_ids();
  ExpectInvalid(wire, "placement unit 0 has no worker");
  wire = ValidWire();
  wire.mutable_placement(2)->set_worker_ids(0, "ghost");
  ExpectInvalid(wire, "placement unit 2 names worker ghost, which the map does not list");
  wire = ValidWire();
  wire.mutable_placement(2)->set_worker_ids(0, "a1");
  ExpectInvalid(wire, "placement unit 2 names worker a1, which is not a non-draining expert");
  wire = ValidWire();
  wire.mutable_placement(1)->add_worker_ids("e1");
  ExpectInvalid(wire, "placement unit 1 names worker e1 twice");
}

TEST(ClusterMapProtoTest, RejectsInconsistentMembers) {
  internal::ClusterMap wire = ValidWire();
  *wire.add_workers() = wire.workers(0);
  ExpectInvalid(wire, "lists worker a1 twice");
  wire = ValidWire();
  wire.mutable_workers(1)->set_state(internal::WORKER_STATE_UNSPECIFIED);
  ExpectInvalid(wire, "worker e0 has no valid state");
  wire = ValidWire();
  wire.mutable_workers(2)->set_state(internal::WORKER_STATE_DEAD);  // e1: groups 1 and 3.
  ExpectInvalid(wire, "marked complete but placement unit 1 has no alive worker");
  wire.set_complete(false);
  EXPECT_TRUE(FromProto(wire, Groups()).ok());
  wire.clear_placement();
  wire.set_complete(true);
  ExpectInvalid(wire, "marked complete but has no placement");
}

TEST(WorkerGrpcAddressTest, AdvertisedNameOrTheListenHostWithTheBoundPort) {
  EXPECT_EQ(*WorkerGrpcAddress("127.0.0.1:0", 41000, ""), "127.0.0.1:41000");
  EXPECT_EQ(*WorkerGrpcAddress("0.0.0.0:50051", 50051, "expert-0.experts.ns.svc:50051"),
            "expert-0.experts.ns.svc:50051");
  EXPECT_EQ(*WorkerGrpcAddress("0.0.0.0:0", 41000, "expert-0.experts"), "expert-0.experts:41000");
  for (const char* bad : {":50051", "host:", "host:0", "host:70000", "host:5x", "a b:1", "h/x:1"}) {
    const absl::StatusOr<std::string> address = WorkerGrpcAddress("0.0.0.0:1", 1, bad);
    EXPECT_EQ(address.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(address.status().message().find("--advertise"), std::string::npos) << bad;
  }
}

}  // namespace
}  // namespace dsv2
