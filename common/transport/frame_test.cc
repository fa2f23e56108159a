#include "common/transport/frame.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/transport/message.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2::transport {
namespace {

using ::testing::HasSubstr;

FrameHeader DispatchHeader() {
  FrameHeader h;
  h.type = FrameType::kDispatch;
  h.dtype = DType::kBF16;
  h.request_id = 0x0123456789abcdefull;
  h.step_id = 77;
  h.layer = 26;
  h.micro_batch = 3;
  h.token_count = 5;
  h.hidden_size = 24;
  h.top_k = 6;
  h.sender = 9;
  h.payload_length = ComputeDispatchLayout(5, 24, 6, DType::kBF16)->total_bytes;
  return h;
}

// Re-signs a header after a test edits its bytes, so the edit (not the
// checksum) is what the decoder sees.
void Resign(EncodedHeader& bytes) {
  const uint32_t crc = Crc32c(absl::MakeConstSpan(bytes.data(), 60));
  std::memcpy(bytes.data() + 60, &crc, 4);
}

template <typename T>
EncodedHeader WithField(const FrameHeader& header, size_t offset, T value) {
  EncodedHeader bytes = EncodeHeader(header);
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
  Resign(bytes);
  return bytes;
}

absl::Status DecodeStatus(const EncodedHeader& bytes) { return DecodeHeader(bytes).status(); }

TEST(FrameTest, Crc32cMatchesTheStandardCheckValue) {
  const char* check = "123456789";
  EXPECT_EQ(Crc32c(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(check), 9)), 0xE3069283u);
}

TEST(FrameTest, HeaderRoundTripsEveryType) {
  FrameHeader dispatch = DispatchHeader();
  absl::StatusOr<FrameHeader> decoded = DecodeHeader(EncodeHeader(dispatch));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, dispatch);

  FrameHeader combine = dispatch;
  combine.type = FrameType::kCombine;
  combine.dtype = DType::kF32;
  combine.top_k = 0;
  combine.payload_length = 5 * 24 * 4;
  decoded = DecodeHeader(EncodeHeader(combine));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, combine);

  FrameHeader error;
  error.type = FrameType::kError;
  error.request_id = 5;
  error.payload_length = 8 + 3;
  decoded = DecodeHeader(EncodeHeader(error));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, error);
}

TEST(FrameTest, HeaderLayoutIsPinned) {
  // The byte layout is the wire contract; pin a few offsets.
  const EncodedHeader bytes = EncodeHeader(DispatchHeader());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data()), 4), "DSV2");
  EXPECT_EQ(bytes[4], kFrameVersion);
  EXPECT_EQ(bytes[6], 1);     // dispatch
  EXPECT_EQ(bytes[7], 1);     // bf16
  EXPECT_EQ(bytes[8], 0xef);  // request_id, little-endian
  EXPECT_EQ(bytes[24], 26);   // layer
  EXPECT_EQ(bytes[44], 9);    // sender
}

TEST(FrameTest, RejectsWrongSize) {
  const EncodedHeader bytes = EncodeHeader(DispatchHeader());
  EXPECT_THAT(DecodeHeader(absl::MakeConstSpan(bytes.data(), 63)).status().message(),
              HasSubstr("63 bytes, expected 64"));
  std::vector<uint8_t> longer(bytes.begin(), bytes.end());
  longer.push_back(0);
  EXPECT_THAT(DecodeHeader(longer).status().message(), HasSubstr("65 bytes"));
  EXPECT_FALSE(DecodeHeader({}).ok());
}

TEST(FrameTest, RejectsBadMagic) {
  EXPECT_THAT(DecodeStatus(WithField<uint32_t>(DispatchHeader(), 0, 0x12345678)).message(),
              HasSubstr("magic"));
}

TEST(FrameTest, RejectsOtherVersions) {
  const absl::Status s = DecodeStatus(WithField<uint16_t>(DispatchHeader(), 4, 2));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("version 2"));
}

TEST(FrameTest, RejectsCorruptedChecksum) {
  EncodedHeader bytes = EncodeHeader(DispatchHeader());
  bytes[30] ^= 0x40;  // micro_batch bit flip, checksum not updated
  EXPECT_THAT(DecodeStatus(bytes).message(), HasSubstr("checksum"));
}

