// Bearer tokens of the public API, from a file that can change while the
// server runs (add, rotate, revoke without a restart).
//
// The file: one token per line, `NAME TOKEN`, where NAME is the principal
// the token authenticates (1-64 bytes of [A-Za-z0-9._@-]; several tokens may
// share one, for rotation) and TOKEN is 16-512 printable ASCII bytes without
// spaces. Blank lines and lines starting with '#' are ignored.
//
//   # name    token
//   alice     4c2e9f0b7a8d4e1f9c3b6a5d2e8f7a1b
//
// Clients send `authorization: Bearer TOKEN`. Lookup compares SHA-256
// digests, so a wrong guess learns nothing from timing. The file is checked
// for changes at most every `reload_interval`, on lookups; a change that
// does not parse is logged and the previous tokens stay in force.
//
// Thread safety: thread-safe.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/base/mutex.h"

namespace dsv2 {

class ApiTokens {
 public:
  using Digest = std::array<uint8_t, 32>;

  // Reads `path`; InvalidArgument names the line that is wrong.
  static absl::StatusOr<std::unique_ptr<ApiTokens>> Load(
      std::string path, absl::Duration reload_interval = absl::Seconds(1));

  // The principal `token` authenticates, or nullopt.
  std::optional<std::string> Lookup(std::string_view token);

  // Parses file contents (for Load and tests); `path` is for messages.
  static absl::StatusOr<absl::flat_hash_map<Digest, std::string>> Parse(std::string_view text,
                                                                         std::string_view path);

  int64_t reloads() const;  // Successful reloads after the first load.

 private:
  ApiTokens(std::string path, absl::Duration reload_interval)
      : path_(std::move(path)), reload_interval_(reload_interval) {}
  void MaybeReload() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::string path_;
  const absl::Duration reload_interval_;
  mutable Mutex mutex_;
  absl::flat_hash_map<Digest, std::string> tokens_ ABSL_GUARDED_BY(mutex_);
  absl::Time next_check_ ABSL_GUARDED_BY(mutex_);
  // The file's identity when last read: a change of any reloads it.
  struct Stamp {
    int64_t mtime_ns = 0;
    int64_t size = -1;
    uint64_t inode = 0;
    bool operator==(const Stamp&) const = default;
  };
  Stamp stamp_ ABSL_GUARDED_BY(mutex_);
  int64_t reloads_ ABSL_GUARDED_BY(mutex_) = 0;

  static absl::StatusOr<Stamp> StampOf(const std::string& path);
};

// SHA-256 of `bytes`.
ApiTokens::Digest Sha256(std::string_view bytes);

}  // namespace dsv2
