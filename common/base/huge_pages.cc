#include "common/base/huge_pages.h"

#include <charconv>
#include <fstream>
#include <sstream>
#include <string>

namespace dsv2 {
namespace {

std::string_view StripSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// The whole of `s` as a number in `base`.
template <typename T>
bool ParseWhole(std::string_view s, int base, T* value) {
  const char* end = s.data() + s.size();
  const auto [ptr, error] = std::from_chars(s.data(), end, *value, base);
  return !s.empty() && error == std::errc() && ptr == end;
}

}  // namespace

int64_t FilePmdMappedBytes(std::string_view smaps, uintptr_t begin, uint64_t length) {
  constexpr std::string_view kField = "FilePmdMapped:";
  int64_t total = 0;
  bool inside = false;  // The current mapping starts in the range.
  while (!smaps.empty()) {
    const size_t newline = smaps.find('\n');
    std::string_view line = smaps.substr(0, newline);
    smaps.remove_prefix(newline == std::string_view::npos ? smaps.size() : newline + 1);
    // A mapping's first line: "START-END PERMS OFFSET DEV INODE [PATH]".
    const size_t dash = line.find('-');
    uint64_t start = 0;
    if (dash != std::string_view::npos && dash < line.find(' ') &&
        ParseWhole(line.substr(0, dash), 16, &start)) {
      inside = start >= begin && start - begin < length;
      continue;
    }
    if (!inside || !line.starts_with(kField)) continue;
    // "   2048 kB", at most 2^40 kB (1 EiB): no real mapping is larger.
    line = StripSpaces(line.substr(kField.size()));
    int64_t kib = 0;
    if (line.ends_with("kB") &&
        ParseWhole(StripSpaces(line.substr(0, line.size() - 2)), 10, &kib) && kib >= 0 &&
        kib <= (int64_t{1} << 40)) {
      total += kib * 1024;
    }
  }
  return total;
}

std::string ReadSelfSmaps() {
  std::ifstream in("/proc/self/smaps");
  if (!in) return "";
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace dsv2
