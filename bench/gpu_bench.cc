// The CUDA backend's two heavy ops at DeepSeek-V2's shapes, next to the
// GPU's rooflines measured in the same run (gpu_roofline.h):
//
//  - rooflines: device memory bandwidth (a 1 GiB device-to-device copy,
//    read + write bytes / time, best of --reps) and the bf16 tensor-core peak
//    (cublasGemmEx bf16 × bf16 → f32, compute 32F, 8192³, best of --reps);
//  - MLA absorbed decode (CudaBackend::MlaAttention, absorbed): one layer's
//    decode step of B sequences of context T (one call with a chunk per
//    sequence, as the model issues it; the CUDA backend still launches the
//    kernels per sequence), each over its own LatentKvCache in device memory.
//    Bytes per step: the latent cache read, (T + 1) · 576 · 4 per sequence,
//    plus the query read and the output written; as a share of the measured
//    bandwidth (floor 80 %, FlashMLA ~90 %). The same step is also timed on
//    the attention kernels alone (cuda::LaunchMlaDecode with cudaEvents, no
//    host work), and with the bytes of W_UK / W_UV (kv_b, bf16) that every
//    call reads as well (from L2 when they stay there);
//  - grouped expert FFN (CudaBackend::ExpertRows): E routed experts (bf16,
//    hidden 5120, intermediate 1536) with m tokens each: 3 GEMMs of
//    2 · m · 5120 · 1536 flops per expert / time, as a share of the bf16
//    peak, and against the roofline min(peak, bandwidth · flops / weight
//    bytes): at these m the experts are bound by reading their weights.
//
// Ops are timed by wall clock between two Downloads (which wait for the
// backend's stream), after a warm-up, medians of --samples samples.
// Without a CUDA device it prints "no CUDA device: <why>" and exits 0.
//
//   gpu_bench [--json-out FILE] [--reps 10] [--samples 7] [--experts 16]
//             [--mla 1x4096,32x4096,64x8192,128x2048] [--expert-tokens 16,32,64,128,256]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "bench/gpu_roofline.h"
#include "bench/stats.h"
#include "common/model/config.h"
#include "common/model/latent_kv_cache.h"
#include "common/model/presets.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"
#include "nlohmann/json.hpp"

