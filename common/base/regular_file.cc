#include "common/base/regular_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dsv2 {
namespace {

absl::Status NotRegular(const std::string& path, mode_t mode) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, " is ", FileTypeName(mode), ", not a regular file"));
}

}  // namespace

const char* FileTypeName(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "a file of unknown type";
}

absl::StatusOr<RegularFile> RegularFile::Open(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  }
  if (!S_ISREG(st.st_mode)) return NotRegular(path, st.st_mode);
  // O_NONBLOCK: should the path have become a FIFO since the stat, the open
  // returns at once instead of waiting for a writer. Reads of a regular file
  // ignore the flag.
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  RegularFile file(path, fd, 0);
  if (fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot stat ", path));
  if (!S_ISREG(st.st_mode)) return NotRegular(path, st.st_mode);
  file.size_ = static_cast<int64_t>(st.st_size);
  return file;
}

RegularFile::RegularFile(RegularFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), size_(other.size_) {}

RegularFile& RegularFile::operator=(RegularFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
  }
  return *this;
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::string> RegularFile::ReadAll(int64_t max_bytes) const {
  auto too_large = [&](int64_t size) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, " is ", size, " bytes, more than the limit of ", max_bytes, " bytes for this file"));
  };
  if (size_ > max_bytes) return too_large(size_);
  std::string content;
  content.resize(static_cast<size_t>(size_));
  int64_t done = 0;
  while (true) {
    // One byte more than the limit tells a file that grew from one at the limit.
    if (done == static_cast<int64_t>(content.size())) {
      if (done > max_bytes) return too_large(done);
      content.resize(static_cast<size_t>(std::min<int64_t>(max_bytes + 1, done + (1 << 16))));
    }
    const ssize_t n = pread(fd_, content.data() + done, content.size() - done, done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path_));
    }
    if (n == 0) break;
    done += n;
  }
  content.resize(static_cast<size_t>(done));
  return content;
}

absl::StatusOr<std::string> ReadRegularFile(const std::string& path, int64_t max_bytes) {
  auto file = RegularFile::Open(path);
  if (!file.ok()) return file.status();
  return file->ReadAll(max_bytes);
}

}  // namespace dsv2
