// Sends a stage's requests to dsv2.v1.Generation with gRPC's asynchronous
// (callback) client, one stream per request, and times every token as it
// arrives (docs/load-tests.md). Any number of requests may be in flight on
// the one channel; nothing blocks on a slow stream.
//
// Thread safety: RunStage from one thread at a time; progress() from any.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "dsv2/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tools/load/report.h"
#include "tools/load/workload.h"

namespace dsv2::load {

struct RunnerOptions {
  std::shared_ptr<grpc::Channel> channel;
  std::string token;            // Bearer token; empty: none.
  v1::GenerateRequest request;  // Output options; the input is each prompt's.
  std::vector<Prompt> prompts;  // Used in turn.
  double timeout_s = 600;       // Per request.
  std::string id_prefix = "load";
};

class Runner {
 public:
  explicit Runner(RunnerOptions options);

  // Runs `stage` to its end (every request it sent has ended), appending
  // their records with `stage_index` (negative: warm-up, not kept). Times are
  // seconds since this Runner was made.
  void RunStage(const Stage& stage, int stage_index, std::mt19937_64& rng);

  std::vector<RequestRecord> TakeRecords();

  struct Progress {
    int64_t sent = 0, done = 0, failed = 0, in_flight = 0, tokens = 0;
  };
  Progress progress() const;

  double Now() const;

 private:
  class Call;
  void Launch(int stage_index, double scheduled);
  void Finished(RequestRecord record);
  // Waits until fewer than `limit` requests are in flight.
  void WaitBelow(int64_t limit);

  const RunnerOptions options_;
  const std::unique_ptr<v1::Generation::Stub> stub_;
  const std::chrono::steady_clock::time_point epoch_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  int64_t next_index_ = 0;
  int64_t in_flight_ = 0;
  std::vector<RequestRecord> records_;
  std::atomic<int64_t> sent_{0}, done_{0}, failed_{0}, tokens_{0};
};

}  // namespace dsv2::load
