// dsv2-load: a load generator for the public Generate API of a router or
// dsv2-standalone (docs/load-tests.md).
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/status_macros.h"
#include "tools/dsv2/args.h"
#include "tools/dsv2/connection.h"
#include "tools/dsv2/request_flags.h"
#include "tools/load/report.h"
#include "tools/load/runner.h"
#include "tools/load/workload.h"

namespace dsv2::load {
namespace {

using cli::Args;
using cli::FlagSpec;

std::vector<FlagSpec> Flags() {
  std::vector<FlagSpec> flags = cli::ConnectionFlags();
  flags.insert(
      flags.end(),
      {
          // What to send.
          {"dataset", true,
           "JSONL prompts: {\"prompt\": text} or {\"token_ids\": [...]}, optional "
           "\"max_tokens\" (default: synthetic prompts)"},
          {"num-prompts", true, "prompts to read or make (default 100)"},
          {"input-len", true, "synthetic prompt tokens (default 128)"},
          {"input-jitter", true, "± uniform jitter of --input-len (default 0)"},
          {"output-len", true, "synthetic max_tokens (default: --max-tokens)"},
          {"output-jitter", true, "± uniform jitter of --output-len (default 0)"},
          {"prefix-len", true, "tokens every synthetic prompt shares at its start (default 0)"},
          {"prompt-seed", true, "seed of the synthetic prompts (default 0)"},
          // When.
          {"concurrency", true,
           "requests in flight (closed loop); with --rate/--burst/--ramp: the "
           "most in flight"},
          {"rate", true, "Poisson arrivals per second (open loop)"},
          {"burst", true, "requests sent at once every --burst-period seconds (open loop)"},
          {"burst-period", true, "seconds between bursts (default 1)"},
          {"ramp", true,
           "comma-separated rates, one stage of --stage-duration each (e.g. 1,2,4,8)"},
          {"stage-duration", true, "seconds per --ramp stage (default 30)"},
          {"duration", true, "seconds to send for (default: until --num-requests)"},
          {"num-requests", true, "requests to send (default: --num-prompts, unless --duration)"},
          {"warmup", true, "requests sent first and left out of the figures (default 0)"},
          {"arrival-seed", true, "seed of the Poisson arrivals (default 1)"},
          // What counts.
          {"slo-ttft-ms", true, "goodput: time to first token at most this"},
          {"slo-tpot-ms", true, "goodput: time per output token at most this"},
          {"slo-e2e-ms", true, "goodput: end-to-end latency at most this"},
          {"timeout", true, "per-request deadline in seconds (default 600)"},
          {"json", true, "write every request's timings and the reports here"},
          {"plot", true, "with --ramp: latency against offered load, a .png or .svg (gnuplot)"},
          {"quiet", false, "no progress line"},
      });
  for (FlagSpec& flag : cli::OutputFlags()) flags.push_back(std::move(flag));
  return flags;
}

// The stages the flags ask for: a ramp, or one stage.
absl::StatusOr<std::vector<Stage>> StagesFromFlags(const Args& args, int64_t default_requests) {
  ASSIGN_OR_RETURN(int64_t concurrency, args.GetInt("concurrency", 0));
  ASSIGN_OR_RETURN(double duration, args.GetDouble("duration", 0));
  ASSIGN_OR_RETURN(int64_t requests, args.GetInt("num-requests", 0));
  if (concurrency < 0 || duration < 0 || requests < 0) {
    return absl::InvalidArgumentError(
        "--concurrency, --duration and --num-requests must not be negative");
  }
  const int modes = args.Has("rate") + args.Has("burst") + args.Has("ramp");
  if (modes > 1) return absl::InvalidArgumentError("give at most one of --rate, --burst, --ramp");
  if (args.Has("ramp")) {
    ASSIGN_OR_RETURN(double stage_s, args.GetDouble("stage-duration", 30));
    if (!(stage_s > 0)) return absl::InvalidArgumentError("--stage-duration must be positive");
    return RampStages(*args.Get("ramp"), stage_s, concurrency);
  }
  Stage stage{.concurrency = concurrency, .duration_s = duration};
  stage.requests = requests > 0 ? requests : (duration > 0 ? 0 : default_requests);
  if (args.Has("rate")) {
    ASSIGN_OR_RETURN(stage.rate, args.GetDouble("rate", 0));
    if (!(stage.rate > 0)) return absl::InvalidArgumentError("--rate must be positive");
  } else if (args.Has("burst")) {
    ASSIGN_OR_RETURN(stage.burst, args.GetInt("burst", 0));
    ASSIGN_OR_RETURN(stage.burst_period_s, args.GetDouble("burst-period", 1));
    if (stage.burst < 1 || !(stage.burst_period_s > 0)) {
      return absl::InvalidArgumentError("--burst must be >= 1 and --burst-period positive");
    }
  } else if (concurrency == 0) {
    stage.concurrency = 1;
  }
  return std::vector<Stage>{stage};
}

absl::StatusOr<std::vector<Prompt>> PromptsFromFlags(const Args& args, int64_t vocab,
                                                     int64_t default_output) {
  ASSIGN_OR_RETURN(int64_t count, args.GetInt("num-prompts", 100));
  if (count < 1) return absl::InvalidArgumentError("--num-prompts must be at least 1");
  if (args.Has("dataset")) return ReadDataset(*args.Get("dataset"), count);
  SyntheticSpec spec{.count = count, .vocab = vocab};
  ASSIGN_OR_RETURN(spec.input_len, args.GetInt("input-len", 128));
  ASSIGN_OR_RETURN(spec.input_jitter, args.GetInt("input-jitter", 0));
  ASSIGN_OR_RETURN(spec.output_len, args.GetInt("output-len", default_output));
  ASSIGN_OR_RETURN(spec.output_jitter, args.GetInt("output-jitter", 0));
  ASSIGN_OR_RETURN(spec.prefix_len, args.GetInt("prefix-len", 0));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("prompt-seed", 0));
  spec.seed = static_cast<uint64_t>(seed);
  if (spec.input_len < 1 || spec.output_len < 1 || spec.input_jitter < 0 ||
      spec.output_jitter < 0 || spec.prefix_len < 0 || spec.prefix_len >= spec.input_len) {
    return absl::InvalidArgumentError(
        "--input-len and --output-len must be >= 1, jitters >= 0, and --prefix-len below "
        "--input-len");
  }
  return SyntheticPrompts(spec);
}

// Latency against offered load, one line per figure, with gnuplot.
absl::Status Plot(const std::vector<StageReport>& reports, const std::string& path) {
  const std::string data = path + ".dat";
  {
    std::ofstream out(data);
    out << "# offered_rate achieved_rate ttft_p50 ttft_p99 tpot_p50 tpot_p99 e2e_p99 (s)\n";
    for (const StageReport& r : reports) {
      out << absl::StrFormat("%g %g %g %g %g %g %g\n", r.offered_rate, r.request_rate, r.ttft.p50,
                             r.ttft.p99, r.tpot.p50, r.tpot.p99, r.e2e.p99);
    }
  }
  const bool svg = path.size() > 4 && path.substr(path.size() - 4) == ".svg";
  const std::string script = absl::StrCat(
      "set terminal ", svg ? "svg size 900,500" : "pngcairo size 900,500", "\n", "set output '",
      path, "'\n", "set xlabel 'offered load (requests/s)'\nset ylabel 'seconds'\nset logscale y\n",
      "set key top left\nset grid\n", "plot '", data,
      "' using 1:3 with linespoints title 'TTFT p50', ",
      "'' using 1:4 with linespoints title 'TTFT p99', ",
      "'' using 1:6 with linespoints title 'TPOT p99', ",
      "'' using 1:7 with linespoints title 'E2E p99'\n");
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    return absl::UnavailableError(
        absl::StrCat("no gnuplot to draw ", path, " (Debian: gnuplot-nox); the data is in ", data));
  }
  FILE* gnuplot = popen("gnuplot", "w");
  if (gnuplot == nullptr) return absl::UnavailableError("cannot run gnuplot");
  std::fputs(script.c_str(), gnuplot);
  if (pclose(gnuplot) != 0) {
    return absl::UnavailableError(absl::StrCat("gnuplot failed to write ", path,
                                               " (is it installed? the data is in ", data, ")"));
  }
  return absl::OkStatus();
}

