#include "tools/dsv2/args.h"

#include <charconv>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dsv2::cli {

absl::StatusOr<Args> Args::Parse(std::span<const std::string> argv,
                                 const std::vector<FlagSpec>& flags) {
  Args args;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (!arg.starts_with("--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name.resize(eq);
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& f : flags) {
      if (f.name == name) spec = &f;
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          name == "help" ? "" : absl::StrCat("unknown flag --", name, "\n"), "flags:\n",
          FlagHelp(flags)));
    }
    if (args.values_.contains(name) && !spec->repeatable) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " is given twice"));
    }
    std::vector<std::string>& values = args.values_[name];
    if (!spec->takes_value) {
      if (inline_value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      values.push_back("");
    } else if (inline_value) {
      values.push_back(*inline_value);
    } else {
      if (i + 1 >= argv.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      values.push_back(argv[++i]);
    }
  }
  return args;
}

std::optional<std::string> Args::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> Args::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<std::string> Args::Require(const std::string& name) const {
  auto value = Get(name);
  if (!value) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return *value;
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& name, int64_t fallback) const {
  auto value = Get(name);
  if (!value) return fallback;
  int64_t parsed;
  if (!absl::SimpleAtoi(*value, &parsed)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " expects an integer, got '", *value, "'"));
  }
  return parsed;
}

absl::StatusOr<double> Args::GetDouble(const std::string& name, double fallback) const {
  auto value = Get(name);
  if (!value) return fallback;
  double parsed;
  if (!absl::SimpleAtod(*value, &parsed)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " expects a number, got '", *value, "'"));
  }
  return parsed;
}

absl::StatusOr<std::vector<int32_t>> Args::GetTokenIds(const std::string& name) const {
  auto value = Get(name);
  if (!value || value->empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a list of token ids such as 1,2,3"));
  }
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(*value, ',')) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", part, "' is not a token id"));
    }
    ids.push_back(id);
  }
  return ids;
}

std::string FlagHelp(const std::vector<FlagSpec>& flags) {
  std::string help;
  for (const FlagSpec& f : flags) {
    std::string left = absl::StrCat("  --", f.name, f.takes_value ? " VALUE" : "");
    left.resize(std::max<size_t>(left.size() + 2, 24), ' ');
    absl::StrAppend(&help, left, f.help, "\n");
  }
  return help;
}

}  // namespace dsv2::cli