TEST(FrameTest, RejectsUnknownTypeDTypeAndFlags) {
  EXPECT_THAT(DecodeStatus(WithField<uint8_t>(DispatchHeader(), 6, 0)).message(),
              HasSubstr("type 0"));
  EXPECT_THAT(DecodeStatus(WithField<uint8_t>(DispatchHeader(), 6, 4)).message(),
              HasSubstr("type 4"));
  EXPECT_THAT(DecodeStatus(WithField<uint8_t>(DispatchHeader(), 7, 0)).message(),
              HasSubstr("dtype 0"));
  EXPECT_THAT(DecodeStatus(WithField<uint8_t>(DispatchHeader(), 7, 9)).message(),
              HasSubstr("dtype 9"));
  EXPECT_THAT(DecodeStatus(WithField<uint32_t>(DispatchHeader(), 56, 2)).message(),
              HasSubstr("reserved"));
  EXPECT_THAT(DecodeStatus(WithField<uint32_t>(DispatchHeader(), 56, 0x80000001u)).message(),
              HasSubstr("reserved"));
  // Bit 0 marks a sealed frame.
  FrameHeader sealed = DispatchHeader();
  sealed.flags = kFrameFlagSealed;
  absl::StatusOr<FrameHeader> decoded = DecodeHeader(EncodeHeader(sealed));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->flags, kFrameFlagSealed);
}

TEST(FrameTest, RejectsCountsOutsideLimits) {
  FrameHeader h = DispatchHeader();
  h.hidden_size = 0;
  EXPECT_THAT(DecodeStatus(EncodeHeader(h)).message(), HasSubstr("hidden_size 0"));
  h = DispatchHeader();
  h.hidden_size = kMaxFrameHidden + 1;
  EXPECT_THAT(DecodeStatus(EncodeHeader(h)).message(), HasSubstr("hidden_size"));
  h = DispatchHeader();
  h.top_k = 0;
  EXPECT_THAT(DecodeStatus(EncodeHeader(h)).message(), HasSubstr("top_k 0"));
  h = DispatchHeader();
  h.top_k = kMaxFrameTopK + 1;
  EXPECT_THAT(DecodeStatus(EncodeHeader(h)).message(), HasSubstr("top_k"));
  h = DispatchHeader();
  h.token_count = 0xFFFFFFFFu;  // Would overflow 32-bit size arithmetic.
  EXPECT_THAT(DecodeStatus(EncodeHeader(h)).message(), HasSubstr("token_count"));
}

TEST(FrameTest, RejectsPayloadsOverTheFrameLimit) {
  // Every count is within its own limit, but the product is 2^20 * 2^16 * 4.
  FrameHeader h;
  h.type = FrameType::kCombine;
  h.dtype = DType::kF32;
  h.token_count = kMaxFrameTokens;
  h.hidden_size = kMaxFrameHidden;
  h.payload_length = uint64_t{kMaxFrameTokens} * kMaxFrameHidden * 4;
  EXPECT_THAT(DecodeStatus(EncodeHeader(h)).message(), HasSubstr("exceeds the frame limit"));
}

TEST(FrameTest, RejectsPayloadLengthInconsistentWithCounts) {
  FrameHeader h = DispatchHeader();
  h.payload_length += 1;
  EXPECT_THAT(DecodeStatus(EncodeHeader(h)).message(), HasSubstr("needs a payload of"));
  h.payload_length = 0xFFFFFFFFFFFFFFFFull;
  EXPECT_FALSE(DecodeHeader(EncodeHeader(h)).ok());

  FrameHeader c = DispatchHeader();
  c.type = FrameType::kCombine;
  c.top_k = 0;
  c.payload_length = 5 * 24 * 2 - 2;
  EXPECT_THAT(DecodeStatus(EncodeHeader(c)).message(), HasSubstr("combine frame"));
  c.payload_length = 5 * 24 * 2;
  c.top_k = 2;
  EXPECT_THAT(DecodeStatus(EncodeHeader(c)).message(), HasSubstr("top_k 2, expected 0"));
}

TEST(FrameTest, RejectsMalformedErrorHeaders) {
  FrameHeader e;
  e.type = FrameType::kError;
  e.payload_length = 7;
  EXPECT_THAT(DecodeStatus(EncodeHeader(e)).message(), HasSubstr("payload_length 7"));
  e.payload_length = 8 + kMaxErrorMessageBytes + 1;
  EXPECT_FALSE(DecodeHeader(EncodeHeader(e)).ok());
  e.payload_length = 8;
  e.token_count = 1;
  EXPECT_THAT(DecodeStatus(EncodeHeader(e)).message(), HasSubstr("all must be 0"));
  e.token_count = 0;
  EXPECT_THAT(DecodeStatus(WithField<uint8_t>(e, 7, 1)).message(), HasSubstr("dtype"));
}