namespace dsv2::bench {
namespace {

// Issue floor and reference for the MLA decode share of the bandwidth.
constexpr double kMlaFloorPct = 80.0;
constexpr double kFlashMlaPct = 90.0;

std::vector<float> RandomFloats(int64_t count, std::mt19937& rng, float scale) {
  std::uniform_real_distribution<float> uniform(-scale, scale);
  std::vector<float> out(count);
  for (float& v : out) v = uniform(rng);
  return out;
}

// "BxT,BxT" → (B, T) pairs.
std::vector<std::pair<int64_t, int64_t>> ParseShapes(const std::string& text) {
  std::vector<std::pair<int64_t, int64_t>> out;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find(',', begin);
    if (end == std::string::npos) end = text.size();
    const std::string part = text.substr(begin, end - begin);
    char* x = nullptr;
    char* stop = nullptr;
    const long batch = std::strtol(part.c_str(), &x, 10);
    const long context = *x == 'x' ? std::strtol(x + 1, &stop, 10) : 0;
    if (x == part.c_str() || *x != 'x' || stop == x + 1 || *stop != '\0' || batch < 1 ||
        batch > 4096 || context < 1 || context > (1 << 20)) {
      return {};
    }
    out.emplace_back(batch, context);
    begin = end + 1;
  }
  return out;
}

struct MlaResult {
  int64_t batch = 0, context = 0;
  double step_us = 0, kernel_step_us = 0;
  double cache_qo_bytes = 0, kv_b_bytes = 0;
  double gb_per_s = 0, pct_bandwidth = 0;                // Through MlaAttention.
  double kernel_gb_per_s = 0, kernel_pct_bandwidth = 0;  // Kernels alone.
  double with_kv_b_gb_per_s = 0, with_kv_b_pct_bandwidth = 0;
};

// One decode step of `batch` sequences at `context` cached positions, one
// layer, through the backend and through the kernels alone.
MlaResult MeasureMla(CudaBackend& backend, const ModelConfig& config, const MlaShape& shape,
                     const WeightMatrix& kv_b, std::span<const float> kv_a_norm, int64_t batch,
                     int64_t context, double bandwidth, int samples, std::mt19937& rng) {
  const int64_t heads = shape.heads, qk = shape.qk(), latent = shape.latent();
  // Caches filled with random latents up to `context`; each step writes
  // position `context` and attends over context + 1 positions (the cache's
  // size is left at `context`, as the model sets it only after all layers).
  const std::vector<float> host_latents = RandomFloats(context * latent, rng, 1.0f);
  std::vector<std::unique_ptr<LatentKvCache>> caches;
  for (int64_t s = 0; s < batch; ++s) {
    caches.push_back(std::make_unique<LatentKvCache>(config, context + 1, backend));
    backend.Upload(host_latents.data(), caches.back()->At(0, 0), context * latent);
    caches.back()->set_size(context);
  }
  // Per sequence: q [H, qk], kv_a [latent], cos / sin [rope / 2], o [H, v].
  const int64_t half = shape.rope / 2;
  Buffer q = backend.Allocate(batch * heads * qk), kv_a = backend.Allocate(batch * latent),
         cos = backend.Allocate(batch * half), sin = backend.Allocate(batch * half),
         o = backend.Allocate(batch * heads * shape.v);
  backend.Upload(RandomFloats(q.size(), rng, 1.0f).data(), q.data(), q.size());
  backend.Upload(RandomFloats(kv_a.size(), rng, 1.0f).data(), kv_a.data(), kv_a.size());
  std::vector<float> host_cos(batch * half), host_sin(batch * half);
  for (int64_t i = 0; i < batch * half; ++i) {
    host_cos[i] = std::cos(0.001f * i);
    host_sin[i] = std::sin(0.001f * i);
  }
  backend.Upload(host_cos.data(), cos.data(), cos.size());
  backend.Upload(host_sin.data(), sin.data(), sin.size());

  std::vector<MlaChunk> chunks;
  for (int64_t s = 0; s < batch; ++s) chunks.push_back({caches[s].get(), s, 1, /*absorbed=*/true});
  auto step = [&] {
    backend.MlaAttention(shape, 0, kv_b, kv_a_norm, chunks, q.data(), kv_a.data(), cos.data(),
                         sin.data(), o.data());
  };
  float sink = 0;
  // About 20 ms of work per sample at the roofline, at least 2 steps.
  const double cache_bytes = static_cast<double>(batch) * (context + 1) * latent * 4;
  const double qo_bytes = static_cast<double>(batch) * heads * (qk + shape.v) * 4;
  const int inner = static_cast<int>(
      std::clamp((0.02 * bandwidth * 1e9) / (cache_bytes + qo_bytes), 2.0, 200.0));
  for (int i = 0; i < 3; ++i) step();  // Uploads kv_b, grows the scratch.
  backend.Download(o.data(), &sink, 1);
  std::vector<double> times;
  for (int r = 0; r < samples; ++r) {
    const double start = NowSeconds();
    for (int i = 0; i < inner; ++i) step();
    backend.Download(o.data(), &sink, 1);
    times.push_back((NowSeconds() - start) / inner);
  }

  // The kernels alone on the same caches: query absorption, split
  // attention, combine and output, as MlaAttention launches them, on a
  // stream of our own timed with events.
  int device = 0, sm_count = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&device));
  DSV2_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  int64_t split_size = 0;
  const int64_t splits = cuda::MlaDecodeSplits(1, heads, context + 1, sm_count, &split_size);
  std::vector<const float*> host_table(batch * (context + 1));
  for (int64_t s = 0; s < batch; ++s) {
    for (int64_t pos = 0; pos <= context; ++pos) {
      host_table[s * (context + 1) + pos] = caches[s]->At(0, pos);
    }
  }
  void *table = nullptr, *kv_b_device = nullptr, *scratch = nullptr;
  const int64_t kv_b_bytes = kv_b.rows * kv_b.cols * 2;
  const int64_t scratch_floats =
      heads * latent + heads * splits * shape.rank + heads * splits * 2 + heads * shape.rank;
  DSV2_CUDA_CHECK(cudaMalloc(&table, host_table.size() * sizeof(float*)));
  DSV2_CUDA_CHECK(cudaMalloc(&kv_b_device, kv_b_bytes));
  DSV2_CUDA_CHECK(cudaMalloc(&scratch, scratch_floats * sizeof(float)));
  DSV2_CUDA_CHECK(cudaMemcpy(table, host_table.data(), host_table.size() * sizeof(float*),
                                  cudaMemcpyHostToDevice));
  DSV2_CUDA_CHECK(cudaMemcpy(kv_b_device, kv_b.data, kv_b_bytes, cudaMemcpyHostToDevice));
  absl::StatusOr<std::unique_ptr<StreamTimer>> timer = StreamTimer::Create();
  if (!timer.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", std::string(timer.status().message()).c_str());
    std::exit(1);
  }
  cudaStream_t stream = (*timer)->stream();
  cuda::MlaDecodeParams p;
  p.n = 1, p.heads = heads, p.nope = shape.nope, p.rope = shape.rope, p.v = shape.v;
  p.rank = shape.rank;
  p.start = context;
  p.softmax_scale = shape.softmax_scale;
  p.kv_b = kv_b_device;
  p.kv_b_type = cuda::WeightType::kBF16;
  p.splits = splits;
  p.split_size = split_size;
  p.query = static_cast<float*>(scratch);
  p.partial_acc = p.query + heads * latent;
  p.partial_ml = p.partial_acc + heads * splits * shape.rank;
  p.o_latent = p.partial_ml + heads * splits * 2;
  auto kernel_step = [&] {
    for (int64_t s = 0; s < batch; ++s) {
      p.q = q.data() + s * heads * qk;
      p.latents = static_cast<const float* const*>(table) + s * (context + 1);
      p.o = o.data() + s * heads * shape.v;
      DSV2_CUDA_CHECK(cuda::LaunchMlaDecode(p, stream));
    }
  };
  kernel_step();
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> kernel_times;
  for (int r = 0; r < samples; ++r) {
    kernel_times.push_back((*timer)->Seconds([&] {
      for (int i = 0; i < inner; ++i) kernel_step();
    }) / inner);
  }
  timer->reset();  // Waits for the stream.
  cudaFree(table);
  cudaFree(kv_b_device);
  cudaFree(scratch);

  MlaResult r;
  r.batch = batch;
  r.context = context;
  const double t = Median(times), kt = Median(kernel_times);
  r.step_us = t * 1e6;
  r.kernel_step_us = kt * 1e6;
  r.cache_qo_bytes = cache_bytes + qo_bytes;
  r.kv_b_bytes = static_cast<double>(batch) * kv_b_bytes;
  r.gb_per_s = r.cache_qo_bytes / t / 1e9;
  r.pct_bandwidth = 100.0 * r.gb_per_s / bandwidth;
  r.kernel_gb_per_s = r.cache_qo_bytes / kt / 1e9;
  r.kernel_pct_bandwidth = 100.0 * r.kernel_gb_per_s / bandwidth;
  r.with_kv_b_gb_per_s = (r.cache_qo_bytes + r.kv_b_bytes) / t / 1e9;
  r.with_kv_b_pct_bandwidth = 100.0 * r.with_kv_b_gb_per_s / bandwidth;
  return r;
}

