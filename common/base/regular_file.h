// Opening and reading input files only when they are regular files.
//
// A model directory is input like any other: any of its files may be a FIFO,
// a directory, a device or a socket, by mistake or on purpose. Opening a FIFO
// for reading blocks until a writer appears, so a server reading one would
// hang at start-up without a word; reading a character device may never end.
// RegularFile checks the file's type with stat() before opening it, opens it
// with O_NONBLOCK (so a file replaced by a FIFO between the check and the
// open cannot block the open either), and checks the descriptor again with
// fstat(); that descriptor is what is then read or mapped. Symbolic links
// are followed: a link to a regular file is a regular file.
//
//   ASSIGN_OR_RETURN(std::string text, ReadRegularFile(path, 1 << 20));
//
// Thread safety: RegularFile is thread-compatible; the functions are
// thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace dsv2 {

// What a stat() mode is, for messages: "a regular file", "a directory", "a
// FIFO (named pipe)", "a character device", "a block device", "a socket",
// "a symbolic link" or "a file of unknown type".
const char* FileTypeName(mode_t mode);

// An open, read-only descriptor of a regular file; closed by the destructor.
class RegularFile {
 public:
  // NotFound when `path` does not exist; InvalidArgument "PATH is a FIFO
  // (named pipe), not a regular file" (and so on for every other type);
  // other failures as absl::ErrnoToStatus with the path.
  static absl::StatusOr<RegularFile> Open(const std::string& path);

  RegularFile(RegularFile&& other) noexcept;
  RegularFile& operator=(RegularFile&& other) noexcept;
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  ~RegularFile();

  int fd() const { return fd_; }
  // The size fstat() reported when the file was opened.
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // The whole content. InvalidArgument when the file is (or has grown to be)
  // larger than `max_bytes`: a bound on what a hostile file can make the
  // reader allocate.
  absl::StatusOr<std::string> ReadAll(int64_t max_bytes) const;

 private:
  RegularFile(std::string path, int fd, int64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}

  std::string path_;
  int fd_ = -1;
  int64_t size_ = 0;
};

// RegularFile::Open(path), then ReadAll(max_bytes).
absl::StatusOr<std::string> ReadRegularFile(const std::string& path, int64_t max_bytes);

}  // namespace dsv2
