// Sealed frames: the data plane's authentication and encryption between the
// workers of one cluster, with a key only the cluster's workers hold.
//
// The controller draws a random 256-bit key for its epoch and gives it, over
// the mutually authenticated control plane, to the attention and expert
// workers in the cluster map (never to routers or operators). Every frame a
// worker sends is sealed with AES-256-GCM under a key of its own, derived
// from the epoch key and a random salt the sender draws once:
//
//   sender key = HMAC-SHA256(epoch key, "dsv2 frame seal v1" || salt)
//   nonce      = 0x00000000 || counter (64-bit, never repeats per sender key)
//
// so two senders never share a (key, nonce) pair. The seal follows the
// 64-byte header (whose flags say kFrameFlagSealed) and is 48 bytes:
//
//   offset size
//        0    8 key id    the epoch of the key (the receiver picks its key)
//        8   16 salt      the sender's
//       24    8 counter   the nonce's counter
//       32   16 tag       GCM tag over the additional data and the payload
//
// The additional data is the header and whatever else the transport sends
// with it (the caller's reply address), so none of it can be changed or
// moved to another frame; the payload is encrypted in place. Replies are
// sealed with their request's key; a new epoch's key seals only after a
// hold period in which every worker receives it. A frame that
// does not open — no key of that id, a wrong tag — is dropped by the
// transport and counted. Replays are not detected: a replayed dispatch is
// computed again and its answer goes to the sender the map names, which
// drops it as late or unexpected.
//
// Thread safety: Seal and Open may run concurrently; SetKeys takes effect
// for later calls.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/base/mutex.h"

namespace dsv2::transport {

inline constexpr size_t kSealBytes = 48;
inline constexpr size_t kFrameKeyBytes = 32;

struct FrameKey {
  uint64_t id = 0;  // The controller's epoch.
  std::array<uint8_t, kFrameKeyBytes> secret{};
};

using Seal = std::array<uint8_t, kSealBytes>;

class FrameSealer {
 public:
  FrameSealer();  // Draws the salt.
  ~FrameSealer();
  FrameSealer(const FrameSealer&) = delete;
  FrameSealer& operator=(const FrameSealer&) = delete;

  // Every key opens; the first seals — after `hold_second` has passed: until
  // then the second key (if any) still seals. That is how a new epoch's key
  // spreads: every worker can open with it before any seals with it. Empty:
  // no sealing.
  void SetKeys(std::vector<FrameKey> keys, absl::Duration hold_second = absl::ZeroDuration());
  bool sealing() const;

  // Encrypts `payload` in place and returns the seal over `aad` and it,
  // with the key of id `key_id` when given and known (a reply, sealed as its
  // request was), else the sealing key. FailedPrecondition without a key.
  absl::StatusOr<Seal> SealFrame(absl::Span<const uint8_t> aad, absl::Span<uint8_t> payload,
                                 std::optional<uint64_t> key_id = std::nullopt);
  // The key id a seal names.
  static uint64_t KeyIdOf(const Seal& seal);
  // Checks `seal` and decrypts `payload` in place. PermissionDenied when the
  // key is unknown or the frame was not sealed by a holder of it (the
  // payload is then garbage).
  absl::Status OpenFrame(absl::Span<const uint8_t> seal, absl::Span<const uint8_t> aad,
                         absl::Span<uint8_t> payload) const;

 private:
  mutable Mutex mutex_;
  std::vector<FrameKey> keys_ ABSL_GUARDED_BY(mutex_);
  absl::Time seal_first_after_ ABSL_GUARDED_BY(mutex_) = absl::InfinitePast();
  std::array<uint8_t, 16> salt_{};  // Drawn by the constructor.
  // Per key id: this sender's derived key.
  std::vector<std::pair<uint64_t, std::array<uint8_t, 32>>> derived_ ABSL_GUARDED_BY(mutex_);
  std::atomic<uint64_t> counter_{0};
};

}  // namespace dsv2::transport
