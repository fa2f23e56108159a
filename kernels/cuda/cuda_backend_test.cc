// CudaBackend against the CPU reference (CpuBackendInstance), op by op, on
// DeepSeek-V2, V2-Lite and awkward shapes with fixed seeds. Tolerances are
// relative to the largest magnitude of each compared row (docs/gpu.md,
// "Kernels", explains each). Every test skips where no CUDA device is present.
#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/model/backend.h"
#include "common/model/config.h"
#include "common/model/kv_cache_view.h"
#include "common/sampling/sampler.h"
#include "common/tensor/dtype.h"
#include "common/tensor/q8.h"

namespace dsv2 {
namespace {

// ---- Host data ----------------------------------------------------------------

std::vector<float> RandomVector(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A weight matrix in host memory in one dtype, and its WeightMatrix view.
struct HostMatrix {
  std::vector<uint16_t> half;  // bf16 or f16 bits
  std::vector<float> f32;
  std::vector<int8_t> q;
  std::vector<float> scales;
  WeightMatrix view;
};

HostMatrix RandomMatrix(DType dtype, int64_t rows, int64_t cols, uint32_t seed, float scale) {
  HostMatrix m;
  const std::vector<float> values = RandomVector(rows * cols, seed, scale);
  m.view = WeightMatrix{dtype, rows, cols, nullptr, nullptr};
  switch (dtype) {
    case DType::kBF16:
    case DType::kF16:
      m.half.resize(values.size());
      ConvertFromFloat(values.data(), rows * cols, dtype, m.half.data());
      m.view.data = m.half.data();
      break;
    case DType::kF32:
      m.f32 = values;
      m.view.data = m.f32.data();
      break;
    case DType::kI8: {
      const int64_t blocks = Q8Blocks(cols);
      m.q.resize(rows * cols);
      m.scales.resize(rows * blocks);
      for (int64_t r = 0; r < rows; ++r) {
        QuantizeQ8(&values[r * cols], cols, &m.q[r * cols], &m.scales[r * blocks]);
      }
      m.view.data = m.q.data();
      m.view.scales = m.scales.data();
      break;
    }
  }
  return m;
}

// Per row of `cols`: |gpu − cpu| ≤ tolerance · max(max |cpu row|, floor).
void ExpectRowsClose(const std::vector<float>& cpu, const std::vector<float>& gpu, int64_t cols,
                     double tolerance, const std::string& what, double floor = 1e-30) {
  ASSERT_EQ(cpu.size(), gpu.size()) << what;
  int reported = 0;
  for (size_t row = 0; row * cols < cpu.size(); ++row) {
    double max_abs = floor;
    for (int64_t c = 0; c < cols; ++c) max_abs = std::max<double>(max_abs, std::abs(cpu[row * cols + c]));
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = row * cols + c;
      const double error = std::abs(static_cast<double>(gpu[i]) - cpu[i]);
      if (!(error <= tolerance * max_abs) && reported++ < 5) {
        ADD_FAILURE() << what << ": row " << row << " col " << c << " cpu " << cpu[i] << " gpu "
                      << gpu[i] << " (error " << error / max_abs << " of the row's max "
                      << max_abs << ", tolerance " << tolerance << ")";
      }
    }
  }
}

// ---- Caches -------------------------------------------------------------------

// One layer's latents, contiguous, in a backend's memory.
class ContiguousCache final : public KvCacheView {
 public:
  ContiguousCache(Backend& backend, int64_t capacity, int64_t latent)
      : latent_(latent), capacity_(capacity), data_(backend.Allocate(capacity * latent)) {}
  int64_t size() const override { return size_; }
  int64_t capacity() const override { return capacity_; }
  float* At(int64_t layer, int64_t pos) override { return data_.data() + pos * latent_; }
  int64_t ContiguousFrom(int64_t pos) const override { return capacity_ - pos; }
  void set_size(int64_t size) override { size_ = size; }
  const Backend* backend() const override { return data_.backend(); }

