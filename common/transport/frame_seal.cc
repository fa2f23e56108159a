#include "common/transport/frame_seal.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"

namespace dsv2::transport {
namespace {

constexpr char kLabel[] = "dsv2 frame seal v1";
constexpr size_t kOffKeyId = 0, kOffSalt = 8, kOffCounter = 24, kOffTag = 32;

std::array<uint8_t, 32> DeriveKey(const std::array<uint8_t, kFrameKeyBytes>& secret,
                                  const uint8_t* salt) {
  uint8_t input[sizeof(kLabel) - 1 + 16];
  std::memcpy(input, kLabel, sizeof(kLabel) - 1);
  std::memcpy(input + sizeof(kLabel) - 1, salt, 16);
  std::array<uint8_t, 32> key{};
  unsigned int length = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), input, sizeof(input),
       key.data(), &length);
  return key;
}

struct CtxDeleter {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};

// AES-256-GCM over `payload` in place; `encrypt` false decrypts and checks
// `tag` (in), else writes it (out).
bool Gcm(bool encrypt, const std::array<uint8_t, 32>& key, const uint8_t nonce[12],
         absl::Span<const uint8_t> aad, absl::Span<uint8_t> payload, uint8_t tag[16]) {
  std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter> ctx(EVP_CIPHER_CTX_new());
  if (ctx == nullptr) return false;
  int length = 0;
  const EVP_CIPHER* cipher = EVP_aes_256_gcm();
  if ((encrypt ? EVP_EncryptInit_ex(ctx.get(), cipher, nullptr, key.data(), nonce)
               : EVP_DecryptInit_ex(ctx.get(), cipher, nullptr, key.data(), nonce)) != 1) {
    return false;
  }
  auto update = [&](uint8_t* out, const uint8_t* in, size_t n) {
    // EVP takes int lengths: feed large payloads in pieces.
    while (n > 0) {
      const int piece = static_cast<int>(std::min<size_t>(n, 1 << 30));
      if ((encrypt ? EVP_EncryptUpdate(ctx.get(), out, &length, in, piece)
                   : EVP_DecryptUpdate(ctx.get(), out, &length, in, piece)) != 1) {
        return false;
      }
      if (out != nullptr) out += piece;
      in += piece;
      n -= static_cast<size_t>(piece);
    }
    return true;
  };
  if (!aad.empty() && !update(nullptr, aad.data(), aad.size())) return false;
  if (!payload.empty() && !update(payload.data(), payload.data(), payload.size())) return false;
  if (encrypt) {
    return EVP_EncryptFinal_ex(ctx.get(), nullptr, &length) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
  }
  return EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, 16, tag) == 1 &&
         EVP_DecryptFinal_ex(ctx.get(), nullptr, &length) == 1;
}

}  // namespace

FrameSealer::FrameSealer() { RAND_bytes(salt_.data(), static_cast<int>(salt_.size())); }
FrameSealer::~FrameSealer() = default;

void FrameSealer::SetKeys(std::vector<FrameKey> keys, absl::Duration hold_second) {
  std::vector<std::pair<uint64_t, std::array<uint8_t, 32>>> derived;
  for (const FrameKey& key : keys) derived.emplace_back(key.id, DeriveKey(key.secret, salt_.data()));
  MutexLock lock(&mutex_);
  keys_ = std::move(keys);
  derived_ = std::move(derived);
  seal_first_after_ = absl::Now() + hold_second;
}

uint64_t FrameSealer::KeyIdOf(const Seal& seal) {
  uint64_t key_id;
  std::memcpy(&key_id, seal.data() + kOffKeyId, 8);
  return key_id;
}

bool FrameSealer::sealing() const {
  MutexLock lock(&mutex_);
  return !keys_.empty();
}

absl::StatusOr<Seal> FrameSealer::SealFrame(absl::Span<const uint8_t> aad,
                                            absl::Span<uint8_t> payload,
                                            std::optional<uint64_t> wanted) {
  uint64_t key_id;
  std::array<uint8_t, 32> key;
  {
    MutexLock lock(&mutex_);
    if (derived_.empty()) return absl::FailedPreconditionError("no data-plane key to seal with");
    size_t pick = derived_.size() > 1 && absl::Now() < seal_first_after_ ? 1 : 0;
    if (wanted) {
      for (size_t i = 0; i < derived_.size(); ++i) {
        if (derived_[i].first == *wanted) pick = i;
      }
    }
    key_id = derived_[pick].first;
    key = derived_[pick].second;
  }
  Seal seal{};
  const uint64_t counter = counter_.fetch_add(1, std::memory_order_relaxed);
  std::memcpy(seal.data() + kOffKeyId, &key_id, 8);
  std::memcpy(seal.data() + kOffSalt, salt_.data(), 16);
  std::memcpy(seal.data() + kOffCounter, &counter, 8);
  uint8_t nonce[12] = {};
  std::memcpy(nonce + 4, &counter, 8);
  if (!Gcm(true, key, nonce, aad, payload, seal.data() + kOffTag)) {
    return absl::InternalError("AES-256-GCM sealing failed");
  }
  return seal;
}

absl::Status FrameSealer::OpenFrame(absl::Span<const uint8_t> seal, absl::Span<const uint8_t> aad,
                                    absl::Span<uint8_t> payload) const {
  if (seal.size() != kSealBytes) {
    return absl::PermissionDeniedError(
        absl::StrCat("frame seal is ", seal.size(), " bytes, expected ", kSealBytes));
  }
  uint64_t key_id;
  std::memcpy(&key_id, seal.data() + kOffKeyId, 8);
  std::array<uint8_t, kFrameKeyBytes> secret;
  bool found = false;
  {
    MutexLock lock(&mutex_);
    for (const FrameKey& key : keys_) {
      if (key.id == key_id) {
        secret = key.secret;
        found = true;
      }
    }
  }
  if (!found) {
    return absl::PermissionDeniedError(absl::StrCat("frame sealed with unknown key ", key_id));
  }
  const std::array<uint8_t, 32> key = DeriveKey(secret, seal.data() + kOffSalt);
  uint8_t nonce[12] = {};
  std::memcpy(nonce + 4, seal.data() + kOffCounter, 8);
  uint8_t tag[16];
  std::memcpy(tag, seal.data() + kOffTag, 16);
  if (!Gcm(false, key, nonce, aad, payload, tag)) {
    return absl::PermissionDeniedError("frame seal does not verify");
  }
  return absl::OkStatus();
}

}  // namespace dsv2::transport
