#include "common/base/huge_pages.h"

#include <sys/mman.h>

#include <cstring>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

// Three mappings as /proc/PID/smaps lists them; two start in the range
// [0x7f0000000000, +0x800000).
constexpr std::string_view kSmaps =
    "7f0000000000-7f0000400000 r--p 00000000 fe:01 1234    /models/a/model.safetensors\n"
    "Size:               4096 kB\n"
    "Rss:                4096 kB\n"
    "FilePmdMapped:      2048 kB\n"
    "VmFlags: rd mr mw me hg \n"
    "7f0000400000-7f0000800000 r--p 00400000 fe:01 1234    /models/a/model.safetensors\n"
    "FilePmdMapped:      4096 kB\n"
    "7f0000800000-7f0000a00000 rw-p 00000000 00:00 0\n"
    "FilePmdMapped:      2048 kB\n";

TEST(HugePagesTest, SumsTheMappingsThatStartInTheRange) {
  EXPECT_EQ(FilePmdMappedBytes(kSmaps, 0x7f0000000000, 0x800000), int64_t{6144} << 10);
  EXPECT_EQ(FilePmdMappedBytes(kSmaps, 0x7f0000000000, 0x400000), int64_t{2048} << 10);
  EXPECT_EQ(FilePmdMappedBytes(kSmaps, 0x7f0000400000, 0x600000), int64_t{6144} << 10);
  EXPECT_EQ(FilePmdMappedBytes(kSmaps, 0x7f0000a00000, 0x1000), 0);
  EXPECT_EQ(FilePmdMappedBytes(kSmaps, 0x1000, 0x1000), 0);
}

TEST(HugePagesTest, SkipsWhatDoesNotParse) {
  constexpr std::string_view kBroken =
      "7f0000000000-7f0000400000 r--p 00000000 fe:01 1234 /m\n"
      "FilePmdMapped: x kB\n"
      "FilePmdMapped: -4 kB\n"
      "FilePmdMapped: 12\n"
      "FilePmdMapped:\n"
      "FilePmdMapped: 99999999999999999999999 kB\n"
      "FilePmdMapped: 9000000000000000000 kB\n"
      "zz-yy garbage\n"  // Not a mapping's line: the first goes on.
      "FilePmdMapped: 8 kB\n"
      "-\n"
      "\n"
      "7f0000000000-7f0000400000\n"
      "FilePmdMapped: 4 kB";
  EXPECT_EQ(FilePmdMappedBytes(kBroken, 0x7f0000000000, 0x400000), 12 << 10);
  EXPECT_EQ(FilePmdMappedBytes("", 0, ~uint64_t{0} >> 1), 0);
}

// This process's own smaps: an anonymous mapping has no file pages.
TEST(HugePagesTest, ReadsThisProcess) {
  const size_t length = size_t{4} << 20;
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::memset(p, 1, length);
  EXPECT_EQ(FilePmdMappedBytes(ReadSelfSmaps(), reinterpret_cast<uintptr_t>(p), length), 0);
  munmap(p, length);
}

}  // namespace
}  // namespace dsv2
