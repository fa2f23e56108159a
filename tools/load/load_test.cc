// dsv2-load's arithmetic: datasets (and malformed ones), synthetic prompts,
// arrival schedules, percentiles and the per-stage report.
#include <filesystem>
#include <fstream>
#include <random>

#include "common/base/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/load/report.h"
#include "tools/load/workload.h"

namespace dsv2::load {
namespace {

using ::testing::HasSubstr;

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = testutil::NewTestDir("load") + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(DatasetTest, ReadsTextAndTokenPromptsAndRefusesMalformedLines) {
  const std::string good = WriteFile(
      "good.jsonl", "{\"prompt\": \"hi\", \"max_tokens\": 5}\n\n{\"token_ids\": [1, 2, 3]}\n");
  absl::StatusOr<std::vector<Prompt>> prompts = ReadDataset(good, 0);
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  ASSERT_EQ(prompts->size(), 2u);
  EXPECT_EQ((*prompts)[0].text, "hi");
  EXPECT_EQ((*prompts)[0].max_tokens, 5);
  EXPECT_EQ((*prompts)[1].token_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(ReadDataset(good, 1)->size(), 1u);

  const std::pair<const char*, const char*> bad[] = {
      {"{\"prompt\": 1}", "\"prompt\" must be a string"},
      {"{\"token_ids\": [1, -2]}", "non-negative"},
      {"{\"token_ids\": []}", "non-empty array"},
      {"{\"prompt\": \"a\", \"token_ids\": [1]}", "exactly one"},
      {"{\"prompt\": \"a\", \"max_tokens\": 0}", "positive integer"},
      {"[1, 2]", "not a JSON object"},
      {"{\"prompt\": \"a\"", "not JSON"},
      {"\x01\xff garbage", "not JSON"},
  };
  for (const auto& [line, says] : bad) {
    const std::string path = WriteFile("bad.jsonl", std::string("{\"prompt\": \"ok\"}\n") + line);
    const absl::Status status = ReadDataset(path, 0).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << line;
    EXPECT_THAT(std::string(status.message()), HasSubstr(":2: ")) << line;
    EXPECT_THAT(std::string(status.message()), HasSubstr(says)) << line;
  }
  EXPECT_THAT(std::string(ReadDataset(WriteFile("empty.jsonl", "\n"), 0).status().message()),
              HasSubstr("has no prompts"));
  EXPECT_FALSE(ReadDataset("/nonexistent/x.jsonl", 0).ok());
}

TEST(SyntheticTest, LengthsPrefixAndSeedAreAsAsked) {
  const SyntheticSpec spec{.count = 50,
                           .input_len = 20,
                           .input_jitter = 5,
                           .output_len = 8,
                           .output_jitter = 2,
                           .prefix_len = 6,
                           .vocab = 100,
                           .seed = 7};
  const std::vector<Prompt> a = SyntheticPrompts(spec), b = SyntheticPrompts(spec);
  ASSERT_EQ(a.size(), 50u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].token_ids, b[i].token_ids);
    EXPECT_GE(a[i].token_ids.size(), 15u);
    EXPECT_LE(a[i].token_ids.size(), 25u);
    EXPECT_GE(a[i].max_tokens, 6);
    EXPECT_LE(a[i].max_tokens, 10);
    EXPECT_TRUE(
        std::equal(a[0].token_ids.begin(), a[0].token_ids.begin() + 6, a[i].token_ids.begin()));
    for (int32_t id : a[i].token_ids) EXPECT_LT(id, 100);
  }
}

TEST(ArrivalTest, PoissonBurstsAndRamps) {
  std::mt19937_64 rng(3);
  const std::vector<double> poisson = ArrivalTimes({.rate = 50, .duration_s = 200}, rng);
  // 10000 expected; the count of a Poisson process has sd 100.
  EXPECT_NEAR(static_cast<double>(poisson.size()), 10000, 400);
  EXPECT_TRUE(std::is_sorted(poisson.begin(), poisson.end()));
  EXPECT_LT(poisson.back(), 200);
  EXPECT_EQ(ArrivalTimes({.rate = 50, .requests = 7}, rng).size(), 7u);
  const std::vector<double> bursts =
      ArrivalTimes({.burst = 3, .burst_period_s = 0.5, .duration_s = 1.2}, rng);
  EXPECT_EQ(bursts, (std::vector<double>{0, 0, 0, 0.5, 0.5, 0.5, 1, 1, 1}));
  absl::StatusOr<std::vector<Stage>> ramp = RampStages("1,2.5,4", 10, 8);
  ASSERT_TRUE(ramp.ok());
  ASSERT_EQ(ramp->size(), 3u);
  EXPECT_EQ((*ramp)[1].rate, 2.5);
  EXPECT_EQ((*ramp)[1].concurrency, 8);
  for (const char* bad : {"", "1,,2", "0", "-1", "x", "1e9"}) {
    EXPECT_EQ(RampStages(bad, 10, 0).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ReportTest, PercentilesLatenciesThroughputGoodputAndErrors) {
  const Percentiles p = Summarize({5, 1, 4, 2, 3, 6, 7, 8, 9, 10});
  EXPECT_EQ(p.p50, 5);
  EXPECT_EQ(p.p90, 9);
  EXPECT_EQ(p.p99, 10);
  EXPECT_EQ(p.max, 10);
  EXPECT_EQ(p.mean, 5.5);
  // Two good requests and one refused.
  std::vector<RequestRecord> records = {
      {.index = 0,
       .stage = 0,
       .start = 0,
       .first_token = 0.1,
       .end = 0.4,
       .token_times = {0.1, 0.2, 0.3, 0.4},
       .prompt_tokens = 3,
       .output_tokens = 4},
      {.index = 1,
       .stage = 0,
       .start = 1,
       .first_token = 1.5,
       .end = 2,
       .token_times = {1.5, 1.5, 2},
       .prompt_tokens = 5,
       .output_tokens = 3},
      {.index = 2, .stage = 0, .start = 1, .end = 1, .code = 8},
      {.index = 3,
       .stage = 1,
       .start = 5,
       .first_token = 6,
       .end = 7,
       .token_times = {6},
       .output_tokens = 1},
  };
  const StageReport r = Report(records, 0, 2.0, {.ttft_s = 0.2});
  EXPECT_EQ(r.requests, 3);
  EXPECT_EQ(r.succeeded, 2);
  EXPECT_EQ(r.errors.at("RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(r.output_tokens, 7);
  EXPECT_EQ(r.prompt_tokens, 8);
  EXPECT_DOUBLE_EQ(r.seconds, 2);
  EXPECT_DOUBLE_EQ(r.output_token_rate, 3.5);
  EXPECT_DOUBLE_EQ(r.goodput, 0.5);  // Only the first meets TTFT <= 0.2 s.
  EXPECT_EQ(r.ttft.count, 2);
  EXPECT_DOUBLE_EQ(r.ttft.max, 0.5);
  EXPECT_DOUBLE_EQ(r.tpot.max, 0.25);  // (2 - 1.5) / 2
  EXPECT_EQ(r.itl.count, 5);           // 3 gaps + 2 gaps.
  EXPECT_DOUBLE_EQ(r.itl.p50, 0.1);
  EXPECT_DOUBLE_EQ(r.e2e.max, 1);
  EXPECT_THAT(FormatReports({r}, {.ttft_s = 0.2}), HasSubstr("goodput 0.50 req/s"));
}

}  // namespace
}  // namespace dsv2::load
