// Loading a model whose config claims far more than its checkpoint holds
// must fail before it allocates anything sized by the config. This binary
// replaces the global operator new to measure the peak of live heap bytes
// during DeepseekV2Model::Load (its own binary, so no other test pays for it).
#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "common/model/deepseek_v2.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/hostile_model.h"

namespace {

std::atomic<int64_t> live_bytes{0};
std::atomic<int64_t> peak_bytes{0};

void* Allocate(size_t size) {
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  const int64_t now = live_bytes += static_cast<int64_t>(malloc_usable_size(p));
  int64_t peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
  return p;
}

void Release(void* p) {
  if (p == nullptr) return;
  live_bytes -= static_cast<int64_t>(malloc_usable_size(p));
  std::free(p);
}

}  // namespace

void* operator new(size_t size) { return Allocate(size); }
void* operator new[](size_t size) { return Allocate(size); }
void operator delete(void* p) noexcept { Release(p); }
void operator delete[](void* p) noexcept { Release(p); }
void operator delete(void* p, size_t) noexcept { Release(p); }
void operator delete[](void* p, size_t) noexcept { Release(p); }

namespace dsv2 {
namespace {

// The heap peak above what was live before `run`.
template <typename Run>
int64_t PeakGrowth(Run&& run) {
  const int64_t before = live_bytes.load();
  peak_bytes = before;
  run();
  return peak_bytes.load() - before;
}

// The config claims the largest model the bounds allow (512 layers of 1024
// experts: 1.5 million tensors); the checkpoint is the 3-layer tiny model.
// Listing the tensors up front took about 300 MB before failing; walking
// them one at a time fails at the first mismatch having allocated almost
// nothing.
TEST(LoadMemoryTest, ConfigClaimingAHugeModelFailsBeforeAllocatingForIt) {
  const std::string dir = testutil::CopyModel("tests/data/tiny-lite", "huge_claim");
  testutil::SetConfigField(dir, "num_hidden_layers", config_limits::kMaxLayers);
  testutil::SetConfigField(dir, "n_routed_experts", config_limits::kMaxRoutedExperts);
  absl::Status status;
  const int64_t growth = PeakGrowth([&] { status = DeepseekV2Model::Load(dir).status(); });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "tensor 'model.layers.1.mlp.gate.weight' in " + dir +
                                  "/model.safetensors has shape [12, 64], but the config implies "
                                  "[1024, 64]");
  // The config, the mapped checkpoint's header (107 tensors) and messages.
  EXPECT_LT(growth, int64_t{4} << 20) << "bytes";
}

// For scale: loading the real tiny model allocates its norm vectors and
// per-layer structures, so the measurement does see allocations.
TEST(LoadMemoryTest, TheMeasurementSeesALoadsAllocations) {
  std::unique_ptr<DeepseekV2Model> model;
  const int64_t growth = PeakGrowth([&] {
    auto loaded = DeepseekV2Model::Load("tests/data/tiny-lite");
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model = *std::move(loaded);
  });
  EXPECT_GT(growth, 10000);
}

}  // namespace
}  // namespace dsv2
