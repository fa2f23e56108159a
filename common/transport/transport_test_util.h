// Test helpers shared by the transport tests and the benchmark: a toy
// "expert" handler whose answer is a known function of the dispatch, and
// builders of dispatches with deterministic contents.
#pragma once

#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "common/transport/transport.h"

namespace dsv2::transport::testing {

// A dispatch whose activation (t, h) is (seed + t * 31 + h) % 97 / 8 (exact
// in bf16), expert ids (seed + t + k) % 16 with every third slot empty, and
// weights 1 / (k + 1).
inline absl::StatusOr<Message> TestDispatch(Transport& transport, uint32_t tokens, uint32_t hidden,
                                            uint32_t top_k, uint32_t seed, uint32_t layer = 0) {
  absl::StatusOr<DispatchLayout> layout =
      ComputeDispatchLayout(tokens, hidden, top_k, DType::kBF16);
  if (!layout.ok()) return layout.status();
  Message message;
  message.header.type = FrameType::kDispatch;
  message.header.dtype = DType::kBF16;
  message.header.step_id = seed;
  message.header.layer = layer;
  message.header.micro_batch = seed % 4;
  message.header.token_count = tokens;
  message.header.hidden_size = hidden;
  message.header.top_k = top_k;
  message.header.payload_length = layout->total_bytes;
  message.payload = transport.AllocatePayload(layout->total_bytes);
  std::memset(message.payload.data(), 0, message.payload.size());
  absl::StatusOr<DispatchSpans> spans = DispatchSpansOf(message.header, message.payload.span());
  if (!spans.ok()) return spans.status();
  auto* x = reinterpret_cast<uint16_t*>(spans->activations.data());
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint32_t h = 0; h < hidden; ++h) {
      x[size_t{t} * hidden + h] = FloatToBF16(static_cast<float>((seed + t * 31 + h) % 97) / 8.0f);
    }
    for (uint32_t k = 0; k < top_k; ++k) {
      const size_t slot = size_t{t} * top_k + k;
      spans->expert_ids[slot] = (t + k) % 3 == 2 ? -1 : static_cast<int32_t>((seed + t + k) % 16);
      spans->weights[slot] = 1.0f / static_cast<float>(k + 1);
    }
  }
  return message;
}

// The toy expert: partial sum (t, h) = sum over non-empty slots of
// weight * (x[t, h] + expert_id), accumulated in float32.
inline std::vector<float> ToyExpert(const FrameHeader& header, const DispatchView& view) {
  std::vector<float> out(size_t{header.token_count} * header.hidden_size, 0.0f);
  const auto* x = reinterpret_cast<const uint16_t*>(view.activations.data());
  for (uint32_t t = 0; t < header.token_count; ++t) {
    for (uint32_t k = 0; k < header.top_k; ++k) {
      const size_t slot = size_t{t} * header.top_k + k;
      if (view.expert_ids[slot] < 0) continue;
      const float w = view.weights[slot];
      const float e = static_cast<float>(view.expert_ids[slot]);
      for (uint32_t h = 0; h < header.hidden_size; ++h) {
        out[size_t{t} * header.hidden_size + h] +=
            w * (BF16ToFloat(x[size_t{t} * header.hidden_size + h]) + e);
      }
    }
  }
  return out;
}

// Answers `request` with the toy expert's partial sums in `dtype`.
inline void ServeToyExpert(IncomingRequest request, DType dtype = DType::kBF16) {
  absl::StatusOr<DispatchView> view = ParseDispatch(request.header(), request.payload());
  if (!view.ok()) {
    request.RespondError(view.status());
    return;
  }
  const std::vector<float> sums = ToyExpert(request.header(), *view);
  absl::StatusOr<uint64_t> bytes =
      CombinePayloadBytes(request.header().token_count, request.header().hidden_size, dtype);
  Message reply;
  reply.header.type = FrameType::kCombine;
  reply.header.dtype = dtype;
  reply.header.step_id = request.header().step_id;
  reply.header.layer = request.header().layer;
  reply.header.micro_batch = request.header().micro_batch;
  reply.header.token_count = request.header().token_count;
  reply.header.hidden_size = request.header().hidden_size;
  reply.header.payload_length = *bytes;
  reply.payload = request.AllocatePayload(*bytes);
  if (dtype == DType::kF32) {
    std::memcpy(reply.payload.data(), sums.data(), *bytes);
  } else {
    auto* out = reinterpret_cast<uint16_t*>(reply.payload.data());
    for (size_t i = 0; i < sums.size(); ++i) out[i] = FloatToBF16(sums[i]);
  }
  request.TakePayload();  // Release the request buffer before answering.
  (void)request.Respond(std::move(reply));
}

// Checks a reply against the toy expert applied to the request it answers;
// returns the number of mismatching elements.
inline size_t CountMismatches(const Message& request, const Message& reply) {
  const DispatchView view = *ParseDispatch(request.header, request.payload.span());
  const std::vector<float> want = ToyExpert(request.header, view);
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float got = reply.header.dtype == DType::kF32
                          ? reinterpret_cast<const float*>(reply.payload.data())[i]
                          : BF16ToFloat(reinterpret_cast<const uint16_t*>(reply.payload.data())[i]);
    const float expected =
        reply.header.dtype == DType::kF32 ? want[i] : BF16ToFloat(FloatToBF16(want[i]));
    if (got != expected) ++bad;
  }
  return bad;
}

// Polls `condition` every 200 us until it holds or `timeout` passes
// (counters have no condition variable to wait on).
inline bool WaitUntil(const std::function<bool()>& condition,
                      absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Microseconds(200));
  }
  return true;
}

}  // namespace dsv2::transport::testing