 private:
  int64_t latent_, capacity_, size_ = 0;
  Buffer data_;
};

// Positions in blocks of `block` positions, each a separate allocation, the
// blocks handed out in a shuffled order (as a paged cache's free list would).
class PagedCache final : public KvCacheView {
 public:
  PagedCache(Backend& backend, int64_t capacity, int64_t latent, int64_t block, uint32_t seed)
      : latent_(latent), capacity_(capacity), block_(block) {
    const int64_t blocks = (capacity + block - 1) / block;
    for (int64_t b = 0; b < blocks; ++b) pool_.push_back(backend.Allocate(block * latent));
    order_.resize(blocks);
    std::iota(order_.begin(), order_.end(), 0);
    std::shuffle(order_.begin(), order_.end(), std::mt19937(seed));
  }
  int64_t size() const override { return size_; }
  int64_t capacity() const override { return capacity_; }
  float* At(int64_t layer, int64_t pos) override {
    return pool_[order_[pos / block_]].data() + (pos % block_) * latent_;
  }
  int64_t ContiguousFrom(int64_t pos) const override { return block_ - pos % block_; }
  void set_size(int64_t size) override { size_ = size; }
  const Backend* backend() const override { return pool_.front().backend(); }

 private:
  int64_t latent_, capacity_, block_, size_ = 0;
  std::vector<Buffer> pool_;
  std::vector<int64_t> order_;
};

// ---- Fixture ------------------------------------------------------------------

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<CudaBackend>> backend = CudaBackend::Create();
    if (!backend.ok()) GTEST_SKIP() << "no CUDA device here: " << backend.status();
    gpu_ = std::move(*backend);
  }

  Backend& cpu() { return CpuBackendInstance(); }

  Buffer ToDevice(const std::vector<float>& host) {
    Buffer buffer = gpu_->Allocate(static_cast<int64_t>(host.size()));
    gpu_->Upload(host.data(), buffer.data(), static_cast<int64_t>(host.size()));
    return buffer;
  }
  std::vector<float> ToHost(const float* device, int64_t count) {
    std::vector<float> host(count);
    gpu_->Download(device, host.data(), count);
    return host;
  }

  std::unique_ptr<CudaBackend> gpu_;
};

TEST(CudaBackendCreateTest, MissingDeviceIsFailedPrecondition) {
  // No driver or no GPU here, or no device 1000 there: either way the same code.
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend = CudaBackend::Create(1000);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition)
      << backend.status();
}

// ---- Elementwise --------------------------------------------------------------

TEST_F(CudaBackendTest, EmbeddingIsExactForEveryTableDtype) {
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (int64_t cols : {int64_t{5120}, int64_t{2048}, int64_t{45}}) {
      HostMatrix table = RandomMatrix(dtype, 300, cols, 7, 1.0f);
      const std::vector<int32_t> ids = {0, 299, 17, 17, 5, 128, 1};
      const int64_t n = static_cast<int64_t>(ids.size());
      std::vector<float> want(n * cols);
      cpu().Embedding(table.view, ids.data(), n, want.data());
      Buffer out = gpu_->Allocate(n * cols);
      gpu_->Embedding(table.view, ids.data(), n, out.data());
      EXPECT_EQ(ToHost(out.data(), n * cols), want) << DTypeName(dtype) << " cols " << cols;
    }
  }
}

TEST_F(CudaBackendTest, RmsNormMatches) {
  // Only the order of the sum of squares differs: a few float32 ulps.
  for (int64_t dim : {int64_t{5120}, int64_t{2048}, int64_t{512}, int64_t{17}, int64_t{1}}) {
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{17}}) {
      const std::vector<float> x = RandomVector(n * dim, 11, 3.0f);
      const std::vector<float> w = RandomVector(dim, 12, 1.0f);
      std::vector<float> want(n * dim);
      cpu().RmsNorm(x.data(), w, n, dim, 1e-6f, want.data());
      Buffer dx = ToDevice(x);
      gpu_->RmsNorm(dx.data(), w, n, dim, 1e-6f, dx.data());  // In place.
      ExpectRowsClose(want, ToHost(dx.data(), n * dim), dim, 2e-6,
                      "rmsnorm dim " + std::to_string(dim));
    }
  }
}

