// Small helpers shared by the benchmark programs: a monotonic clock, the
// median of repeated measurements, and a minimal flag reader (benchmarks take
// a handful of `--name value` flags; they have no other dependencies). A
// malformed number is recorded rather than read as something else: each
// program reads its flags, then Flags::StopForUsage decides whether it
// stops with its usage and Flags::error().
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
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
  // The integer after `--name`, or `fallback` when absent. A value that is
  // not an integer in [min, max] is an error (see error()), and `fallback`
  // is returned.
  long GetInt(const char* name, long fallback, long min = LONG_MIN, long max = LONG_MAX) {
    return GetNumber(name, fallback, min, max, "an integer");
  }
  // As GetInt, for a decimal number.
  double GetDouble(const char* name, double fallback, double min, double max) {
    return GetNumber(name, fallback, min, max, "a number");
  }
  // The comma-separated integers after `--name` ("32,64", spaces allowed
  // around each), or those of `fallback` when absent (none if it is empty).
  // A part that is empty or not an integer in [min, max] is an error (see
  // error()), and the list is then empty.
  std::vector<long> GetList(const char* name, const std::string& fallback, long min, long max) {
    if (!Has(name) && fallback.empty()) return {};
    const std::string value = Has(name) ? Get(name, "") : fallback;
    std::vector<long> out;
    size_t begin = 0;
    while (begin <= value.size()) {
      size_t end = value.find(',', begin);
      if (end == std::string::npos) end = value.size();
      long number = 0;
      if (!ParseNumber(value.substr(begin, end - begin), min, max, &number)) {
        Reject(name,
               "'" + value + "' is not a comma-separated list of integers in " + Range(min, max));
        return {};
      }
      out.push_back(number);
      begin = end + 1;
    }
    return out;
  }
  // The first malformed value read, as "--name: why"; empty when none.
  const std::string& error() const { return error_; }
  // Records a malformed value that the caller parsed itself (as error()).
  void Reject(const char* name, const std::string& why) {
    if (error_.empty()) error_ = std::string("--") + name + ": " + why;
  }

  // Call after reading every flag. On --help, a flag not in `known`, a
  // malformed value or when `invalid` (a required flag missing, say):
  // prints "program: error()" when there is one, then `usage`, to standard
  // error, and returns the exit status (0 for --help, else 2). Otherwise
  // nothing.
  std::optional<int> StopForUsage(const char* program, std::initializer_list<const char*> known,
                                  const char* usage, bool invalid = false) const {
    if (!Has("help") && Unknown(known).empty() && error_.empty() && !invalid) return std::nullopt;
    if (!error_.empty()) std::fprintf(stderr, "%s: %s\n", program, error_.c_str());
    std::fputs(usage, stderr);
    return Has("help") ? 0 : 2;
  }

 private:
  template <typename Number>
  Number GetNumber(const char* name, Number fallback, Number min, Number max, const char* what) {
    if (!Has(name)) return fallback;
    const std::string value = Get(name, "");
    Number number = 0;
    if (!ParseNumber(value, min, max, &number)) {
      Reject(name, "'" + value + "' is not " + what + " in " + Range(min, max));
      return fallback;
    }
    return number;
  }
  // The whole of `text` (spaces around it allowed) as a Number in [min, max].
  template <typename Number>
  static bool ParseNumber(const std::string& text, Number min, Number max, Number* number) {
    const char* begin = text.c_str();
    while (*begin == ' ') ++begin;
    char* end = nullptr;
    errno = 0;
    Number parsed;
    if constexpr (std::is_integral_v<Number>) {
      parsed = std::strtol(begin, &end, 10);
    } else {
      parsed = std::strtod(begin, &end);
    }
    if (end == begin || errno == ERANGE) return false;
    while (*end == ' ') ++end;
    if (*end != '\0' || !(parsed >= min && parsed <= max)) return false;  // NaN too.
    *number = parsed;
    return true;
  }
  template <typename Number>
  static std::string Range(Number min, Number max) {
    auto bound = [](Number n) {
      if constexpr (std::is_integral_v<Number>) {
        return n == std::numeric_limits<Number>::min() || n == std::numeric_limits<Number>::max()
                   ? std::string(n < 0 ? "-inf" : "inf")
                   : std::to_string(n);
      } else {
        std::ostringstream out;
        out << n;
        return out.str();
      }
    };
    return "[" + bound(min) + ", " + bound(max) + "]";
  }
  std::vector<std::string> args_;
  std::string error_;
};

}  // namespace dsv2::bench
