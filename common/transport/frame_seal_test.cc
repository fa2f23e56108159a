// Sealed frames: what seals opens with the key and nothing else, and any
// change to the header, the additional data, the payload or the seal is
// refused.
#include "common/transport/frame_seal.h"

#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv2::transport {
namespace {

using ::testing::HasSubstr;

FrameKey Key(uint64_t id, uint8_t fill) {
  FrameKey key{.id = id};
  key.secret.fill(fill);
  return key;
}

std::vector<uint8_t> Bytes(size_t n, uint8_t start = 0) {
  std::vector<uint8_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

TEST(FrameSealTest, OpensWithTheKeyAndRestoresThePayload) {
  FrameSealer sender, receiver;
  sender.SetKeys({Key(7, 1)});
  receiver.SetKeys({Key(7, 1)});
  const std::vector<uint8_t> aad = Bytes(100, 3);
  for (size_t size : {size_t{0}, size_t{1}, size_t{16}, size_t{4097}, size_t{640 * 1024}}) {
    const std::vector<uint8_t> original = Bytes(size, 9);
    std::vector<uint8_t> payload = original;
    absl::StatusOr<Seal> seal = sender.SealFrame(aad, absl::MakeSpan(payload));
    ASSERT_TRUE(seal.ok()) << seal.status();
    if (size >= 16) EXPECT_NE(payload, original) << "encrypted in place";
    ASSERT_TRUE(receiver.OpenFrame(*seal, aad, absl::MakeSpan(payload)).ok()) << size;
    EXPECT_EQ(payload, original);
  }
}

TEST(FrameSealTest, EveryChangeIsRefused) {
  FrameSealer sender, receiver;
  sender.SetKeys({Key(7, 1)});
  receiver.SetKeys({Key(7, 1)});
  const std::vector<uint8_t> aad = Bytes(80);
  const std::vector<uint8_t> original = Bytes(200, 5);
  std::vector<uint8_t> sealed = original;
  const Seal seal = *sender.SealFrame(aad, absl::MakeSpan(sealed));
  auto opens = [&](Seal s, std::vector<uint8_t> a, std::vector<uint8_t> p) {
    return receiver.OpenFrame(s, a, absl::MakeSpan(p)).ok();
  };
  ASSERT_TRUE(opens(seal, aad, sealed));
  for (size_t i = 0; i < aad.size(); ++i) {
    std::vector<uint8_t> a = aad;
    a[i] ^= 0x01;
    EXPECT_FALSE(opens(seal, a, sealed)) << "aad byte " << i;
  }
  for (size_t i = 0; i < sealed.size(); i += 7) {
    std::vector<uint8_t> p = sealed;
    p[i] ^= 0x80;
    EXPECT_FALSE(opens(seal, aad, p)) << "payload byte " << i;
  }
  for (size_t i = 8; i < kSealBytes; ++i) {  // Salt, counter, tag (not the key id).
    Seal s = seal;
    s[i] ^= 0x01;
    EXPECT_FALSE(opens(s, aad, sealed)) << "seal byte " << i;
  }
  std::vector<uint8_t> shorter = aad;
  shorter.pop_back();
  EXPECT_FALSE(opens(seal, shorter, sealed));
  EXPECT_THAT(receiver.OpenFrame(absl::MakeConstSpan(seal.data(), 40), aad,
                                 absl::MakeSpan(sealed))
                  .message(),
              HasSubstr("40 bytes"));
}

TEST(FrameSealTest, OtherKeysAndKeyIdsDoNotOpen) {
  FrameSealer sender, outsider, next_epoch;
  sender.SetKeys({Key(7, 1)});
  outsider.SetKeys({Key(7, 2)});     // Same id, another secret.
  next_epoch.SetKeys({Key(8, 3)});   // Another epoch only.
  const std::vector<uint8_t> aad = Bytes(64);
  std::vector<uint8_t> payload = Bytes(64);
  const Seal seal = *sender.SealFrame(aad, absl::MakeSpan(payload));
  std::vector<uint8_t> copy = payload;
  EXPECT_THAT(outsider.OpenFrame(seal, aad, absl::MakeSpan(copy)).message(),
              HasSubstr("does not verify"));
  copy = payload;
  EXPECT_THAT(next_epoch.OpenFrame(seal, aad, absl::MakeSpan(copy)).message(),
              HasSubstr("unknown key 7"));
  // A receiver between epochs opens both.
  next_epoch.SetKeys({Key(8, 3), Key(7, 1)});
  copy = payload;
  EXPECT_TRUE(next_epoch.OpenFrame(seal, aad, absl::MakeSpan(copy)).ok());
}

TEST(FrameSealTest, ANewKeySealsAfterItsHoldAndRepliesUseTheRequestsKey) {
  FrameSealer sealer;
  sealer.SetKeys({Key(2, 2), Key(1, 1)}, absl::Hours(1));
  std::vector<uint8_t> p(16);
  EXPECT_EQ(FrameSealer::KeyIdOf(*sealer.SealFrame({}, absl::MakeSpan(p))), 1u) << "held";
  EXPECT_EQ(FrameSealer::KeyIdOf(*sealer.SealFrame({}, absl::MakeSpan(p), 2)), 2u);
  EXPECT_EQ(FrameSealer::KeyIdOf(*sealer.SealFrame({}, absl::MakeSpan(p), 99)), 1u)
      << "an unknown key id seals with the sealing key";
  sealer.SetKeys({Key(2, 2), Key(1, 1)});
  EXPECT_EQ(FrameSealer::KeyIdOf(*sealer.SealFrame({}, absl::MakeSpan(p))), 2u);
  EXPECT_EQ(FrameSealer::KeyIdOf(*sealer.SealFrame({}, absl::MakeSpan(p), 1)), 1u);
}

TEST(FrameSealTest, NoncesNeverRepeatAndSendersDiffer) {
  FrameSealer a, b;
  a.SetKeys({Key(1, 1)});
  b.SetKeys({Key(1, 1)});
  std::vector<uint8_t> p(32, 0);
  const Seal first = *a.SealFrame({}, absl::MakeSpan(p));
  std::fill(p.begin(), p.end(), 0);
  const Seal second = *a.SealFrame({}, absl::MakeSpan(p));
  std::fill(p.begin(), p.end(), 0);
  const Seal other = *b.SealFrame({}, absl::MakeSpan(p));
  // Same sender: same salt, counters differ. Another sender: another salt.
  EXPECT_TRUE(std::equal(first.begin() + 8, first.begin() + 24, second.begin() + 8));
  EXPECT_FALSE(std::equal(first.begin() + 24, first.begin() + 32, second.begin() + 24));
  EXPECT_FALSE(std::equal(first.begin() + 8, first.begin() + 24, other.begin() + 8));
}

TEST(FrameSealTest, WithoutKeysNothingSealsOrOpens) {
  FrameSealer none;
  EXPECT_FALSE(none.sealing());
  std::vector<uint8_t> p(8);
  EXPECT_EQ(none.SealFrame({}, absl::MakeSpan(p)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  Seal seal{};
  EXPECT_EQ(none.OpenFrame(seal, {}, absl::MakeSpan(p)).code(),
            absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace dsv2::transport
