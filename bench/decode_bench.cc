// End-to-end decode and prefill throughput of the CPU forward pass on a
// real-dimension checkpoint (`dsv2 make-model --preset lite --layers 4`),
// next to this machine's rooflines measured in the same run:
//  - decode at batch B: one step runs B sequences' next tokens together
//    (the engine's batched step); the roofline is memory bandwidth divided
//    by the bytes a step actually reads (every non-expert weight, the
//    distinct routed experts the batch selected, and the KV cache), in the
//    checkpoint's own storage (bf16, or int8 with its scales). The bandwidth
//    is read right before and right after each batch's steps; the roofline
//    takes their mean and the spread between them is printed, so that a
//    figure is never set against a reading from another moment;
//  - prefill of a 512-token prompt: the floating-point rate of the
//    projection and expert GEMMs over the whole prefill time, against the
//    measured fp32 FMA peak.
//
// With --backend cuda (CUDA builds) the model runs on the GPU and its
// caches live in device memory; the rooflines are the GPU's, measured in
// this run as gpu_bench measures them (gpu_roofline.h): device memory
// bandwidth from a device-to-device copy (read + write bytes / time), read
// before and after each batch like the CPU's, and the bf16 GEMM peak for
// prefill. Step bytes count the weights as the device stores them (bf16 as
// is, int8 dequantized to bf16, f16 widened to f32).
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "bench/roofline.h"
#include "bench/stats.h"
#include "common/model/deepseek_v2.h"
#include "common/model/latent_kv_cache.h"
#include "common/model/weights.h"
#include "kernels/backends.h"
#ifdef DSV2_BENCH_HAVE_CUDA
#include "bench/gpu_roofline.h"
#endif

namespace dsv2::bench {
namespace {

// Counts what the routed experts read and compute, then computes them here.
class CountingExperts : public RoutedExperts {
 public:
  // `expert_bytes`: what one routed expert's three matrices occupy.
  CountingExperts(const DeepseekV2Model& model, int64_t expert_bytes)
      : local_(model.config(), model.weights(), model.backend()),
        weights_(model.weights()),
        expert_bytes_(expert_bytes) {}

  absl::Status Compute(int64_t layer, const float* x, int64_t n, int64_t k, const int32_t* ids,
                       const float* w, float* out, absl::FunctionRef<void()> meanwhile) override {
    const std::set<int32_t> distinct(ids, ids + n * k);
    const MlpWeights& e = weights_.layers[layer].experts[0];
    const int64_t expert_params = e.gate.rows * e.gate.cols * 3;
    bytes_ += static_cast<int64_t>(distinct.size()) * expert_bytes_;
    flops_ += 2 * n * k * expert_params;
    return local_.Compute(layer, x, n, k, ids, w, out, meanwhile);
  }
  void Reset() { bytes_ = flops_ = 0; }
  int64_t bytes() const { return bytes_; }
  int64_t flops() const { return flops_; }

 private:
  LocalRoutedExperts local_;
  const ModelWeights& weights_;
  const int64_t expert_bytes_;
  int64_t bytes_ = 0, flops_ = 0;
};

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, std::mt19937& rng) {
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % vocab);
  return tokens;
}