TEST(FrameTest, EveryHeaderByteFlipIsRejected) {
  // Any single corrupted byte fails the checksum or a field check; none
  // decodes to a different valid header.
  const EncodedHeader good = EncodeHeader(DispatchHeader());
  for (size_t i = 0; i < kFrameHeaderSize; ++i) {
    EncodedHeader bad = good;
    bad[i] ^= 0x01;
    EXPECT_FALSE(DecodeHeader(bad).ok()) << "byte " << i;
  }
}

TEST(FrameTest, DispatchLayoutAlignsSections) {
  // 3 tokens x 5 hidden bf16 = 30 bytes: ids start at 32, weights at 32+3*2*4=56 -> 64.
  absl::StatusOr<DispatchLayout> layout = ComputeDispatchLayout(3, 5, 2, DType::kBF16);
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->activations_bytes, 30u);
  EXPECT_EQ(layout->expert_ids_offset, 32u);
  EXPECT_EQ(layout->expert_ids_bytes, 24u);
  EXPECT_EQ(layout->weights_offset, 64u);
  EXPECT_EQ(layout->total_bytes, 88u);
  // The DeepSeek-V2 decode shape: 64 tokens x 5120 bf16, top-6.
  layout = ComputeDispatchLayout(64, 5120, 6, DType::kBF16);
  EXPECT_EQ(layout->total_bytes, 64u * 5120 * 2 + 2 * 64 * 6 * 4);
}

TEST(FrameTest, DispatchBuildAndParseRoundTrip) {
  const uint32_t tokens = 3, hidden = 5, top_k = 2;
  std::vector<uint16_t> activations(tokens * hidden);
  for (size_t i = 0; i < activations.size(); ++i) activations[i] = FloatToBF16(0.5f * i);
  const std::vector<int32_t> ids = {4, -1, 0, 7, 3, 2};
  const std::vector<float> weights = {0.5f, 0.f, 0.25f, 0.75f, 1.f, 0.125f};
  absl::StatusOr<Message> message =
      MakeDispatch({.step_id = 4, .layer = 2, .micro_batch = 1}, hidden, top_k, DType::kBF16,
                   absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(activations.data()),
                                       activations.size() * 2),
                   ids, weights, nullptr);
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->header.token_count, tokens);
  EXPECT_EQ(message->header.layer, 2u);

  // Through the wire: encode, decode, parse.
  absl::StatusOr<FrameHeader> header = DecodeHeader(EncodeHeader(message->header));
  ASSERT_TRUE(header.ok());
  absl::StatusOr<DispatchView> view = ParseDispatch(*header, message->payload.span());
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(std::memcmp(view->activations.data(), activations.data(), 30), 0);
  EXPECT_THAT(view->expert_ids, ::testing::ElementsAreArray(ids));
  EXPECT_THAT(view->weights, ::testing::ElementsAreArray(weights));
  // Views point into the buffer (no copy).
  EXPECT_EQ(view->activations.data(), message->payload.data());
  EXPECT_TRUE(ValidateRouting(*view, 8).ok());
  EXPECT_THAT(ValidateRouting(*view, 7).message(), HasSubstr("expert 7"));
}

TEST(FrameTest, ParseRejectsMismatchedOrMisalignedPayloads) {
  absl::StatusOr<Message> message = NewDispatch({}, 2, 8, 1, DType::kF32, nullptr);
  ASSERT_TRUE(message.ok());
  absl::Span<const uint8_t> payload = message->payload.span();
  EXPECT_THAT(
      ParseDispatch(message->header, payload.subspan(0, payload.size() - 1)).status().message(),
      HasSubstr("header says"));
  std::vector<uint8_t> shifted(payload.size() + 1);
  EXPECT_THAT(
      ParseDispatch(message->header, absl::MakeConstSpan(shifted.data() + 1, payload.size()))
          .status()
          .message(),
      HasSubstr("aligned"));
  EXPECT_THAT(ParseCombine(message->header, payload).status().message(),
              HasSubstr("expected a combine frame"));
}

TEST(FrameTest, ValidateRoutingRejectsNonFiniteWeights) {
  absl::StatusOr<Message> m = NewDispatch({}, 1, 4, 2, DType::kBF16, nullptr);
  ASSERT_TRUE(m.ok());
  DispatchSpans spans = *DispatchSpansOf(m->header, m->payload.span());
  spans.expert_ids[0] = 1;
  spans.expert_ids[1] = -1;
  spans.weights[0] = std::numeric_limits<float>::quiet_NaN();
  spans.weights[1] = std::numeric_limits<float>::infinity();  // Empty slot: ignored.
  const DispatchView view = *ParseDispatch(m->header, m->payload.span());
  EXPECT_THAT(ValidateRouting(view, 4).message(), HasSubstr("non-finite"));
  spans.weights[0] = 1.0f;
  EXPECT_TRUE(ValidateRouting(view, 4).ok());
  spans.expert_ids[1] = -2;
  EXPECT_THAT(ValidateRouting(view, 4).message(), HasSubstr("expert -2"));
}

