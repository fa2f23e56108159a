// Token selection on the device (kernels.h): greedy arg-max and the
// Sampler's top-k / top-p / min-p draw with a caller-given uniform number.
//
// The sampled path never sorts: every cut of the host's sorted candidate list
// ("the first k", "the smallest prefix reaching top_p", "the first whose
// running mass exceeds the draw") is found by bisection, first over the
// logit value (in an order-preserving integer encoding of floats), then over
// the token id among equal logits, each step one block-wide reduction over
// the vocabulary. Simple and exact in its choices; about 50 passes over the
// row per cut, which is fine for a batch of rows but not tuned.
#include "kernels/cuda/device_util.cuh"

namespace dsv2::cuda {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ uint32_t OrderKey(float value) {
  const uint32_t bits = __float_as_uint(value);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ double BlockSumDouble(double v, double* scratch) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) total += scratch[w];
  return total;
}

// A prefix of the candidates in sorted order (descending logit, then
// ascending id): the elements at or before (key, id).
struct Cut {
  uint32_t key = 0;
  int64_t id = INT64_MAX;  // With key 0 and this id: everything.
  __device__ bool Contains(uint32_t k, int64_t i) const { return k > key || (k == key && i <= id); }
};

// The first element e in sorted order (among those with weight(i) > 0)
// whose running weight through e reaches `target` (> target when strict,
// else ≥). Every thread gets it. When nothing reaches, the last element with
// weight.
template <typename Weight>
__device__ Cut FindCut(const float* logits, int64_t vocab, Weight weight, double target,
                       bool strict, double* scratch) {
  auto reaches = [&](double mass) { return strict ? mass > target : mass >= target; };
  // Mass of the elements with key ≥ k (or > k).
  auto mass_from = [&](uint32_t k, bool above) {
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const uint32_t key = OrderKey(logits[i]);
      if (above ? key > k : key >= k) sum += weight(i);
    }
    return BlockSumDouble(sum, scratch);
  };
  Cut cut;
  if (!reaches(mass_from(0, false))) {
    // The last weighted element: the smallest key, then the largest id.
    cut.key = 0;
    // Lowest key with weight: bisection on "mass above k equals the total".
    const double total = mass_from(0, false);
    uint64_t lo = 0, hi = 0x100000000ull;  // mass_from(hi) < total ≤ mass_from(lo)
    while (hi - lo > 1) {
      const uint64_t mid = (lo + hi) / 2;
      if (mass_from(static_cast<uint32_t>(mid), false) == total) lo = mid; else hi = mid;
    }
    cut.key = static_cast<uint32_t>(lo);
    int64_t last = -1;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      if (OrderKey(logits[i]) == cut.key && weight(i) > 0.0 && i > last) last = i;
    }
    __shared__ long long last_shared;
    __syncthreads();
    if (threadIdx.x == 0) last_shared = -1;
    __syncthreads();
    atomicMax(&last_shared, static_cast<long long>(last));
    __syncthreads();
    cut.id = last_shared;
    return cut;
  }
  // The largest key whose ≥-set reaches the target.
  uint64_t lo = 0, hi = 0x100000000ull;
  while (hi - lo > 1) {
    const uint64_t mid = (lo + hi) / 2;
    if (reaches(mass_from(static_cast<uint32_t>(mid), false))) lo = mid; else hi = mid;
  }
  cut.key = static_cast<uint32_t>(lo);
  const double above = mass_from(cut.key, true);
  // Among equal logits, the smallest id whose running mass reaches it.
  auto mass_through = [&](int64_t id) {
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i <= id && i < vocab; i += blockDim.x) {
      if (OrderKey(logits[i]) == cut.key) sum += weight(i);
    }
    return above + BlockSumDouble(sum, scratch);
  };
  int64_t id_lo = -1, id_hi = vocab - 1;  // !reaches(id_lo), reaches(id_hi)
  while (id_hi - id_lo > 1) {
    const int64_t mid = (id_lo + id_hi) / 2;
    if (reaches(mass_through(mid))) id_hi = mid; else id_lo = mid;
  }
  cut.id = id_hi;
  return cut;
}

__device__ int32_t RowArgMax(const float* logits, int64_t vocab) {
  __shared__ float best_v[kWarp];
  __shared__ int64_t best_i[kWarp];
  float v = -INFINITY;
  int64_t id = INT64_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (logits[i] > v || (logits[i] == v && i < id) || id == INT64_MAX) v = logits[i], id = i;
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, offset);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, id, offset);
    if (ov > v || (ov == v && oi < id)) v = ov, id = oi;
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __syncthreads();
  if (lane == 0) best_v[warp] = v, best_i[warp] = id;
  __syncthreads();
  v = best_v[0];
  id = best_i[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / kWarp); ++w) {
    if (best_v[w] > v || (best_v[w] == v && best_i[w] < id)) v = best_v[w], id = best_i[w];
  }
  return static_cast<int32_t>(id);
}

__global__ void ArgMaxKernel(const float* logits, int64_t vocab, int32_t* out) {
  const int32_t id = RowArgMax(logits + static_cast<int64_t>(blockIdx.x) * vocab, vocab);
  if (threadIdx.x == 0) out[blockIdx.x] = id;
}

__global__ void SampleKernel(const float* all_logits, int64_t vocab, const SampleRowParams* params,
                             int32_t* out) {
  __shared__ double scratch[kWarp];
  const float* logits = all_logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const SampleRowParams p = params[blockIdx.x];
  const int32_t best = RowArgMax(logits, vocab);
  if (p.temperature == 0.0f) {
    if (threadIdx.x == 0) out[blockIdx.x] = best;
    return;
  }
  const double max = logits[best];
  const double temperature = p.temperature;
  // Candidates: the first top_k in sorted order.
  Cut candidates;  // Everything.
  if (p.top_k > 0 && p.top_k < vocab) {
    candidates = FindCut(logits, vocab, [](int64_t) { return 1.0; },
                         static_cast<double>(p.top_k), false, scratch);
  }
  auto prob = [&](int64_t i) {
    return candidates.Contains(OrderKey(logits[i]), i) ? exp((logits[i] - max) / temperature) : 0.0;
  };
  // The smallest prefix whose share of the candidates' mass reaches top_p.
  Cut kept = candidates;
  if (p.top_p < 1.0f) {
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) sum += prob(i);
    sum = BlockSumDouble(sum, scratch);
    kept = FindCut(logits, vocab, prob, static_cast<double>(p.top_p) * sum, false, scratch);
  }
  // min_p: the best candidate has probability exp(0) = 1, so the floor is
  // min_p itself; the best token always stays.
  const double floor = p.min_p;
  auto kept_prob = [&](int64_t i) {
    if (!kept.Contains(OrderKey(logits[i]), i)) return 0.0;
    const double q = prob(i);
    return (q >= floor || i == best) ? q : 0.0;
  };
  double kept_mass = 0.0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) kept_mass += kept_prob(i);
  kept_mass = BlockSumDouble(kept_mass, scratch);
  const Cut draw = FindCut(logits, vocab, kept_prob, static_cast<double>(p.uniform) * kept_mass,
                           /*strict=*/true, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int32_t>(draw.id);
}

}  // namespace

cudaError_t LaunchArgMax(const float* logits, int64_t rows, int64_t vocab, int32_t* out,
                         cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  ArgMaxKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, out);
  return cudaGetLastError();
}

cudaError_t LaunchSample(const float* logits, int64_t rows, int64_t vocab,
                         const SampleRowParams* params, int32_t* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  SampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, params, out);
  return cudaGetLastError();
}

}  // namespace dsv2::cuda