absl::Status Run(std::span<const std::string> argv) {
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, Flags()));
  v1::GenerateRequest request;
  RETURN_IF_ERROR(cli::SetOutputOptions(args, &request));
  ASSIGN_OR_RETURN(cli::Connection connection, cli::Connect(args));
  ASSIGN_OR_RETURN(double timeout, args.GetDouble("timeout", 600));
  ASSIGN_OR_RETURN(int64_t warmup, args.GetInt("warmup", 0));
  ASSIGN_OR_RETURN(int64_t arrival_seed, args.GetInt("arrival-seed", 1));
  Slo slo;
  for (auto [flag, field] : {std::pair{"slo-ttft-ms", &slo.ttft_s},
                             {"slo-tpot-ms", &slo.tpot_s},
                             {"slo-e2e-ms", &slo.e2e_s}}) {
    ASSIGN_OR_RETURN(double ms, args.GetDouble(flag, 0));
    if (ms < 0)
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " must not be negative"));
    *field = ms / 1e3;
  }
  if (!(timeout > 0) || warmup < 0) {
    return absl::InvalidArgumentError("--timeout must be positive and --warmup not negative");
  }
  if (args.Has("plot") && !args.Has("ramp"))
    return absl::InvalidArgumentError("--plot needs --ramp");

  // The model's vocabulary bounds the synthetic ids.
  v1::ModelInfo info;
  {
    auto context = connection.NewContext(std::chrono::seconds(30));
    grpc::Status status = v1::Generation::NewStub(connection.channel)
                              ->GetModelInfo(context.get(), v1::GetModelInfoRequest(), &info);
    if (!status.ok()) {
      return absl::UnavailableError(
          absl::StrCat(connection.address, ": GetModelInfo: ", status.error_message()));
    }
  }
  ASSIGN_OR_RETURN(std::vector<Prompt> prompts,
                   PromptsFromFlags(args, info.vocab_size(), request.stopping().max_tokens()));
  ASSIGN_OR_RETURN(std::vector<Stage> stages,
                   StagesFromFlags(args, static_cast<int64_t>(prompts.size())));

  Runner runner({.channel = connection.channel,
                 .token = connection.token,
                 .request = request,
                 .prompts = std::move(prompts),
                 .timeout_s = timeout,
                 .id_prefix = absl::StrFormat("load-%d", getpid())});
  std::atomic<bool> running{true};
  std::atomic<int> current_stage{-1};
  std::thread progress;
  if (!args.Has("quiet") && isatty(STDERR_FILENO)) {
    progress = std::thread([&] {
      while (running) {
        const Runner::Progress p = runner.progress();
        std::cerr << absl::StrFormat(
            "\r[stage %d/%d] %.0f s: sent %d, done %d, failed %d, in flight %d, %d tokens   ",
            current_stage.load() + 1, stages.size(), runner.Now(), p.sent, p.done, p.failed,
            p.in_flight, p.tokens);
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
      std::cerr << "\n";
    });
  }
  std::mt19937_64 rng(static_cast<uint64_t>(arrival_seed));
  if (warmup > 0) {
    runner.RunStage(
        {.concurrency = std::max<int64_t>(1, stages[0].concurrency), .requests = warmup}, -1, rng);
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    current_stage = static_cast<int>(i);
    runner.RunStage(stages[i], static_cast<int>(i), rng);
  }
  running = false;
  if (progress.joinable()) progress.join();

  const std::vector<RequestRecord> records = runner.TakeRecords();
  std::vector<StageReport> reports;
  for (size_t i = 0; i < stages.size(); ++i) {
    reports.push_back(Report(records, static_cast<int>(i), stages[i].rate, slo));
  }
  std::cout << FormatReports(reports, slo) << std::flush;
  if (args.Has("json")) {
    nlohmann::json out = {
        {"target", connection.address},
        {"slo", {{"ttft_s", slo.ttft_s}, {"tpot_s", slo.tpot_s}, {"e2e_s", slo.e2e_s}}},
        {"stages", nlohmann::json::array()},
        {"requests", nlohmann::json::array()}};
    for (const StageReport& r : reports) out["stages"].push_back(ToJson(r));
    for (const RequestRecord& q : records) out["requests"].push_back(ToJson(q));
    std::ofstream file(*args.Get("json"));
    file << out.dump(1) << "\n";
    if (!file) return absl::UnavailableError(absl::StrCat("cannot write ", *args.Get("json")));
  }
  if (args.Has("plot")) RETURN_IF_ERROR(Plot(reports, *args.Get("plot")));
  return absl::OkStatus();
}

}  // namespace
}  // namespace dsv2::load

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // A plotting pipe that closes early is an error, not a death.
  std::vector<std::string> argv_strings(argv + 1, argv + argc);
  if (argv_strings.size() == 1 && (argv_strings[0] == "--help" || argv_strings[0] == "-h")) {
    std::cout << "usage: dsv2-load --addr HOST:PORT [flags]\n"
              << dsv2::cli::FlagHelp(dsv2::load::Flags());
    return 0;
  }
  const absl::Status status = dsv2::load::Run(argv_strings);
  if (!status.ok()) {
    std::cerr << "dsv2-load: " << status.message() << "\n";
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