TEST_F(CudaBackendTest, AddIsExactAndSiluMulMatches) {
  for (int64_t count : {int64_t{1}, int64_t{17}, int64_t{3 * 5120 + 5}}) {
    const std::vector<float> a = RandomVector(count, 21, 4.0f), b = RandomVector(count, 22, 2.0f);
    std::vector<float> sum = b;
    cpu().Add(a.data(), sum.data(), count);
    Buffer da = ToDevice(a), db = ToDevice(b);
    gpu_->Add(da.data(), db.data(), count);
    EXPECT_EQ(ToHost(db.data(), count), sum);

    // expf against the host's exp: a few ulps of each element.
    std::vector<float> silu(count);
    cpu().SiluMul(a.data(), b.data(), silu.data(), count);
    Buffer dg = ToDevice(a), du = ToDevice(b);
    gpu_->SiluMul(dg.data(), du.data(), dg.data(), count);  // out aliases gate.
    ExpectRowsClose(silu, ToHost(dg.data(), count), 1, 1e-6, "silu", 1e-30);
  }
}

// ---- Linear -------------------------------------------------------------------

struct LinearCase {
  DType dtype;
  int64_t rows, cols, n;
  double tolerance;
};

TEST_F(CudaBackendTest, LinearMatchesForEveryDtypeAndShape) {
  // bf16 weights, n ≤ 64: activations split into hi + lo bf16 (~2^-17
  // relative), float32 accumulation: 1e-4 of the row's largest output.
  // n > 64: one bf16 rounding of the activations (2^-9): 1e-2.
  // f32 and f16 (widened exactly): an f32 GEMM, 1e-5.
  // int8: the CPU quantizes activations to int8 per 32-block, the GPU
  // multiplies bf16-dequantized weights: 3e-2.
  const std::vector<LinearCase> cases = {
      {DType::kBF16, 576, 5120, 1, 1e-4},   {DType::kBF16, 1536, 5120, 3, 1e-4},
      {DType::kBF16, 3072, 2048, 17, 1e-4}, {DType::kBF16, 1408, 2048, 100, 1e-2},
      {DType::kBF16, 33, 45, 1, 1e-4},      {DType::kBF16, 7, 1, 3, 1e-4},
      {DType::kF32, 576, 2048, 3, 1e-5},    {DType::kF16, 100, 1000, 17, 1e-5},
      {DType::kI8, 576, 2048, 3, 3e-2},     {DType::kI8, 33, 45, 17, 3e-2},
  };
  uint32_t seed = 100;
  for (const LinearCase& c : cases) {
    HostMatrix w = RandomMatrix(c.dtype, c.rows, c.cols, ++seed, 1.0f / std::sqrt(c.cols));
    const std::vector<float> x = RandomVector(c.n * c.cols, ++seed, 1.0f);
    std::vector<float> want(c.n * c.rows);
    cpu().Linear(x.data(), c.n, w.view, want.data());
    Buffer dx = ToDevice(x), dy = gpu_->Allocate(c.n * c.rows);
    gpu_->Linear(dx.data(), c.n, w.view, dy.data());
    ExpectRowsClose(want, ToHost(dy.data(), c.n * c.rows), c.rows, c.tolerance,
                    std::string(DTypeName(c.dtype)) + " " + std::to_string(c.rows) + "x" +
                        std::to_string(c.cols) + " n=" + std::to_string(c.n));
  }
}

TEST_F(CudaBackendTest, DenseMlpMatches) {
  const int64_t hidden = 2048, width = 1408, n = 3;
  HostMatrix gate = RandomMatrix(DType::kBF16, width, hidden, 31, 0.03f);
  HostMatrix up = RandomMatrix(DType::kBF16, width, hidden, 32, 0.03f);
  HostMatrix down = RandomMatrix(DType::kBF16, hidden, width, 33, 0.03f);
  const MlpWeights mlp{gate.view, up.view, down.view};
  const std::vector<float> x = RandomVector(n * hidden, 34, 1.0f);
  std::vector<float> want(n * hidden);
  cpu().Mlp(mlp, x.data(), n, want.data());
  Buffer dx = ToDevice(x), dy = gpu_->Allocate(n * hidden);
  gpu_->Mlp(mlp, dx.data(), n, dy.data());
  ExpectRowsClose(want, ToHost(dy.data(), n * hidden), hidden, 2e-4, "mlp");
}

