#include "common/rpc/api_tokens.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/logging.h"

namespace dsv2 {
namespace {

constexpr size_t kMinTokenBytes = 16;
constexpr size_t kMaxTokenBytes = 512;
constexpr size_t kMaxNameBytes = 64;
constexpr int64_t kMaxFileBytes = 1 << 20;

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '@' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

bool ValidToken(std::string_view token) {
  if (token.size() < kMinTokenBytes || token.size() > kMaxTokenBytes) return false;
  for (char c : token) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

}  // namespace

ApiTokens::Digest Sha256(std::string_view bytes) {
  ApiTokens::Digest digest{};
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest.data(), &length, EVP_sha256(), nullptr);
  return digest;
}

absl::StatusOr<absl::flat_hash_map<ApiTokens::Digest, std::string>> ApiTokens::Parse(
    std::string_view text, std::string_view path) {
  absl::flat_hash_map<Digest, std::string> tokens;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<std::string> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto error = [&](const std::string& what) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(path), ":", line_number, ": ", what));
    };
    if (fields.size() != 2) return error("expected `NAME TOKEN`");
    if (!ValidName(fields[0])) {
      return error(absl::StrCat("the name must be 1 to ", kMaxNameBytes,
                                " bytes of [A-Za-z0-9._@-]"));
    }
    if (!ValidToken(fields[1])) {
      return error(absl::StrCat("the token must be ", kMinTokenBytes, " to ", kMaxTokenBytes,
                                " printable ASCII bytes"));
    }
    if (!tokens.emplace(Sha256(fields[1]), fields[0]).second) {
      return error("this token is listed twice");
    }
  }
  return tokens;
}

absl::StatusOr<ApiTokens::Stamp> ApiTokens::StampOf(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": not a file"));
  if (st.st_size > kMaxFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": larger than 1 MiB"));
  }
  return Stamp{.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec,
               .size = st.st_size,
               .inode = st.st_ino};
}

absl::StatusOr<std::unique_ptr<ApiTokens>> ApiTokens::Load(std::string path,
                                                           absl::Duration reload_interval) {
  absl::StatusOr<Stamp> stamp = StampOf(path);
  if (!stamp.ok()) return stamp.status();
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  absl::StatusOr<absl::flat_hash_map<Digest, std::string>> tokens = Parse(text.str(), path);
  if (!tokens.ok()) return tokens.status();
  std::unique_ptr<ApiTokens> result(new ApiTokens(std::move(path), reload_interval));
  MutexLock lock(&result->mutex_);
  result->tokens_ = *std::move(tokens);
  result->stamp_ = *stamp;
  result->next_check_ = absl::Now() + reload_interval;
  return result;
}

void ApiTokens::MaybeReload() {
  const absl::Time now = absl::Now();
  if (now < next_check_) return;
  next_check_ = now + reload_interval_;
  absl::StatusOr<Stamp> stamp = StampOf(path_);
  if (stamp.ok() && *stamp == stamp_) return;
  absl::StatusOr<absl::flat_hash_map<Digest, std::string>> tokens = absl::UnknownError("");
  if (stamp.ok()) {
    std::ifstream in(path_, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    tokens = Parse(text.str(), path_);
  } else {
    tokens = stamp.status();
  }
  if (!tokens.ok()) {
    DSV2_LOG(ERROR) << "API tokens not reloaded, the previous ones stay in force: "
                    << tokens.status().message();
    if (stamp.ok()) stamp_ = *stamp;  // Do not log again until it changes.
    return;
  }
  tokens_ = *std::move(tokens);
  stamp_ = *stamp;
  ++reloads_;
  DSV2_LOG(INFO) << "API tokens reloaded from " << path_ << ": " << tokens_.size() << " token(s)";
}

std::optional<std::string> ApiTokens::Lookup(std::string_view token) {
  const Digest digest = Sha256(token);
  MutexLock lock(&mutex_);
  MaybeReload();
  auto it = tokens_.find(digest);
  if (it == tokens_.end()) return std::nullopt;
  return it->second;
}

int64_t ApiTokens::reloads() const {
  MutexLock lock(&mutex_);
  return reloads_;
}

}  // namespace dsv2