TEST(FrameTest, CombineAnswersItsRequest) {
  FrameHeader request = DispatchHeader();
  absl::StatusOr<Message> combine = NewCombine(request, DType::kF32, nullptr);
  ASSERT_TRUE(combine.ok());
  EXPECT_EQ(combine->header.payload_length, 5u * 24 * 4);
  EXPECT_EQ(combine->header.layer, request.layer);
  EXPECT_TRUE(ValidateHeader(combine->header).ok());
  EXPECT_TRUE(ValidateCombineFor(request, combine->header).ok());
  EXPECT_TRUE(ParseCombine(combine->header, combine->payload.span()).ok());
  FrameHeader other = combine->header;
  other.token_count = 4;
  EXPECT_THAT(ValidateCombineFor(request, other).message(), HasSubstr("4 tokens"));
}

TEST(FrameTest, ErrorPayloadRoundTripsAndRejectsGarbage) {
  Message e = MakeErrorMessage(absl::NotFoundError("no expert 12"));
  absl::Status carried;
  ASSERT_TRUE(DecodeErrorPayload(e.header, e.payload.span(), &carried).ok());
  EXPECT_EQ(carried, absl::NotFoundError("no expert 12"));
  // OK is not an error.
  Message ok = MakeErrorMessage(absl::OkStatus());
  ASSERT_TRUE(DecodeErrorPayload(ok.header, ok.payload.span(), &carried).ok());
  EXPECT_EQ(carried.code(), absl::StatusCode::kInternal);

  std::vector<uint8_t> garbage(e.payload.span().begin(), e.payload.span().end());
  garbage[0] = 0;  // Code OK.
  EXPECT_THAT(DecodeErrorPayload(e.header, garbage, &carried).message(),
              HasSubstr("status code 0"));
  garbage[0] = 99;
  EXPECT_THAT(DecodeErrorPayload(e.header, garbage, &carried).message(),
              HasSubstr("status code 99"));
  garbage[0] = 5;
  garbage[4] = 200;  // Message length past the payload.
  EXPECT_THAT(DecodeErrorPayload(e.header, garbage, &carried).message(), HasSubstr("length 200"));
  // Long messages are truncated, never rejected.
  Message big = MakeErrorMessage(absl::InternalError(std::string(10000, 'x')));
  EXPECT_EQ(big.payload.size(), 8u + kMaxErrorMessageBytes);
  EXPECT_TRUE(ValidateHeader(big.header).ok());
}

TEST(BufferPoolTest, ReusesSlotsAndFallsBackToTheHeap) {
  absl::StatusOr<std::shared_ptr<BufferPool>> pool = BufferPool::Create(1 << 20);
  ASSERT_TRUE(pool.ok());
  const uint8_t* first;
  {
    MessageBuffer a = (*pool)->Allocate(5000);  // 8 KiB class
    ASSERT_EQ(a.size(), 5000u);
    EXPECT_EQ(a.pool(), pool->get());
    EXPECT_TRUE((*pool)->Contains(a.data()));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 4096, 0u);
    first = a.data();
  }
  MessageBuffer b = (*pool)->Allocate(8000);  // Same class: reuses the freed slot.
  EXPECT_EQ(b.data(), first);
  MessageBuffer huge = (*pool)->Allocate(2 << 20);
  EXPECT_EQ(huge.pool(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(huge.data()) % 64, 0u);
  const BufferPool::Stats stats = (*pool)->stats();
  EXPECT_EQ(stats.arena_allocations, 2u);
  EXPECT_EQ(stats.heap_fallbacks, 1u);
  EXPECT_EQ(stats.bytes_in_use, 8192u);
  // A buffer keeps its pool alive after the last other reference goes.
  std::shared_ptr<BufferPool> keep = *pool;
  pool->reset();
  keep.reset();
  std::memset(b.data(), 1, b.size());
}

TEST(BufferPoolTest, ExhaustedArenaFallsBack) {
  std::shared_ptr<BufferPool> pool = *BufferPool::Create(16384);
  MessageBuffer a = pool->Allocate(16384);
  MessageBuffer b = pool->Allocate(4096);
  EXPECT_EQ(a.pool(), pool.get());
  EXPECT_EQ(b.pool(), nullptr);
  EXPECT_TRUE(pool->Allocate(0).empty());
}

}  // namespace
}  // namespace dsv2::transport