// ---- MLA attention ------------------------------------------------------------

struct MlaCase {
  const char* name;
  MlaShape shape;
  int64_t start, n;
  bool absorbed;
  bool paged;
  double tolerance;
};

MlaShape Shape(int64_t heads, int64_t nope, int64_t rope, int64_t v, int64_t rank) {
  MlaShape shape;
  shape.heads = heads, shape.nope = nope, shape.rope = rope, shape.v = v, shape.rank = rank;
  shape.softmax_scale = 0.1147214f;
  shape.latent_norm_eps = 1e-6f;
  return shape;
}

class MlaAttentionTest : public CudaBackendTest, public ::testing::WithParamInterface<MlaCase> {};

TEST_P(MlaAttentionTest, MatchesCpu) {
  const MlaCase& c = GetParam();
  const MlaShape& s = c.shape;
  const int64_t latent = s.latent(), half = s.rope / 2, context = c.start + c.n;
  const int64_t layer = 0;
  HostMatrix kv_b = RandomMatrix(DType::kBF16, s.heads * (s.nope + s.v), s.rank, 41,
                                 1.0f / std::sqrt(static_cast<float>(s.rank)));
  const std::vector<float> norm = RandomVector(s.rank, 42, 1.0f);
  const std::vector<float> q = RandomVector(c.n * s.heads * s.qk(), 43, 1.0f);
  const std::vector<float> kv_a = RandomVector(c.n * latent, 44, 1.0f);
  const std::vector<float> angles = RandomVector(c.n * half, 45, 3.0f);
  std::vector<float> cos(c.n * half), sin(c.n * half);
  for (size_t i = 0; i < angles.size(); ++i) cos[i] = std::cos(angles[i]), sin[i] = std::sin(angles[i]);
  // Earlier positions' latents: normalized-looking c and k_pe.
  const std::vector<float> history = RandomVector(c.start * latent, 46, 1.0f);

  // CPU reference over a contiguous host cache.
  ContiguousCache cpu_cache(cpu(), context, latent);
  for (int64_t pos = 0; pos < c.start; ++pos) {
    std::copy_n(&history[pos * latent], latent, cpu_cache.At(layer, pos));
  }
  cpu_cache.set_size(c.start);
  std::vector<float> cpu_q = q, cpu_o(c.n * s.heads * s.v);
  const MlaChunk cpu_chunk{&cpu_cache, 0, c.n, c.absorbed};
  cpu().MlaAttention(s, layer, kv_b.view, norm, {&cpu_chunk, 1}, cpu_q.data(), kv_a.data(),
                     cos.data(), sin.data(), cpu_o.data());

  std::unique_ptr<KvCacheView> gpu_cache;
  if (c.paged) {
    gpu_cache = std::make_unique<PagedCache>(*gpu_, context, latent, 16, 47);
  } else {
    gpu_cache = std::make_unique<ContiguousCache>(*gpu_, context, latent);
  }
  for (int64_t pos = 0; pos < c.start; ++pos) {
    gpu_->Upload(&history[pos * latent], gpu_cache->At(layer, pos), latent);
  }
  gpu_cache->set_size(c.start);
  Buffer dq = ToDevice(q), dkv_a = ToDevice(kv_a), dcos = ToDevice(cos), dsin = ToDevice(sin);
  Buffer dout = gpu_->Allocate(c.n * s.heads * s.v);
  const MlaChunk gpu_chunk{gpu_cache.get(), 0, c.n, c.absorbed};
  gpu_->MlaAttention(s, layer, kv_b.view, norm, {&gpu_chunk, 1}, dq.data(), dkv_a.data(),
                     dcos.data(), dsin.data(), dout.data());

  // RoPE is computed with the same roundings: exact. The new latents:
  // RMSNorm's sum order only.
  EXPECT_EQ(ToHost(dq.data(), c.n * s.heads * s.qk()), cpu_q) << c.name;
  for (int64_t i = 0; i < c.n; ++i) {
    const float* want = cpu_cache.At(layer, c.start + i);
    ExpectRowsClose(std::vector<float>(want, want + latent),
                    ToHost(gpu_cache->At(layer, c.start + i), latent), latent, 2e-6,
                    std::string(c.name) + " latent");
  }
  ExpectRowsClose(cpu_o, ToHost(dout.data(), c.n * s.heads * s.v), s.v, c.tolerance, c.name);
}

