// What dsv2-load measured (docs/load-tests.md): every request's timings,
// and per stage the latency percentiles, throughput, goodput and errors, as
// `vllm bench serve` and guidellm report them:
//   TTFT  send → first token;      TPOT  (E2E − TTFT) / (output tokens − 1)
//   ITL   between consecutive token arrivals (tokens that arrive in one
//         message count the gap once, then 0);
//   E2E   send → end of the stream.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace dsv2::load {

struct RequestRecord {
  int64_t index = 0;
  int stage = 0;
  double scheduled = 0;             // Seconds from the run's start: when it was due...
  double start = 0;                 // ...when it was sent,
  double first_token = -1;          // ...its first token (-1: none),
  double end = 0;                   // ...and the end of its stream.
  std::vector<double> token_times;  // Each token's arrival.
  int64_t prompt_tokens = 0;        // As the server reported (usage).
  int64_t output_tokens = 0;        // Tokens received.
  int code = 0;                     // gRPC status code (0: OK).
  std::string error;
};

struct Percentiles {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
  int64_t count = 0;
};
Percentiles Summarize(std::vector<double> values);

// What a request must meet to count towards goodput (0: no bound).
struct Slo {
  double ttft_s = 0;
  double tpot_s = 0;
  double e2e_s = 0;
};

struct StageReport {
  int stage = 0;
  double offered_rate = 0;  // Requests per second the stage asked for (0: closed loop).
  double seconds = 0;       // First send to last end.
  int64_t requests = 0, succeeded = 0;
  int64_t prompt_tokens = 0, output_tokens = 0;
  double request_rate = 0;  // Succeeded per second.
  double output_token_rate = 0;
  double goodput = 0;  // Succeeded requests meeting the SLO, per second.
  Percentiles ttft, tpot, itl, e2e;
  std::map<std::string, int64_t> errors;  // By status code name.
};

StageReport Report(const std::vector<RequestRecord>& records, int stage, double offered_rate,
                   const Slo& slo);

// The summary table of `reports` (one column block per stage).
std::string FormatReports(const std::vector<StageReport>& reports, const Slo& slo);

nlohmann::json ToJson(const StageReport& report);
nlohmann::json ToJson(const RequestRecord& record);

}  // namespace dsv2::load
