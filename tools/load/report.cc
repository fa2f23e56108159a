#include "tools/load/report.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dsv2::load {

Percentiles Summarize(std::vector<double> values) {
  Percentiles p;
  p.count = static_cast<int64_t>(values.size());
  if (values.empty()) return p;
  std::sort(values.begin(), values.end());
  // Nearest rank: the smallest value with at least q of the values at or below it.
  auto at = [&](double q) {
    const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
  };
  double sum = 0;
  for (double v : values) sum += v;
  p.mean = sum / static_cast<double>(values.size());
  p.p50 = at(0.5);
  p.p90 = at(0.9);
  p.p99 = at(0.99);
  p.max = values.back();
  return p;
}

StageReport Report(const std::vector<RequestRecord>& records, int stage, double offered_rate,
                   const Slo& slo) {
  StageReport r;
  r.stage = stage;
  r.offered_rate = offered_rate;
  std::vector<double> ttft, tpot, itl, e2e;
  double first = 1e300, last = 0;
  int64_t good = 0;
  for (const RequestRecord& q : records) {
    if (q.stage != stage) continue;
    ++r.requests;
    first = std::min(first, q.start);
    last = std::max(last, q.end);
    if (q.code != 0) {
      ++r.errors[absl::StatusCodeToString(static_cast<absl::StatusCode>(q.code))];
      continue;
    }
    ++r.succeeded;
    r.prompt_tokens += q.prompt_tokens;
    r.output_tokens += q.output_tokens;
    const double request_e2e = q.end - q.start;
    e2e.push_back(request_e2e);
    double request_ttft = 0, request_tpot = 0;
    if (q.first_token >= 0) {
      request_ttft = q.first_token - q.start;
      ttft.push_back(request_ttft);
    }
    if (q.output_tokens > 1) {
      request_tpot = (q.end - q.first_token) / static_cast<double>(q.output_tokens - 1);
      tpot.push_back(request_tpot);
    }
    for (size_t i = 1; i < q.token_times.size(); ++i) {
      itl.push_back(q.token_times[i] - q.token_times[i - 1]);
    }
    if ((slo.ttft_s <= 0 || request_ttft <= slo.ttft_s) &&
        (slo.tpot_s <= 0 || request_tpot <= slo.tpot_s) &&
        (slo.e2e_s <= 0 || request_e2e <= slo.e2e_s)) {
      ++good;
    }
  }
  r.seconds = r.requests > 0 ? last - first : 0;
  if (r.seconds > 0) {
    r.request_rate = static_cast<double>(r.succeeded) / r.seconds;
    r.output_token_rate = static_cast<double>(r.output_tokens) / r.seconds;
    r.goodput = static_cast<double>(good) / r.seconds;
  }
  r.ttft = Summarize(ttft);
  r.tpot = Summarize(tpot);
  r.itl = Summarize(itl);
  r.e2e = Summarize(e2e);
  return r;
}

std::string FormatReports(const std::vector<StageReport>& reports, const Slo& slo) {
  std::string out;
  for (const StageReport& r : reports) {
    absl::StrAppendFormat(&out, "stage %d: %s, %.1f s\n", r.stage,
                          r.offered_rate > 0 ? absl::StrFormat("%.2f req/s offered", r.offered_rate)
                                             : std::string("closed loop"),
                          r.seconds);
    absl::StrAppendFormat(&out, "  requests %d, succeeded %d; %.2f req/s, %.1f output tok/s",
                          r.requests, r.succeeded, r.request_rate, r.output_token_rate);
    if (slo.ttft_s > 0 || slo.tpot_s > 0 || slo.e2e_s > 0) {
      absl::StrAppendFormat(&out, ", goodput %.2f req/s", r.goodput);
    }
    out += "\n";
    absl::StrAppendFormat(&out, "  %-10s %10s %10s %10s %10s %10s\n", "ms", "mean", "p50", "p90",
                          "p99", "max");
    for (const auto& [name, p] : {std::pair<const char*, const Percentiles&>{"TTFT", r.ttft},
                                  {"TPOT", r.tpot},
                                  {"ITL", r.itl},
                                  {"E2E", r.e2e}}) {
      absl::StrAppendFormat(&out, "  %-10s %10.1f %10.1f %10.1f %10.1f %10.1f\n", name,
                            p.mean * 1e3, p.p50 * 1e3, p.p90 * 1e3, p.p99 * 1e3, p.max * 1e3);
    }
    for (const auto& [code, n] : r.errors) absl::StrAppendFormat(&out, "  error %s: %d\n", code, n);
  }
  return out;
}

namespace {
nlohmann::json ToJson(const Percentiles& p) {
  return {{"mean", p.mean}, {"p50", p.p50}, {"p90", p.p90},
          {"p99", p.p99},   {"max", p.max}, {"count", p.count}};
}
}  // namespace

nlohmann::json ToJson(const StageReport& r) {
  return {{"stage", r.stage},
          {"offered_rate", r.offered_rate},
          {"seconds", r.seconds},
          {"requests", r.requests},
          {"succeeded", r.succeeded},
          {"prompt_tokens", r.prompt_tokens},
          {"output_tokens", r.output_tokens},
          {"request_rate", r.request_rate},
          {"output_token_rate", r.output_token_rate},
          {"goodput", r.goodput},
          {"ttft_s", ToJson(r.ttft)},
          {"tpot_s", ToJson(r.tpot)},
          {"itl_s", ToJson(r.itl)},
          {"e2e_s", ToJson(r.e2e)},
          {"errors", r.errors}};
}

nlohmann::json ToJson(const RequestRecord& q) {
  return {{"index", q.index},
          {"stage", q.stage},
          {"scheduled", q.scheduled},
          {"start", q.start},
          {"first_token", q.first_token},
          {"end", q.end},
          {"token_times", q.token_times},
          {"prompt_tokens", q.prompt_tokens},
          {"output_tokens", q.output_tokens},
          {"code", q.code},
          {"error", q.error}};
}

}  // namespace dsv2::load