struct ExpertResult {
  int64_t experts = 0, tokens_per_expert = 0;
  double us = 0, tflop_per_s = 0, pct_peak = 0, weight_gb_per_s = 0, roofline_tflop_per_s = 0,
         pct_roofline = 0;
  bool split_activations = false;
};

int Main(int argc, char** argv) {
  Flags flags(argc, argv);
  const int reps = static_cast<int>(flags.GetInt("reps", 10, 1, 100000));
  const int samples = static_cast<int>(flags.GetInt("samples", 7, 1, 1000));
  const int64_t num_experts = flags.GetInt("experts", 16, 1, 160);
  const auto mla_shapes = ParseShapes(flags.Get("mla", "1x4096,32x4096,64x8192,128x2048"));
  const std::vector<long> expert_tokens =
      flags.GetList("expert-tokens", "16,32,64,128,256", 1, 1 << 16);
  if (mla_shapes.empty()) {
    flags.Reject("mla", "a comma-separated list of BATCHxCONTEXT, each >= 1");
  }
  if (const std::optional<int> stop = flags.StopForUsage(
          "gpu_bench", {"json-out", "reps", "samples", "experts", "mla", "expert-tokens"},
          "usage: gpu_bench [--json-out FILE] [--reps 10] [--samples 7] [--experts 16]\n"
          "                 [--mla 1x4096,32x4096,64x8192,128x2048]\n"
          "                 [--expert-tokens 16,32,64,128,256]\n")) {
    return *stop;
  }
  const std::string json_out = flags.Get("json-out", "");

  auto write_json = [&](const nlohmann::json& json) {
    if (json_out.empty()) return true;
    std::ofstream out(json_out);
    out << json.dump(2) << "\n";
    if (!out) std::fprintf(stderr, "gpu_bench: cannot write %s\n", json_out.c_str());
    return static_cast<bool>(out);
  };

  absl::StatusOr<std::unique_ptr<CudaBackend>> created = CudaBackend::Create();
  if (!created.ok()) {
    const std::string why(created.status().message());
    std::printf("no CUDA device: %s\n", why.c_str());
    return write_json({{"device", nullptr}, {"no_device", why}}) ? 0 : 1;
  }
  CudaBackend& backend = **created;
  const std::string device = GpuDescription().value_or("unknown device");

  // ---- Rooflines ----
  auto copy = DeviceCopyProbe::Create(int64_t{1} << 30);
  if (!copy.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", std::string(copy.status().message()).c_str());
    return 1;
  }
  const double bandwidth = (*copy)->Best(reps);
  copy->reset();
  double bf16_peak = 0;
  {
    auto gemm = Bf16GemmProbe::Create(8192);
    if (!gemm.ok()) {
      std::fprintf(stderr, "gpu_bench: %s\n", std::string(gemm.status().message()).c_str());
      return 1;
    }
    bf16_peak = (*gemm)->Best(reps);
  }
  std::printf("device: %s\n", device.c_str());
  std::printf("roofline: device memory %.1f GB/s (1 GiB device-to-device copy, read + write, best "
              "of %d); bf16 GEMM %.1f TFLOP/s (cublasGemmEx 8192^3, f32 compute, best of %d)\n\n",
              bandwidth, reps, bf16_peak, reps);
  std::fflush(stdout);

  auto parsed = ParseModelConfig(PresetConfigJson("v2").value());
  if (!parsed.ok()) {
    std::fprintf(stderr, "gpu_bench: v2 preset: %s\n",
                 std::string(parsed.status().message()).c_str());
    return 1;
  }
  ModelConfig config = *parsed;
  config.num_hidden_layers = 1;  // The caches hold the one layer measured.
  std::mt19937 rng(7);

  // ---- MLA absorbed decode ----
  MlaShape shape;
  shape.heads = config.num_attention_heads;
  shape.nope = config.qk_nope_head_dim;
  shape.rope = config.qk_rope_head_dim;
  shape.v = config.v_head_dim;
  shape.rank = config.kv_lora_rank;
  shape.softmax_scale = static_cast<float>(config.SoftmaxScale());
  shape.latent_norm_eps = 1e-6f;  // kv_a_layernorm's, as the model uses (deepseek_v2.cc).
  // kv_b [H · (nope + v), rank], bf16 as in the checkpoint.
  const std::vector<uint16_t> kv_b_host =
      RandomBf16(shape.heads * (shape.nope + shape.v) * shape.rank, rng, 0.05f);
  const WeightMatrix kv_b{DType::kBF16, shape.heads * (shape.nope + shape.v), shape.rank,
                          kv_b_host.data(), nullptr};
  const std::vector<float> kv_a_norm(shape.rank, 1.0f);
  std::printf("MLA absorbed decode, one layer (H %lld, nope %lld, rope %lld, v %lld, rank %lld): "
              "a step = one MlaAttention of B one-token chunks;\nGB/s = (latent cache (T+1)·576·4 + q/o) "
              "bytes per step / time, %% of the %.0f GB/s above (floor %.0f%%, FlashMLA ~%.0f%%)\n",
              (long long)shape.heads, (long long)shape.nope, (long long)shape.rope,
              (long long)shape.v, (long long)shape.rank, bandwidth, kMlaFloorPct, kFlashMlaPct);
  std::printf("%12s %10s %12s %10s %7s | %12s %10s %7s | %14s %7s\n", "batch x ctx", "MB/step",
              "step us", "GB/s", "%bw", "kernels us", "GB/s", "%bw", "+kv_b GB/s", "%bw");
  std::vector<MlaResult> mla;
  for (const auto& [batch, context] : mla_shapes) {
    if (batch <= 0 || context <= 0) continue;
    const MlaResult r = MeasureMla(backend, config, shape, kv_b, kv_a_norm, batch, context,
                                   bandwidth, samples, rng);
    mla.push_back(r);
    std::printf("%5lld x %-5lld %10.1f %12.1f %10.1f %6.1f%% | %12.1f %10.1f %6.1f%% | %14.1f "
                "%6.1f%%\n",
                (long long)batch, (long long)context, r.cache_qo_bytes / 1e6, r.step_us,
                r.gb_per_s, r.pct_bandwidth, r.kernel_step_us, r.kernel_gb_per_s,
                r.kernel_pct_bandwidth, r.with_kv_b_gb_per_s, r.with_kv_b_pct_bandwidth);
    std::fflush(stdout);
  }
  std::printf("(kernels: cuda::LaunchMlaDecode alone, cudaEvent-timed, without the pointer "
              "table upload, RoPE and latent write; +kv_b: also counting W_UK/W_UV, %.1f MB of "
              "bf16 read per call, which may hit L2)\n\n",
              kv_b.rows * kv_b.cols * 2 / 1e6);

  // ---- Grouped expert FFN ----
  const int64_t hidden = config.hidden_size, inter = config.moe_intermediate_size;
  // Distinct host arrays per matrix: the backend keeps one device copy per
  // host address. One random pattern, copied.
  const std::vector<uint16_t> pattern = RandomBf16(hidden * inter, rng, 0.02f);
  std::vector<std::vector<uint16_t>> storage(3 * num_experts, pattern);
  std::vector<MlpWeights> experts(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) {
    experts[e].gate = {DType::kBF16, inter, hidden, storage[3 * e].data(), nullptr};
    experts[e].up = {DType::kBF16, inter, hidden, storage[3 * e + 1].data(), nullptr};
    experts[e].down = {DType::kBF16, hidden, inter, storage[3 * e + 2].data(), nullptr};
  }
  const double weight_bytes = static_cast<double>(num_experts) * 3 * hidden * inter * 2;
  std::printf("grouped expert FFN (ExpertRows), %lld experts (hidden %lld, intermediate %lld, "
              "bf16), m tokens each: TFLOP/s = %lld·3·2·m·%lld·%lld / time;\nroofline = min(bf16 "
              "peak, bandwidth · flops / weight bytes); m <= 64 runs 2m GEMM rows (hi + lo bf16 "
              "activations)\n",
              (long long)num_experts, (long long)hidden, (long long)inter, (long long)num_experts,
              (long long)hidden, (long long)inter);
  std::printf("%6s %10s %10s %8s %12s %14s %7s\n", "m", "us", "TFLOP/s", "%peak", "weight GB/s",
              "roof TFLOP/s", "%roof");
  std::vector<ExpertResult> expert_results;
  for (long m : expert_tokens) {
    if (m <= 0) continue;
    const int64_t rows = num_experts * m;
    Buffer x = backend.Allocate(rows * hidden), partials = backend.Allocate(rows * hidden);
    backend.Upload(RandomFloats(rows * hidden, rng, 1.0f).data(), x.data(), x.size());
    std::vector<int32_t> source(rows), ids(rows);
    for (int64_t r = 0; r < rows; ++r) {
      source[r] = static_cast<int32_t>(r);
      ids[r] = static_cast<int32_t>(r / m);
    }
    const std::vector<float> weights(rows, 1.0f);
    auto run = [&] {
      backend.ExpertRows(experts, hidden, x.data(), source, 1, ids.data(), weights.data(),
                         partials.data());
    };
    float sink = 0;
    for (int i = 0; i < 3; ++i) run();  // The first uploads the experts.
    backend.Download(partials.data(), &sink, 1);
    const double roof_seconds = weight_bytes / (bandwidth * 1e9);
    const int inner = static_cast<int>(std::clamp(0.02 / roof_seconds, 2.0, 100.0));
    std::vector<double> times;
    for (int r = 0; r < samples; ++r) {
      const double start = NowSeconds();
      for (int i = 0; i < inner; ++i) run();
      backend.Download(partials.data(), &sink, 1);
      times.push_back((NowSeconds() - start) / inner);
    }
    const double t = Median(times);
    const double flops = static_cast<double>(num_experts) * 3 * 2 * m * hidden * inter;
    ExpertResult r;
    r.experts = num_experts;
    r.tokens_per_expert = m;
    r.us = t * 1e6;
    r.tflop_per_s = flops / t / 1e12;
    r.pct_peak = 100.0 * r.tflop_per_s / bf16_peak;
    r.weight_gb_per_s = weight_bytes / t / 1e9;
    r.roofline_tflop_per_s = std::min(bf16_peak, bandwidth * 1e9 * flops / weight_bytes / 1e12);
    r.pct_roofline = 100.0 * r.tflop_per_s / r.roofline_tflop_per_s;
    r.split_activations = m <= CudaBackend::Options().split_activation_max_rows;
    expert_results.push_back(r);
    std::printf("%6ld %10.1f %10.1f %7.1f%% %12.1f %14.1f %6.1f%%\n", m, r.us, r.tflop_per_s,
                r.pct_peak, r.weight_gb_per_s, r.roofline_tflop_per_s, r.pct_roofline);
    std::fflush(stdout);
  }

  nlohmann::json json = {{"device", device},
                         {"bandwidth_gb_per_s", bandwidth},
                         {"bandwidth_method", "device-to-device cudaMemcpy of 1 GiB, read + write"},
                         {"bf16_gemm_tflop_per_s", bf16_peak},
                         {"bf16_gemm_method", "cublasGemmEx bf16 x bf16 -> f32, compute 32F, 8192^3"},
                         {"mla_floor_pct", kMlaFloorPct},
                         {"mla", nlohmann::json::array()},
                         {"experts", nlohmann::json::array()}};
  for (const MlaResult& r : mla) {
    json["mla"].push_back({{"batch", r.batch},
                           {"context", r.context},
                           {"bytes_per_step", r.cache_qo_bytes},
                           {"kv_b_bytes_per_step", r.kv_b_bytes},
                           {"step_us", r.step_us},
                           {"gb_per_s", r.gb_per_s},
                           {"pct_bandwidth", r.pct_bandwidth},
                           {"kernels_step_us", r.kernel_step_us},
                           {"kernels_gb_per_s", r.kernel_gb_per_s},
                           {"kernels_pct_bandwidth", r.kernel_pct_bandwidth},
                           {"with_kv_b_gb_per_s", r.with_kv_b_gb_per_s},
                           {"with_kv_b_pct_bandwidth", r.with_kv_b_pct_bandwidth}});
  }
  for (const ExpertResult& r : expert_results) {
    json["experts"].push_back({{"experts", r.experts},
                               {"tokens_per_expert", r.tokens_per_expert},
                               {"us", r.us},
                               {"tflop_per_s", r.tflop_per_s},
                               {"pct_bf16_peak", r.pct_peak},
                               {"weight_gb_per_s", r.weight_gb_per_s},
                               {"roofline_tflop_per_s", r.roofline_tflop_per_s},
                               {"pct_roofline", r.pct_roofline},
                               {"split_activations", r.split_activations}});
  }
  return write_json(json) ? 0 : 1;
}

}  // namespace
}  // namespace dsv2::bench

int main(int argc, char** argv) { return dsv2::bench::Main(argc, argv); }