// Absorbed: all float32 (the W_UK fold in the CPU's own order), only the
// attention sums' order differs: 1e-4. Decompressed: K/V come from a bf16
// GEMM over the latents: ≤ 64 positions split hi + lo (1e-4), more one bf16
// rounding of the latents (1e-2).
INSTANTIATE_TEST_SUITE_P(
    Shapes, MlaAttentionTest,
    ::testing::Values(
        MlaCase{"v2_decode_1", Shape(128, 128, 64, 128, 512), 0, 1, true, false, 1e-4},
        MlaCase{"v2_decode_63", Shape(128, 128, 64, 128, 512), 62, 1, true, false, 1e-4},
        MlaCase{"v2_decode_split", Shape(128, 128, 64, 128, 512), 1200, 3, true, false, 1e-4},
        MlaCase{"v2_prefill_17", Shape(128, 128, 64, 128, 512), 0, 17, false, false, 1e-4},
        MlaCase{"v2_prefill_63", Shape(128, 128, 64, 128, 512), 46, 17, false, false, 1e-4},
        MlaCase{"lite_decode_1", Shape(16, 128, 64, 128, 512), 0, 1, true, false, 1e-4},
        MlaCase{"lite_decode_split", Shape(16, 128, 64, 128, 512), 1030, 1, true, false, 1e-4},
        MlaCase{"lite_absorbed_17", Shape(16, 128, 64, 128, 512), 100, 17, true, false, 1e-4},
        MlaCase{"lite_prefill_1000", Shape(16, 128, 64, 128, 512), 990, 17, false, false, 1e-2},
        MlaCase{"lite_prefill_3", Shape(16, 128, 64, 128, 512), 0, 3, false, false, 1e-4},
        MlaCase{"odd_decode", Shape(3, 40, 24, 36, 100), 1000, 3, true, false, 1e-4},
        MlaCase{"odd_prefill", Shape(3, 40, 24, 36, 100), 60, 3, false, false, 1e-4},
        MlaCase{"odd_one_head", Shape(1, 8, 2, 5, 7), 0, 17, true, false, 1e-4},
        MlaCase{"paged_decode", Shape(16, 128, 64, 128, 512), 1100, 1, true, true, 1e-4},
        MlaCase{"paged_prefill", Shape(16, 128, 64, 128, 512), 40, 17, false, true, 1e-4},
        MlaCase{"paged_odd", Shape(3, 40, 24, 36, 100), 33, 3, true, true, 1e-4}),
    [](const ::testing::TestParamInfo<MlaCase>& info) { return std::string(info.param.name); });

// ---- Routing ------------------------------------------------------------------

ModelConfig RoutingConfig(int64_t experts, int64_t k, bool group_limited, int64_t groups,
                          int64_t topk_group, double scaling, bool norm) {
  ModelConfig config;
  config.n_routed_experts = experts;
  config.num_experts_per_tok = k;
  config.topk_method = group_limited ? TopkMethod::kGroupLimitedGreedy : TopkMethod::kGreedy;
  config.n_group = groups;
  config.topk_group = topk_group;
  config.routed_scaling_factor = scaling;
  config.norm_topk_prob = norm;
  return config;
}

