#include "tools/load/workload.h"

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace dsv2::load {
namespace {

absl::StatusOr<Prompt> ParseLine(const std::string& line) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  Prompt p;
  const bool has_text = j.contains("prompt"), has_ids = j.contains("token_ids");
  if (has_text == has_ids) {
    return absl::InvalidArgumentError("needs exactly one of \"prompt\" and \"token_ids\"");
  }
  if (has_text) {
    if (!j["prompt"].is_string()) return absl::InvalidArgumentError("\"prompt\" must be a string");
    p.text = j["prompt"].get<std::string>();
  } else {
    if (!j["token_ids"].is_array() || j["token_ids"].empty()) {
      return absl::InvalidArgumentError("\"token_ids\" must be a non-empty array");
    }
    for (const auto& id : j["token_ids"]) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError("\"token_ids\" must hold non-negative 32-bit integers");
      }
      p.token_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  }
  if (j.contains("max_tokens")) {
    if (!j["max_tokens"].is_number_integer() || j["max_tokens"].get<int64_t>() < 1) {
      return absl::InvalidArgumentError("\"max_tokens\" must be a positive integer");
    }
    p.max_tokens = j["max_tokens"].get<int64_t>();
  }
  return p;
}

}  // namespace

absl::StatusOr<std::vector<Prompt>> ReadDataset(const std::string& path, int64_t limit) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read dataset ", path));
  std::vector<Prompt> prompts;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    absl::StatusOr<Prompt> p = ParseLine(line);
    if (!p.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": ", p.status().message()));
    }
    prompts.push_back(*std::move(p));
    if (limit > 0 && static_cast<int64_t>(prompts.size()) >= limit) break;
  }
  if (prompts.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " has no prompts"));
  return prompts;
}

std::vector<Prompt> SyntheticPrompts(const SyntheticSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  auto around = [&](int64_t center, int64_t jitter) {
    if (jitter <= 0) return std::max<int64_t>(1, center);
    std::uniform_int_distribution<int64_t> d(center - jitter, center + jitter);
    return std::max<int64_t>(1, d(rng));
  };
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(spec.vocab - 1));
  std::vector<int32_t> prefix(spec.prefix_len);
  for (int32_t& t : prefix) t = token(rng);
  std::vector<Prompt> prompts(spec.count);
  for (Prompt& p : prompts) {
    p.token_ids = prefix;
    const int64_t own =
        std::max<int64_t>(1, around(spec.input_len, spec.input_jitter) - spec.prefix_len);
    for (int64_t i = 0; i < own; ++i) p.token_ids.push_back(token(rng));
    p.max_tokens = around(spec.output_len, spec.output_jitter);
  }
  return prompts;
}

std::vector<double> ArrivalTimes(const Stage& stage, std::mt19937_64& rng) {
  std::vector<double> times;
  const double end = stage.duration_s > 0 ? stage.duration_s : 1e18;
  const int64_t limit = stage.requests > 0 ? stage.requests : INT64_MAX;
  if (stage.rate > 0) {
    std::exponential_distribution<double> gap(stage.rate);
    for (double t = gap(rng); t < end && static_cast<int64_t>(times.size()) < limit;
         t += gap(rng)) {
      times.push_back(t);
    }
  } else if (stage.burst > 0) {
    for (double t = 0; t < end && static_cast<int64_t>(times.size()) < limit;
         t += stage.burst_period_s) {
      for (int64_t i = 0; i < stage.burst && static_cast<int64_t>(times.size()) < limit; ++i) {
        times.push_back(t);
      }
    }
  }
  return times;
}

absl::StatusOr<std::vector<Stage>> RampStages(const std::string& rates, double duration_s,
                                              int64_t max_concurrency) {
  std::vector<Stage> stages;
  for (absl::string_view part : absl::StrSplit(rates, ',')) {
    double rate = 0;
    if (!absl::SimpleAtod(part, &rate) || !(rate > 0) || rate > 1e6) {
      return absl::InvalidArgumentError(
          absl::StrCat("--ramp: '", std::string(part), "' is not a rate in (0, 1e6] per second"));
    }
    stages.push_back({.concurrency = max_concurrency, .rate = rate, .duration_s = duration_s});
  }
  return stages;
}

}  // namespace dsv2::load
