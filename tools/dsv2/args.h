// Command-line arguments of one `dsv2` subcommand: "--name value" pairs and
// "--flag" switches, checked against the flags the subcommand declares so
// that a typo is an error naming it rather than a silently ignored option.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv2::cli {

struct FlagSpec {
  std::string name;  // Without the leading "--".
  bool takes_value = true;
  std::string help;
  bool repeatable = false;  // May be given several times (see GetAll).
};

class Args {
 public:
  static absl::StatusOr<Args> Parse(std::span<const std::string> argv,
                                    const std::vector<FlagSpec>& flags);

  bool Has(const std::string& name) const { return values_.contains(name); }
  std::optional<std::string> Get(const std::string& name) const;
  // Every value of a repeatable flag, in order.
  std::vector<std::string> GetAll(const std::string& name) const;
  absl::StatusOr<std::string> Require(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  // A comma-separated list of token ids, e.g. "1,2,3".
  absl::StatusOr<std::vector<int32_t>> GetTokenIds(const std::string& name) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

// "  --name VALUE  help" lines for a usage message.
std::string FlagHelp(const std::vector<FlagSpec>& flags);

}  // namespace dsv2::cli