TEST_F(CudaBackendTest, RouteMatchesCpuIdsExactly) {
  const std::vector<ModelConfig> configs = {
      RoutingConfig(160, 6, true, 8, 3, 16.0, false),  // DeepSeek-V2
      RoutingConfig(64, 6, false, 1, 1, 1.0, false),   // V2-Lite
      RoutingConfig(64, 6, false, 1, 1, 1.0, true),    // norm_topk_prob
      RoutingConfig(17, 3, false, 1, 1, 2.5, false),   // awkward
      RoutingConfig(36, 4, true, 6, 2, 1.0, true),
  };
  uint32_t seed = 300;
  for (const ModelConfig& config : configs) {
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{17}}) {
      const int64_t e = config.n_routed_experts, k = config.num_experts_per_tok;
      const std::vector<float> logits = RandomVector(n * e, ++seed, 2.0f);
      std::vector<float> cpu_scores = logits, cpu_w(n * k), gpu_w(n * k);
      std::vector<int32_t> cpu_ids(n * k), gpu_ids(n * k);
      ASSERT_TRUE(cpu().Route(config, 1, cpu_scores.data(), n, cpu_ids.data(), cpu_w.data()).ok());
      Buffer dl = ToDevice(logits);
      ASSERT_TRUE(gpu_->Route(config, 1, dl.data(), n, gpu_ids.data(), gpu_w.data()).ok());
      // Random logits have no near-ties: the choice is the same.
      EXPECT_EQ(gpu_ids, cpu_ids) << "experts " << e << " n " << n;
      ExpectRowsClose(cpu_w, gpu_w, k, 1e-5, "routing weights");
      ExpectRowsClose(cpu_scores, ToHost(dl.data(), n * e), e, 1e-5, "scores");
    }
  }
}

TEST_F(CudaBackendTest, RouteBreaksTiesTowardTheLowerId) {
  // Equal logits: every score is the same, the lowest ids win (and the
  // lowest groups under group-limited routing).
  for (const ModelConfig& config : {RoutingConfig(160, 6, true, 8, 3, 16.0, false),
                                    RoutingConfig(64, 6, false, 1, 1, 1.0, false)}) {
    const int64_t e = config.n_routed_experts, k = config.num_experts_per_tok;
    std::vector<float> logits(2 * e, 0.5f), cpu_w(2 * k), gpu_w(2 * k);
    std::vector<int32_t> cpu_ids(2 * k), gpu_ids(2 * k);
    std::vector<float> host = logits;
    ASSERT_TRUE(cpu().Route(config, 1, host.data(), 2, cpu_ids.data(), cpu_w.data()).ok());
    Buffer dl = ToDevice(logits);
    ASSERT_TRUE(gpu_->Route(config, 1, dl.data(), 2, gpu_ids.data(), gpu_w.data()).ok());
    EXPECT_EQ(gpu_ids, cpu_ids);
    EXPECT_EQ(gpu_ids[0], 0);
  }
}