int Main(int argc, char** argv) {
  Flags flags(argc, argv);
  const int steps = static_cast<int>(flags.GetInt("steps", 8, 1, 1 << 20));
  const int64_t context = flags.GetInt("context", 64, 1, 1 << 20);
  const int64_t prefill_len = flags.GetInt("prefill-len", 512, 1, 1 << 20);
  const int reps = static_cast<int>(flags.GetInt("reps", 3, 1, 1000));
  const std::vector<long> batch_list = flags.GetList("batches", "1,8,32,64", 1, 4096);
  const std::vector<int64_t> batches(batch_list.begin(), batch_list.end());
  if (const std::optional<int> stop = flags.StopForUsage(
          "decode_bench",
          {"model", "batches", "steps", "context", "prefill-len", "reps", "json", "backend"},
          "usage: decode_bench --model DIR [--batches 1,8,32,64] [--steps 8] [--context 64]\n"
          "                    [--prefill-len 512] [--reps 3] [--json] [--backend cpu|cuda]\n",
          /*invalid=*/flags.Get("model", "").empty())) {
    return *stop;
  }
  const bool json = flags.Has("json");

  const std::string backend_name = flags.Get("backend", "cpu");
  const absl::StatusOr<Backend*> backend = BackendByName(backend_name);
  if (!backend.ok()) {
    std::fprintf(stderr, "decode_bench: --backend %s: %s\n", backend_name.c_str(),
                 std::string(backend.status().message()).c_str());
    return 1;
  }
  const bool on_host = (*backend)->host_memory();
  auto loaded = DeepseekV2Model::Load(flags.Get("model", ""), {.backend = *backend});
  if (!loaded.ok()) {
    std::fprintf(stderr, "decode_bench: %s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  DeepseekV2Model& model = **loaded;
  const ModelConfig& config = model.config();
  if (on_host) model.checkpoint().Prefault([](int64_t, int64_t) {});
  // A tensor's bytes as the backend reads them: on the CPU as stored, with
  // its block scales where it has them; on the GPU as CudaBackend stores it
  // (bf16 and int8 as bf16, f16 and f32 as f32).
  auto stored_bytes = [&](const std::string& name) {
    int64_t bytes = 0;
    if (!on_host) {
      if (const TensorInfo* info = model.checkpoint().Find(name)) {
        int64_t numel = 1;
        for (int64_t d : info->shape) numel *= d;
        const bool two_bytes = info->dtype == DType::kBF16 || info->dtype == DType::kI8;
        bytes = numel * (two_bytes ? 2 : 4);
      }
      return bytes;
    }
    for (const std::string& part : {name, name + "_scale"}) {
      if (const TensorInfo* info = model.checkpoint().Find(part)) bytes += info->num_bytes;
    }
    return bytes;
  };
  // Weights every step reads whole: all but the routed experts and the
  // embedding table (one row per token).
  int64_t fixed_bytes = 0, fixed_params_per_token = 0, expert_bytes = 0;
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    if (spec.expert == 0 && expert_bytes == 0) {
      const std::string prefix = spec.name.substr(0, spec.name.rfind("experts.0.") + 10);
      for (const char* m : {"gate_proj", "up_proj", "down_proj"}) {
        expert_bytes += stored_bytes(prefix + m + ".weight");
      }
    }
    if (spec.expert >= 0 || spec.name == "model.embed_tokens.weight") continue;
    fixed_bytes += stored_bytes(spec.name);
    if (spec.shape.size() == 2) fixed_params_per_token += spec.numel();
  }
  auto experts = std::make_shared<CountingExperts>(model, expert_bytes);
  model.SetRoutedExperts(experts);
  const int64_t kv_bytes_per_position = config.num_hidden_layers * config.latent_dim() * 4;

  // The rooflines: this CPU's (roofline.h) or the GPU's (gpu_roofline.h).
  // `bandwidth_pass` reads the bandwidth once, between batches.
  std::unique_ptr<ReadBandwidthProbe> probe;
  Roofline roofline;
  std::function<double()> bandwidth_pass;
  double bandwidth_best = 0, compute_gflop_per_s = 0;
  std::string device;
#ifdef DSV2_BENCH_HAVE_CUDA
  std::unique_ptr<DeviceCopyProbe> copy;
#endif
  if (on_host) {
    probe = std::make_unique<ReadBandwidthProbe>(
        std::max<int64_t>(1024, 3 * LastLevelCacheBytes() >> 20) << 20);
    roofline = MeasureRoofline(*probe, 3);
    bandwidth_best = roofline.bandwidth_gb_per_s_best;
    compute_gflop_per_s = roofline.fma_gflop_per_s_best;
    bandwidth_pass = [&] { return probe->Pass(roofline.best_bandwidth_method); };
  } else {
#ifdef DSV2_BENCH_HAVE_CUDA
    device = GpuDescription().value_or("unknown device");
    auto copy_probe = DeviceCopyProbe::Create(int64_t{1} << 30);
    auto gemm_probe = Bf16GemmProbe::Create(8192);
    for (const absl::Status& status : {copy_probe.status(), gemm_probe.status()}) {
      if (!status.ok()) {
        std::fprintf(stderr, "decode_bench: GPU roofline: %s\n",
                     std::string(status.message()).c_str());
        return 1;
      }
    }
    copy = std::move(*copy_probe);
    bandwidth_best = copy->Best(5);
    compute_gflop_per_s = (*gemm_probe)->Best(5) * 1e3;
    bandwidth_pass = [&] { return copy->Pass(); };
#else
    std::fprintf(stderr, "decode_bench: no roofline for backend %s in this build\n",
                 backend_name.c_str());
    return 1;
#endif
  }
  const double huge_page_gb = model.checkpoint().HugePageBytes() / 1e9;
  if (!json) {
    std::printf("model %s: %lld layers, hidden %lld, %lld experts (%lld per token)\n",
                flags.Get("model", "").c_str(), (long long)config.num_hidden_layers,
                (long long)config.hidden_size, (long long)config.n_routed_experts,
                (long long)config.num_experts_per_tok);
    if (on_host) {
      std::printf("roofline: read %.1f GB/s (%s), FMA %.1f GFLOP/s (%s), %d threads\n",
                  roofline.bandwidth_gb_per_s_best, roofline.best_bandwidth_method.c_str(),
                  roofline.fma_gflop_per_s_best, roofline.best_fma_isa.c_str(), roofline.threads);
      std::printf("weights: %.2f GB, %.2f GB of them on huge pages\n\n",
                  model.checkpoint().total_bytes() / 1e9, huge_page_gb);
    } else {
      std::printf("backend %s on %s\n", backend_name.c_str(), device.c_str());
      std::printf("roofline: device memory %.1f GB/s (1 GiB device-to-device copy, read + write, "
                  "as gpu_bench measures it), bf16 GEMM %.1f TFLOP/s (cublasGemmEx 8192^3)\n\n",
                  bandwidth_best, compute_gflop_per_s / 1e3);
    }
    std::printf("%6s %10s %10s %12s %10s %6s %12s %8s %9s\n", "batch", "step ms", "tokens/s",
                "MB/step", on_host ? "read GB/s" : "copy GB/s", "±", "roofline t/s", "%roof",
                "x batch1");
  }

  std::mt19937 rng(1);
  struct BatchResult {
    int64_t batch;
    double step_ms, tokens_per_s, mb_per_step, read_gb_per_s, read_spread_pct,
        roofline_tokens_per_s;
    double over_batch1;  // Throughput over batch 1's (0 without a batch 1 first).
  };
  std::vector<BatchResult> results;
  for (int64_t batch : batches) {
    std::vector<std::unique_ptr<LatentKvCache>> caches;
    std::vector<int32_t> next(batch);
    std::vector<float> logits;
    for (int64_t s = 0; s < batch; ++s) {
      caches.push_back(std::make_unique<LatentKvCache>(config, context + steps + 2, model.backend()));
      const std::vector<int32_t> prompt = RandomTokens(context, config.vocab_size, rng);
      if (!model.Forward(prompt, *caches.back(), {.attention = AttentionForm::kDecompressed}, &logits).ok()) return 1;
      next[s] = static_cast<int32_t>(rng() % config.vocab_size);
    }
    std::vector<double> times, bytes;
    const double read_before = bandwidth_pass();
    for (int step = 0; step < steps; ++step) {
      std::vector<SequenceChunk> chunks;
      for (int64_t s = 0; s < batch; ++s) {
        chunks.push_back({{&next[s], 1}, caches[s].get(), AttentionForm::kAbsorbed});
      }
      experts->Reset();
      const double start = NowSeconds();
      if (!model.ForwardBatch(chunks, &logits).ok()) return 1;
      times.push_back(NowSeconds() - start);
      bytes.push_back(static_cast<double>(fixed_bytes + experts->bytes() +
                                          batch * (context + step + 1) * kv_bytes_per_position));
      for (int64_t s = 0; s < batch; ++s) next[s] = static_cast<int32_t>(rng() % config.vocab_size);
    }
    const double read_after = bandwidth_pass();
    const double read = (read_before + read_after) / 2;
    const double spread = 100.0 * std::fabs(read_after - read_before) / read;
    const double t = Median(times);
    const double step_bytes = Median(bytes);
    const double roof = batch * read * 1e9 / step_bytes;
    const double over_batch1 = !results.empty() && results[0].batch == 1
                                   ? batch / t / results[0].tokens_per_s
                               : batch == 1 ? 1.0
                                            : 0.0;
    results.push_back(
        {batch, t * 1e3, batch / t, step_bytes / 1e6, read, spread, roof, over_batch1});
    if (!json) {
      std::printf("%6lld %10.1f %10.2f %12.1f %10.1f %5.0f%% %12.2f %7.1f%% %8.2fx\n",
                  (long long)batch, t * 1e3, batch / t, step_bytes / 1e6, read, spread, roof,
                  100.0 * (batch / t) / roof, over_batch1);
      std::fflush(stdout);
    }
  }

  // Prefill: one prompt, decompressed attention, logits of the last token.
  std::vector<double> prefill_times;
  int64_t gemm_flops = 0;
  for (int r = 0; r < reps; ++r) {
    LatentKvCache cache(config, prefill_len, model.backend());
    const std::vector<int32_t> prompt = RandomTokens(prefill_len, config.vocab_size, rng);
    std::vector<float> logits;
    experts->Reset();
    const double start = NowSeconds();
    if (!model.Forward(prompt, cache, {.attention = AttentionForm::kDecompressed}, &logits).ok()) return 1;
    prefill_times.push_back(NowSeconds() - start);
    // Projections, dense and shared FFNs, routers over every token (the LM
    // head over the last one only), plus the routed experts' products.
    const int64_t lm_head = config.vocab_size * config.hidden_size;
    gemm_flops = 2 * (prefill_len * (fixed_params_per_token - lm_head) + lm_head) + experts->flops();
  }
  const double prefill_t = Median(prefill_times);
  const double gflops = gemm_flops / prefill_t / 1e9;
  if (json) {
    if (on_host) {
      std::printf(
          "{\"read_gb_per_s\": %.2f, \"fma_gflop_per_s\": %.1f, \"huge_page_gb\": %.2f, "
          "\"decode\": [",
          roofline.bandwidth_gb_per_s_best, roofline.fma_gflop_per_s_best, huge_page_gb);
    } else {
      std::printf("{\"backend\": \"%s\", \"device\": \"%s\", \"copy_gb_per_s\": %.2f, "
                  "\"bf16_gflop_per_s\": %.1f, \"decode\": [",
                  backend_name.c_str(), device.c_str(), bandwidth_best, compute_gflop_per_s);
    }
    for (size_t i = 0; i < results.size(); ++i) {
      const BatchResult& r = results[i];
      std::printf(
          "%s{\"batch\": %lld, \"step_ms\": %.2f, \"tokens_per_s\": %.3f, "
          "\"mb_per_step\": %.1f, \"read_gb_per_s\": %.2f, \"read_spread_pct\": %.1f, "
          "\"roofline_tokens_per_s\": %.3f, \"throughput_over_batch1\": %.2f}",
          i ? ", " : "", (long long)r.batch, r.step_ms, r.tokens_per_s, r.mb_per_step,
          r.read_gb_per_s, r.read_spread_pct, r.roofline_tokens_per_s, r.over_batch1);
    }
    std::printf(
        "], \"prefill\": {\"tokens\": %lld, \"seconds\": %.3f, "
        "\"tokens_per_s\": %.1f, \"gemm_gflop_per_s\": %.1f, \"%s\": %.1f}}\n",
        (long long)prefill_len, prefill_t, prefill_len / prefill_t, gflops,
        on_host ? "pct_fma_peak" : "pct_bf16_peak", 100.0 * gflops / compute_gflop_per_s);
  } else {
    std::printf(
        "\nprefill %lld tokens: %.2f s, %.1f tokens/s; projection and expert GEMMs %.1f "
        "GFLOP/s = %.1f%% of the %s peak (over the whole prefill time)\n",
        (long long)prefill_len, prefill_t, prefill_len / prefill_t, gflops,
        100.0 * gflops / compute_gflop_per_s, on_host ? "FMA" : "bf16 GEMM");
  }
  return 0;
}

}  // namespace
}  // namespace dsv2::bench

int main(int argc, char** argv) { return dsv2::bench::Main(argc, argv); }
