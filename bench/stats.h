// Small helpers shared by the benchmark programs: a monotonic clock, the
// median of repeated measurements, and a minimal flag reader (benchmarks take
// a handful of `--name value` flags; they have no other dependencies).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

namespace dsv2::bench {

inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The median of `values` (the mean of the middle two for an even count).
inline double Median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

// Reads `--name value` / `--flag` style arguments.
class Flags {
 public:
  Flags(int argc, char** argv) : args_(argv + 1, argv + argc) {}

  bool Has(const char* name) const {
    return std::find(args_.begin(), args_.end(), std::string("--") + name) != args_.end();
  }
  // The value after `--name`, or `fallback` when absent.
  std::string Get(const char* name, const std::string& fallback) const {
    const auto it = std::find(args_.begin(), args_.end(), std::string("--") + name);
    return it != args_.end() && it + 1 != args_.end() ? *(it + 1) : fallback;
  }
  // The flags given that are not in `known` (names without the dashes); a
  // flag's value is skipped when the flag is known.
  std::vector<std::string> Unknown(std::initializer_list<const char*> known) const {
    std::vector<std::string> unknown;
    for (const std::string& arg : args_) {
      if (arg.rfind("--", 0) != 0) continue;
      bool found = false;
      for (const char* name : known) found = found || arg == std::string("--") + name;
      if (!found) unknown.push_back(arg);
    }
    return unknown;
  }
  long GetInt(const char* name, long fallback) const {
    const std::string value = Get(name, "");
    return value.empty() ? fallback : std::strtol(value.c_str(), nullptr, 10);
  }
  // A comma-separated list of integers ("32,64", spaces allowed); parts
  // that are empty or not integers are skipped.
  std::vector<long> GetList(const char* name, const std::string& fallback) const {
    const std::string value = Get(name, fallback);
    std::vector<long> out;
    size_t begin = 0;
    while (begin <= value.size()) {
      size_t end = value.find(',', begin);
      if (end == std::string::npos) end = value.size();
      const std::string part = value.substr(begin, end - begin);
      char* parsed = nullptr;
      const long number = std::strtol(part.c_str(), &parsed, 10);
      while (*parsed == ' ') ++parsed;
      if (parsed != part.c_str() && *parsed == '\0') out.push_back(number);
      begin = end + 1;
    }
    return out;
  }

 private:
  std::vector<std::string> args_;
};

}  // namespace dsv2::bench