TEST_F(CudaBackendTest, RouteReportsNonFiniteScoresLikeTheCpu) {
  const ModelConfig config = RoutingConfig(64, 6, false, 1, 1, 1.0, false);
  std::vector<float> logits = RandomVector(3 * 64, 400, 1.0f);
  logits[64 + 5] = std::nanf("");
  std::vector<float> host = logits, w(3 * 6);
  std::vector<int32_t> ids(3 * 6);
  const absl::Status want = cpu().Route(config, 7, host.data(), 3, ids.data(), w.data());
  Buffer dl = ToDevice(logits);
  const absl::Status got = gpu_->Route(config, 7, dl.data(), 3, ids.data(), w.data());
  EXPECT_EQ(got.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(got, want);
}

// ---- Routed experts -----------------------------------------------------------

struct ExpertCase {
  const char* name;
  int64_t hidden, width, experts, k, rows;
};

TEST_F(CudaBackendTest, ExpertRowsMatchesInTheCpuSummationOrder) {
  // The GEMMs run on ≤ 64 rows per expert (hi + lo split); partials are
  // summed per row in ascending expert order as on the CPU: 2e-4.
  const std::vector<ExpertCase> cases = {
      {"v2", 5120, 1536, 160, 6, 3},
      {"lite", 2048, 1408, 64, 6, 5},
      {"odd", 45, 17, 9, 3, 17},
  };
  uint32_t seed = 500;
  for (const ExpertCase& c : cases) {
    std::mt19937 rng(++seed);
    // Rows' expert ids: distinct, in the random order of a top-k by score
    // (the sum must still run in ascending id order), some rows with a -1
    // pad in one of their slots.
    std::vector<int32_t> ids(c.rows * c.k, -1);
    std::vector<float> weights(c.rows * c.k, 0.0f);
    std::vector<bool> used(c.experts, false);
    for (int64_t r = 0; r < c.rows; ++r) {
      std::vector<int32_t> all(c.experts);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      const int64_t filled = r % 4 == 1 ? c.k - 1 : c.k;
      for (int64_t j = 0; j < filled; ++j) {
        ids[r * c.k + j] = all[j];
        weights[r * c.k + j] = std::uniform_real_distribution<float>(0.05f, 2.0f)(rng);
        used[all[j]] = true;
      }
      if (filled < c.k) {
        std::swap(ids[r * c.k + r % c.k], ids[r * c.k + c.k - 1]);
        std::swap(weights[r * c.k + r % c.k], weights[r * c.k + c.k - 1]);
      }
    }
    // Only the experts some row reaches get weights (V2's 160 would not fit).
    std::vector<HostMatrix> storage;
    std::vector<MlpWeights> experts(c.experts);
    for (int64_t e = 0; e < c.experts; ++e) {
      if (!used[e]) continue;
      storage.push_back(RandomMatrix(DType::kBF16, c.width, c.hidden, ++seed, 0.03f));
      experts[e].gate = storage.back().view;
      storage.push_back(RandomMatrix(DType::kBF16, c.width, c.hidden, ++seed, 0.03f));
      experts[e].up = storage.back().view;
      storage.push_back(RandomMatrix(DType::kBF16, c.hidden, c.width, ++seed, 0.03f));
      experts[e].down = storage.back().view;
    }
    const int64_t tokens = c.rows / 2 + 1;
    const std::vector<float> x = RandomVector(tokens * c.hidden, ++seed, 1.0f);
    std::vector<int32_t> source(c.rows);
    for (int64_t r = 0; r < c.rows; ++r) source[r] = static_cast<int32_t>((r * 7) % tokens);

    std::vector<float> want(c.rows * c.hidden);
    cpu().ExpertRows(experts, c.hidden, x.data(), source, c.k, ids.data(), weights.data(),
                     want.data());
    Buffer dx = ToDevice(x), dp = gpu_->Allocate(c.rows * c.hidden);
    gpu_->ExpertRows(experts, c.hidden, dx.data(), source, c.k, ids.data(), weights.data(),
                     dp.data());
    ExpectRowsClose(want, ToHost(dp.data(), c.rows * c.hidden), c.hidden, 2e-4, c.name);
  }
}

// ---- Prepare ------------------------------------------------------------------

TEST_F(CudaBackendTest, PrepareMakesWeightsResidentAndResultsUnchanged) {
  HostMatrix embed = RandomMatrix(DType::kBF16, 50, 64, 600, 1.0f);
  HostMatrix head = RandomMatrix(DType::kI8, 50, 64, 601, 0.1f);
  ModelWeights model;
  model.embed = embed.view;
  model.lm_head = head.view;
  model.final_norm = RandomVector(64, 602, 1.0f);
  const std::vector<float> x = RandomVector(2 * 64, 603, 1.0f);
  Buffer dx = ToDevice(x), dy = gpu_->Allocate(2 * 50);
  gpu_->Linear(dx.data(), 2, head.view, dy.data());  // Uploaded on first use.
  const std::vector<float> before = ToHost(dy.data(), 2 * 50);
  ASSERT_TRUE(gpu_->Prepare(model, /*routed_experts=*/true).ok());
  EXPECT_EQ(gpu_->resident_bytes(), 50 * 64 * 2 * 2 + 64 * 4);
  gpu_->Linear(dx.data(), 2, head.view, dy.data());
  EXPECT_EQ(ToHost(dy.data(), 2 * 50), before);

  // Routed experts only when asked for; Release drops everything of the model.
  HostMatrix gate = RandomMatrix(DType::kBF16, 32, 64, 604, 1.0f);
  HostMatrix up = RandomMatrix(DType::kBF16, 32, 64, 605, 1.0f);
  HostMatrix down = RandomMatrix(DType::kBF16, 64, 32, 606, 1.0f);
  model.layers.emplace_back();
  model.layers.back().experts.push_back(MlpWeights{gate.view, up.view, down.view});
  const int64_t experts_bytes = 3 * 32 * 64 * 2;
  ASSERT_TRUE(gpu_->Prepare(model, /*routed_experts=*/false).ok());
  EXPECT_EQ(gpu_->resident_bytes(), 50 * 64 * 2 * 2 + 64 * 4);
  ASSERT_TRUE(gpu_->Prepare(model, /*routed_experts=*/true).ok());
  EXPECT_EQ(gpu_->resident_bytes(), 50 * 64 * 2 * 2 + 64 * 4 + experts_bytes);
  gpu_->Release(model);
  EXPECT_EQ(gpu_->resident_bytes(), 0);
  gpu_->Linear(dx.data(), 2, head.view, dy.data());  // Uploaded again on first use.
  EXPECT_EQ(ToHost(dy.data(), 2 * 50), before);
}

// ---- Token selection ----------------------------------------------------------

TEST_F(CudaBackendTest, ArgMaxTakesTheLowestIndexAmongEquals) {
  for (int64_t vocab : {int64_t{1}, int64_t{1000}, int64_t{102400}}) {
    const int64_t rows = 4;
    std::vector<float> logits = RandomVector(rows * vocab, 700, 3.0f);
    if (vocab > 10) {
      logits[1 * vocab + 9] = logits[1 * vocab + 3] = 100.0f;  // A tie.
    }
    std::vector<int32_t> got(rows);
    Buffer dl = ToDevice(logits);
    gpu_->ArgMax(dl.data(), rows, vocab, got.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = &logits[r * vocab];
      EXPECT_EQ(got[r], std::max_element(row, row + vocab) - row) << "row " << r;
    }
  }
}

// The device's choice given the draw is the host Sampler's (common/sampling)
// with the same seed: the draw handed to the kernel is the one the sampler's
// generator makes (uniform_real_distribution<double> over its mt19937_64),
// rounded to float — a different choice only where the draw falls within
// 1e-7 of a boundary between two tokens' mass.
TEST_F(CudaBackendTest, SampleMatchesTheHostSamplerGivenItsDraw) {
  uint64_t seed = 800;
  for (int64_t vocab : {int64_t{17}, int64_t{1000}, int64_t{102400}}) {
    std::vector<cuda::SampleRowParams> params;
    std::vector<SamplingParams> host;
    for (float temperature : {0.0f, 0.7f, 1.0f}) {
      for (int64_t top_k : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{50}}) {
        for (float top_p : {1.0f, 0.9f, 0.3f}) {
          SamplingParams h;
          h.temperature = temperature;
          h.top_k = top_k;
          h.top_p = top_p;
          h.min_p = top_k == 50 ? 0.05f : 0.0f;
          h.seed = ++seed;
          std::mt19937_64 generator(h.seed);
          cuda::SampleRowParams p;
          p.temperature = h.temperature;
          p.top_k = h.top_k;
          p.top_p = h.top_p;
          p.min_p = h.min_p;
          p.uniform = static_cast<float>(
              std::generate_canonical<double, std::numeric_limits<double>::digits>(generator));
          params.push_back(p);
          host.push_back(h);
        }
      }
    }
    const int64_t rows = static_cast<int64_t>(params.size());
    std::vector<float> logits = RandomVector(rows * vocab, 801, 2.0f);
    // Ties inside the candidates of a few rows.
    for (int64_t r = 0; r < rows; r += 5) logits[r * vocab + vocab / 2] = logits[r * vocab];
    std::vector<int32_t> got(rows);
    Buffer dl = ToDevice(logits);
    gpu_->Sample(dl.data(), rows, vocab, params, got.data());
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_EQ(got[r], Sampler(host[r]).Sample(&logits[r * vocab], vocab))
          << "vocab " << vocab << " row " << r << " T " << params[r].temperature << " top_k "
          << params[r].top_k << " top_p " << params[r].top_p << " u " << params[r].uniform;
    }
  }
}

}  // namespace
}  // namespace dsv2
