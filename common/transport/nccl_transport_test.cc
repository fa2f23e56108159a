// NcclTransport on real GPUs: one rank calling itself on a one-GPU machine,
// two ranks calling each other where there are two GPUs. Skipped, with the
// reason, where no CUDA device exists (the transport is then only compiled
// and linked).
#include "common/transport/nccl_transport.h"

#include <cuda_runtime.h>

#include <future>
#include <thread>

#include "common/transport/transport_test_util.h"
#include "gtest/gtest.h"

namespace dsv2::transport {
namespace {

using testing::CountMismatches;
using testing::ServeToyExpert;
using testing::TestDispatch;

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

TEST(NcclTransportTest, OneRankCallsItself) {
  if (DeviceCount() < 1) GTEST_SKIP() << "no CUDA device: the NCCL transport needs a GPU";
  absl::StatusOr<std::string> id = NcclTransport::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  absl::StatusOr<std::unique_ptr<NcclTransport>> t =
      NcclTransport::Create({.id = 5, .rank = 0, .nranks = 1, .unique_id = *id});
  ASSERT_TRUE(t.ok()) << t.status();
  (*t)->SetRequestHandler([](IncomingRequest r) { ServeToyExpert(std::move(r)); });
  for (uint32_t tokens : {1u, 64u}) {
    absl::StatusOr<Message> reply = CallAndWait(
        **t, (*t)->address(), *TestDispatch(**t, tokens, 5120, 6, tokens), absl::Seconds(30));
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(CountMismatches(*TestDispatch(**t, tokens, 5120, 6, tokens), *reply), 0u);
  }
  // Many in flight (more than one round's worth of slots).
  std::vector<std::future<absl::StatusOr<Message>>> pending;
  for (uint32_t seed = 0; seed < 40; ++seed) {
    pending.push_back(CallFuture(**t, (*t)->address(), *TestDispatch(**t, 8, 2048, 6, seed),
                                 absl::Now() + absl::Seconds(30)));
  }
  for (uint32_t seed = 0; seed < 40; ++seed) {
    absl::StatusOr<Message> reply = pending[seed].get();
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(CountMismatches(*TestDispatch(**t, 8, 2048, 6, seed), *reply), 0u);
  }
  EXPECT_FALSE(
      CallAndWait(**t, "nccl://other/0", *TestDispatch(**t, 1, 16, 1, 0), absl::Seconds(5)).ok());
}

TEST(NcclTransportTest, TwoRanksOnTwoGpus) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two CUDA devices (found " << DeviceCount() << ")";
  absl::StatusOr<std::string> id = NcclTransport::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  // Both ranks join at once (each Create blocks until all have joined).
  auto make = [&](int rank) {
    return NcclTransport::Create({.id = static_cast<PeerId>(rank),
                                  .rank = rank,
                                  .nranks = 2,
                                  .unique_id = *id,
                                  .device = rank});
  };
  auto second = std::async(std::launch::async, make, 1);
  absl::StatusOr<std::unique_ptr<NcclTransport>> a = make(0);
  absl::StatusOr<std::unique_ptr<NcclTransport>> b = second.get();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  (*a)->SetRequestHandler([](IncomingRequest r) { ServeToyExpert(std::move(r)); });
  (*b)->SetRequestHandler([](IncomingRequest r) { ServeToyExpert(std::move(r), DType::kF32); });
  absl::StatusOr<Message> ab =
      CallAndWait(**a, (*b)->address(), *TestDispatch(**a, 64, 5120, 6, 1), absl::Seconds(30));
  absl::StatusOr<Message> ba =
      CallAndWait(**b, (*a)->address(), *TestDispatch(**b, 32, 2048, 6, 2), absl::Seconds(30));
  ASSERT_TRUE(ab.ok()) << ab.status();
  ASSERT_TRUE(ba.ok()) << ba.status();
  EXPECT_EQ(ab->header.dtype, DType::kF32);
  EXPECT_EQ(CountMismatches(*TestDispatch(**a, 64, 5120, 6, 1), *ab), 0u);
  EXPECT_EQ(CountMismatches(*TestDispatch(**b, 32, 2048, 6, 2), *ba), 0u);
}

}  // namespace
}  // namespace dsv2::transport
