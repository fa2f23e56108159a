// The dsv2 tool run as a user runs it: a child process, its standard output
// (the product) and standard error (logs, errors) kept apart.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/tensor/npy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backends.h"
#include "nlohmann/json.hpp"
#include "tests/hostile_model.h"

namespace dsv2 {
namespace {

// A path of this test process's own under the test directory: ctest runs
// tests of this binary in parallel, so fixed names would clash.
std::string TestPath(const std::string& name) {
  return testing::TempDir() + "/dsv2_cli_" + std::to_string(getpid()) + "_" + name;
}

using ::testing::HasSubstr;
using ::testing::Not;

struct Result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// `env`: shell assignments before the command (VAR='value' ...).
Result RunDsv2(const std::string& args, const std::string& env = "") {
  // Per process and call: ctest runs tests of this binary in parallel.
  static int calls = 0;
  const std::string err_path =
      absl::StrCat(testing::TempDir(), "/dsv2_cli_stderr_", getpid(), "_", calls++);
  const std::string command = absl::StrCat(env, " ", DSV2_BINARY, " ", args, " 2>", err_path);
  Result result;
  FILE* pipe = popen(command.c_str(), "r");
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = ReadFile(err_path);
  std::remove(err_path.c_str());
  return result;
}

nlohmann::json Golden(const std::string& model_dir) {
  return nlohmann::json::parse(ReadFile(model_dir + "/golden.json"));
}

// The parameter is a model directory with golden fixtures (docs/golden.md).
class GoldenCliTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Name() const { return GetParam().substr(GetParam().rfind('/') + 1); }
};

// The golden model's greedy tokens, generated on `backend`.
void ExpectReferenceGreedyTokens(const std::string& model, const std::string& backend) {
  const nlohmann::json golden = Golden(model);
  const auto prompt = golden["prompt"].get<std::vector<int>>();
  const auto expected = golden["generated"].get<std::vector<int>>();
  const Result result = RunDsv2(absl::StrCat(
      "generate --backend ", backend, " --model ", model, " --tokens ", absl::StrJoin(prompt, ","),
      " --max-tokens ", expected.size(), " --ignore-eos --stats"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, absl::StrCat(absl::StrJoin(expected, " "), "\n"));
  EXPECT_THAT(result.err, HasSubstr("decode:"));
  EXPECT_THAT(result.err, HasSubstr("tokens/s"));
}

// The golden model's prefill logits, computed on `backend` (with `env` set),
// within `tolerance`; returns the command's standard error.
std::string ExpectReferenceLogits(const std::string& model, const std::string& backend,
                                  float tolerance, const std::string& env = "") {
  const nlohmann::json golden = Golden(model);
  const auto prompt = golden["prompt"].get<std::vector<int>>();
  const std::string name = model.substr(model.rfind('/') + 1);
  const std::string out = TestPath("logits_" + backend + "_" + name + ".npy");
  const Result result =
      RunDsv2(absl::StrCat("logits --backend ", backend, " --model ", model, " --tokens ",
                           absl::StrJoin(prompt, ","), " --out ", out),
              env);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  auto actual = ReadNpy(out);
  std::remove(out.c_str());
  auto expected = ReadNpy(model + "/prefill_logits.npy");
  EXPECT_TRUE(actual.ok()) << actual.status();
  EXPECT_TRUE(expected.ok()) << expected.status();
  if (actual.ok() && expected.ok()) {
    EXPECT_EQ(actual->shape, expected->shape);
    float worst = actual->data.size() == expected->data.size() ? 0 : INFINITY;
    for (size_t i = 0; i < actual->data.size() && i < expected->data.size(); ++i) {
      worst = std::max(worst, std::fabs(actual->data[i] - expected->data[i]));
    }
    EXPECT_LE(worst, tolerance);
  }
  return result.err;
}

// Why the CUDA backend cannot run here, or "" when it can.
std::string CudaUnavailable() {
  const absl::StatusOr<Backend*> cuda = BackendByName("cuda");
  return cuda.ok() ? "" : std::string(cuda.status().message());
}

TEST_P(GoldenCliTest, GenerateStreamsTheReferenceGreedyTokens) {
  ExpectReferenceGreedyTokens(GetParam(), "cpu");
}

TEST_P(GoldenCliTest, LogitsWritesTheReferenceLogitsAsNpy) {
  ExpectReferenceLogits(GetParam(), "cpu", 1e-3f);
}

// DSV2_CPU_ISA naming no instruction set this CPU runs: a warning naming the
// value and the kernels used instead, and the reference logits.
TEST(Dsv2CliTest, UnknownCpuIsaWarnsAndUsesTheDefault) {
  for (const std::string value : {"tpu", "", "AVX512", "avx512 ", "\\xff\\xfe", "amx;avx2"}) {
    SCOPED_TRACE(value);
    const std::string err =
        ExpectReferenceLogits("tests/data/tiny-lite", "cpu", 1e-3f,
                              absl::StrCat("DSV2_CPU_ISA=\"$(printf '", value, "')\""));
    EXPECT_THAT(err, HasSubstr("is not an instruction set this CPU runs"));
    EXPECT_THAT(err, testing::ContainsRegex("; using (amx|avx512|avx2|portable)"));
    EXPECT_THAT(err, testing::ContainsRegex("on cpu, (amx|avx512|avx2|portable) kernels"));
  }
}

// DSV2_CPU_ISA naming one this CPU runs (every CPU runs the portable loops):
// the load line names it, no warning, and the reference logits.
TEST(Dsv2CliTest, CpuIsaIsNamedInTheLoadLine) {
  const std::string err =
      ExpectReferenceLogits("tests/data/tiny-lite", "cpu", 1e-3f, "DSV2_CPU_ISA=portable");
  EXPECT_THAT(err, HasSubstr("on cpu, portable kernels"));
  EXPECT_THAT(err, Not(HasSubstr("DSV2_CPU_ISA")));
}

// The same on the GPU (docs/gpu.md): its matrix products carry activations
// as two bf16 halves (about 16 significant bits) in calls of up to 64 rows,
// all of these prompts' calls, hence a tolerance a few times the CPU's; the
// greedy tokens must still be the reference's.
TEST_P(GoldenCliTest, CudaGeneratesTheReferenceGreedyTokens) {
  if (const std::string why = CudaUnavailable(); !why.empty()) GTEST_SKIP() << why;
  ExpectReferenceGreedyTokens(GetParam(), "cuda");
}

TEST_P(GoldenCliTest, CudaLogitsMatchTheReference) {
  if (const std::string why = CudaUnavailable(); !why.empty()) GTEST_SKIP() << why;
  ExpectReferenceLogits(GetParam(), "cuda", 5e-3f);
}

std::string GoldenName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param.substr(info.param.rfind('/') + 1);
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

INSTANTIATE_TEST_SUITE_P(GoldenModels, GoldenCliTest,
                         ::testing::Values("tests/data/tiny-v2", "tests/data/tiny-lite",
                                           "tests/data/tiny-eps", "models/demo-v2"),
                         GoldenName);

TEST(CliTest, InspectPublishedConfigs) {
  Result v2 = RunDsv2("inspect --config common/model/presets/deepseek-v2.json");
  ASSERT_EQ(v2.exit_code, 0) << v2.err;
  EXPECT_THAT(v2.out, HasSubstr("235.74B total"));
  EXPECT_THAT(v2.out, HasSubstr("34,560 elements"));
  Result lite = RunDsv2("inspect --config common/model/presets/deepseek-v2-lite.json");
  ASSERT_EQ(lite.exit_code, 0) << lite.err;
  EXPECT_THAT(lite.out, HasSubstr("15.71B total"));
  EXPECT_THAT(lite.out, HasSubstr("2.45B per token"));
  EXPECT_THAT(lite.out, HasSubstr("15,552 elements"));
}

TEST(CliTest, BadInputGetsOneClearLineAndNonZeroExit) {
  Result bad_token =
      RunDsv2("generate --model tests/data/tiny-lite --tokens 0,99999 --max-tokens 2");
  EXPECT_EQ(bad_token.exit_code, 1);
  EXPECT_THAT(bad_token.err, HasSubstr("token id 99999 at index 1 is outside the vocabulary"));
  EXPECT_EQ(bad_token.out, "");
  Result typo = RunDsv2("generate --modle tests/data/tiny-lite");
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_THAT(typo.err, HasSubstr("unknown flag --modle"));
  Result too_long = RunDsv2("generate --model tests/data/tiny-lite --tokens 1 --max-tokens 500");
  EXPECT_EQ(too_long.exit_code, 1);
  EXPECT_THAT(too_long.err, HasSubstr("exceeds the context limit of 128"));
  Result unknown = RunDsv2("frobnicate");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.err, HasSubstr("unknown command 'frobnicate'"));
  Result backend = RunDsv2("generate --backend tpu --model tests/data/tiny-lite --tokens 1");
  EXPECT_EQ(backend.exit_code, 1);
  EXPECT_THAT(backend.err, HasSubstr("--backend: unknown backend 'tpu' (cpu or cuda)"));
  EXPECT_EQ(backend.out, "");
  for (const std::string bias : {"5", "x:1", "5:", "5:up", "99999999999:1"}) {
    Result bad = RunDsv2("generate --model tests/data/tiny-lite --tokens 1 --logit-bias " + bias);
    EXPECT_EQ(bad.exit_code, 1) << bias;
    EXPECT_THAT(bad.err,
                HasSubstr("--logit-bias wants ID:BIAS (e.g. 42:-100), got '" + bias + "'"));
  }
  Result far_bias = RunDsv2("generate --model tests/data/tiny-lite --tokens 1 --logit-bias 5:1e9");
  EXPECT_EQ(far_bias.exit_code, 1);
  EXPECT_THAT(far_bias.err, HasSubstr("logit_bias of token id 5 must be in [-100, 100]"));
  for (const std::string garbage : {"''", "CPU", "cuda0", "'\xff\xfe'"}) {
    Result bad = RunDsv2("logits --backend " + garbage +
                         " --model tests/data/tiny-lite --tokens 1 "
                         "--out /dev/null");
    EXPECT_EQ(bad.exit_code, 1) << garbage;
    EXPECT_THAT(bad.err, HasSubstr("--backend: unknown backend")) << garbage;
  }
}

// Where CUDA cannot run (a build without it, a machine without a GPU),
// --backend cuda is one line saying why, and nothing is written.
TEST(CliTest, CudaBackendWhereItCannotRunSaysWhy) {
  const std::string why = CudaUnavailable();
  if (why.empty()) GTEST_SKIP() << "the CUDA backend runs here";
  const std::string out = TestPath("cuda_unavailable.npy");
  Result cuda =
      RunDsv2("logits --backend cuda --model tests/data/tiny-lite --tokens 1 --out " + out);
  EXPECT_EQ(cuda.exit_code, 1);
  EXPECT_THAT(cuda.err, HasSubstr("--backend: " + why));
  EXPECT_EQ(cuda.out, "");
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(CliTest, TruncatedCheckpointIsRejectedNotCrashed) {
  const std::string dir = TestPath("truncated-model");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file("tests/data/tiny-lite/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  const std::string weights = ReadFile("tests/data/tiny-lite/model.safetensors");
  std::ofstream(dir + "/model.safetensors", std::ios::binary)
      .write(weights.data(), static_cast<std::streamsize>(weights.size() / 2));
  Result result = RunDsv2(absl::StrCat("generate --model ", dir, " --tokens 1,2"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("truncated"));
}

TEST(CliTest, MakeModelWritesAPublishedFormatCheckpointThatRuns) {
  // One V2-Lite layer at the real dimensions: about 1 GB.
  const std::string dir = TestPath("lite-1-layer");
  Result made = RunDsv2(absl::StrCat("make-model --preset lite --layers 1 --seed 3 --out ", dir));
  ASSERT_EQ(made.exit_code, 0) << made.err;
  Result inspect = RunDsv2(absl::StrCat("inspect --model ", dir));
  EXPECT_THAT(inspect.out, HasSubstr("1 (1 dense, 0 MoE)"));
  EXPECT_THAT(inspect.out, HasSubstr("2048 / 102400"));
  Result generated = RunDsv2(
      absl::StrCat("generate --model ", dir, " --tokens 100000,5,6 --max-tokens 3 --ignore-eos"));
  EXPECT_EQ(generated.exit_code, 0) << generated.err;
  EXPECT_EQ(std::vector<std::string>(absl::StrSplit(generated.out, ' ')).size(), 3u)
      << generated.out;
  std::filesystem::remove_all(dir);
}

// `dsv2 quantize` writes a dsv2-int8 checkpoint that loads and runs: one
// file, or shards with an index when --shard-mb cuts it; the tokenizer comes
// along, the golden fixtures of the float model do not.
TEST(CliQuantizeTest, QuantizedModelLoadsAndGenerates) {
  const std::string lite = TestPath("lite-int8");
  std::filesystem::remove_all(lite);
  Result made = RunDsv2(absl::StrCat("quantize --model tests/data/tiny-lite --out ", lite));
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_EQ(made.out, lite + "\n");
  const nlohmann::json config = testutil::ReadJsonFile(lite + "/config.json");
  EXPECT_EQ(config["quantization_config"],
            (nlohmann::json{{"quant_method", "dsv2-int8"}, {"group_size", 32}}));
  EXPECT_TRUE(std::filesystem::exists(lite + "/tokenizer.json"));
  EXPECT_FALSE(std::filesystem::exists(lite + "/golden.json"));
  // 1 + 1/8 bytes per quantized weight against 2; the embedding (a third of
  // this model) stays bf16.
  EXPECT_LT(std::filesystem::file_size(lite + "/model.safetensors"),
            std::filesystem::file_size("tests/data/tiny-lite/model.safetensors") * 3 / 4);
  Result generated = RunDsv2(
      absl::StrCat("generate --model ", lite, " --prompt hello --max-tokens 4 --ignore-eos"));
  EXPECT_EQ(generated.exit_code, 0) << generated.err;
  Result again = RunDsv2(absl::StrCat("quantize --model tests/data/tiny-lite --out ", lite));
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.err, HasSubstr("already holds a model"));
  Result twice = RunDsv2(absl::StrCat("quantize --model ", lite, " --out ", lite, "-2"));
  EXPECT_EQ(twice.exit_code, 1);
  EXPECT_THAT(twice.err, HasSubstr("is already a dsv2-int8 checkpoint"));

  const std::string v2 = TestPath("v2-int8-shards");
  std::filesystem::remove_all(v2);
  made = RunDsv2(absl::StrCat("quantize --model tests/data/tiny-v2 --shard-mb 1 --out ", v2));
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_TRUE(std::filesystem::exists(v2 + "/model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(v2 + "/model-00002-of-00002.safetensors"));
  generated = RunDsv2(absl::StrCat("generate --model ", v2,
                                   " --tokens 5,6,7 --max-tokens 4 "
                                   "--ignore-eos --weight-check full"));
  EXPECT_EQ(generated.exit_code, 0) << generated.err;
  EXPECT_EQ(std::vector<std::string>(absl::StrSplit(generated.out, ' ')).size(), 4u);
  std::filesystem::remove_all(lite);
  std::filesystem::remove_all(v2);
}

TEST(CliQuantizeTest, BadInputsAreOneLine) {
  Result missing = RunDsv2("quantize --model /nonexistent/model --out " + TestPath("q-missing"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("dsv2 quantize: "));
  EXPECT_THAT(missing.err, HasSubstr("/nonexistent/model/config.json"));

  const std::string model = testutil::CopyModel("tests/data/tiny-lite", "quantize_inside");
  Result inside = RunDsv2("quantize --model " + model + " --out " + model + "/int8");
  EXPECT_EQ(inside.exit_code, 1);
  EXPECT_THAT(inside.err, HasSubstr("is inside --model"));
  EXPECT_FALSE(std::filesystem::exists(model + "/int8"));
  Result same = RunDsv2("quantize --model " + model + " --out " + model + "/.");
  EXPECT_EQ(same.exit_code, 1);
  EXPECT_THAT(same.err, HasSubstr("is inside --model"));
  // Shard sizes out of range (one would overflow the byte count) or not a number.
  for (const std::string shard : {"0", "-5", "1048577", "9223372036854775807"}) {
    Result bad = RunDsv2("quantize --model " + model + " --shard-mb " + shard + " --out " +
                         TestPath("q-shard"));
    EXPECT_EQ(bad.exit_code, 1) << shard;
    EXPECT_THAT(bad.err, HasSubstr("--shard-mb must be between 1 and 1048576, not " + shard));
    EXPECT_FALSE(std::filesystem::exists(TestPath("q-shard"))) << shard;
  }
  for (const std::string shard : {"4k", "", "99999999999999999999"}) {
    Result bad = RunDsv2("quantize --model " + model + " --shard-mb '" + shard + "' --out " +
                         TestPath("q-shard"));
    EXPECT_EQ(bad.exit_code, 1) << shard;
    EXPECT_THAT(bad.err, HasSubstr("--shard-mb")) << shard;
    EXPECT_FALSE(std::filesystem::exists(TestPath("q-shard"))) << shard;
  }

  // A weight that cannot be quantized: the tensor and file are named, and
  // no partial model is left behind.
  testutil::PoisonBf16(model, "model.layers.1.mlp.experts.4.up_proj.weight", 30);
  const std::string out = TestPath("q-nan");
  Result nan = RunDsv2("quantize --model " + model + " --out " + out);
  EXPECT_EQ(nan.exit_code, 1);
  EXPECT_THAT(
      nan.err,
      HasSubstr("dsv2 quantize: tensor 'model.layers.1.mlp.experts.4.up_proj.weight' in " + model +
                "/model.safetensors holds a non-finite value; it cannot be "
                "quantized\n"));
  EXPECT_FALSE(std::filesystem::exists(out + "/model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(out + "/config.json"));

  // A truncated checkpoint is refused as the loader refuses it.
  const std::string truncated = testutil::CopyModel("tests/data/tiny-lite", "quantize_truncated");
  std::filesystem::resize_file(truncated + "/model.safetensors", 1000);
  Result cut = RunDsv2("quantize --model " + truncated + " --out " + TestPath("q-cut"));
  EXPECT_EQ(cut.exit_code, 1);
  EXPECT_THAT(cut.err, HasSubstr(truncated + "/model.safetensors"));
  std::filesystem::remove_all(model);
  std::filesystem::remove_all(truncated);
}

// Tokenizer commands. Expected ids come from Hugging Face tokenizers
// (tests/data/tokenizer/expected/tiny.jsonl, tools/golden/make_tokenizer_golden.py).

std::string WriteTemp(const std::string& name, const std::string& content) {
  const std::string path = TestPath(name);
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

std::string IdList(const nlohmann::json& ids) {
  return absl::StrJoin(ids.get<std::vector<int>>(), ",");
}

TEST(CliTokenizerTest, TokenizeAndDetokenizeMatchHuggingFace) {
  std::ifstream corpus("tests/data/tokenizer/corpus.jsonl"),
      expected("tests/data/tokenizer/expected/tiny.jsonl");
  std::vector<nlohmann::json> texts, ids;
  for (std::string line; std::getline(corpus, line);) texts.push_back(nlohmann::json::parse(line));
  for (std::string line; std::getline(expected, line);) ids.push_back(nlohmann::json::parse(line));
  int checked = 0;
  for (size_t k = 1; k < ids.size() && checked < 12; k += 97) {
    if (!ids[k].contains("i") || !texts[ids[k]["i"].get<size_t>()].contains("text")) continue;
    const std::string text = texts[ids[k]["i"].get<size_t>()]["text"];
    const std::string file = WriteTemp("tokenize_input.txt", text);
    Result tokens = RunDsv2(
        "tokenize --tokenizer tests/data/tiny-v2/tokenizer.json --no-special-tokens --file " +
        file);
    ASSERT_EQ(tokens.exit_code, 0) << tokens.err;
    EXPECT_EQ(tokens.out, "[" + IdList(ids[k]["ids"]) + "]\n") << text;
    Result back =
        RunDsv2("detokenize --tokenizer tests/data/tiny-v2 --ids " + IdList(ids[k]["ids"]));
    ASSERT_EQ(back.exit_code, 0) << back.err;
    EXPECT_EQ(back.out, text);
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

TEST(CliTokenizerTest, BadTokenizerInputGetsOneClearLine) {
  Result both = RunDsv2("tokenize --tokenizer tests/data/tiny-v2 --text a --file b");
  EXPECT_EQ(both.exit_code, 1);
  EXPECT_THAT(both.err, HasSubstr("give exactly one of --text and --file"));
  const std::string bad = WriteTemp("bad_utf8.txt", "caf\xE9");
  Result invalid = RunDsv2("tokenize --tokenizer tests/data/tiny-v2 --file " + bad);
  EXPECT_EQ(invalid.exit_code, 1);
  EXPECT_THAT(invalid.err, HasSubstr("not valid UTF-8"));
  Result replaced =
      RunDsv2("tokenize --tokenizer tests/data/tiny-v2 --replace-invalid-utf8 --file " + bad);
  EXPECT_EQ(replaced.exit_code, 0) << replaced.err;
  Result unknown = RunDsv2("detokenize --tokenizer tests/data/tiny-v2 --ids 5,99999");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err,
              HasSubstr("token id 99999 at index 1 is not below the vocabulary size 3200"));
  EXPECT_EQ(unknown.out, "");
  Result missing = RunDsv2("tokenize --tokenizer tests/data/no-such.json --text a");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("cannot open tokenizer file tests/data/no-such.json"));
}

// A model with more vocabulary rows than its tokenizer has tokens (the last
// 400 of tiny-v2's 3,200 cut from its tokenizer): generation never emits a
// row the tokenizer lacks — without a tokenizer the same request does — and
// detokenize reads such a row as nothing, as the servers' text does.
TEST(CliTokenizerTest, PaddedVocabularyRowsAreNeverGeneratedAndDecodeToNothing) {
  constexpr int32_t kTokens = 2800;
  const std::string padded = testutil::CopyModel("tests/data/tiny-v2", "padded_vocab");
  testutil::TruncateTokenizer(padded, kTokens);
  const std::string bare = testutil::CopyModel("tests/data/tiny-v2", "padded_vocab_bare");
  std::filesystem::remove(bare + "/tokenizer.json");
  auto ids_of = [](const std::string& out) {
    std::vector<int32_t> ids;
    std::istringstream in(out);
    for (int32_t id; in >> id;) ids.push_back(id);
    return ids;
  };
  const std::string request = " --tokens 0,40,41,42,7,300 --max-tokens 96 --ignore-eos";
  const Result free = RunDsv2("generate --model " + bare + request);
  ASSERT_EQ(free.exit_code, 0) << free.err;
  const std::vector<int32_t> unmasked = ids_of(free.out);
  ASSERT_EQ(unmasked.size(), 96u);
  EXPECT_GE(*std::max_element(unmasked.begin(), unmasked.end()), kTokens)
      << "the request never reaches a padded row: it tests nothing";
  const Result masked = RunDsv2("generate --model " + padded + request);
  ASSERT_EQ(masked.exit_code, 0) << masked.err;
  const std::vector<int32_t> ids = ids_of(masked.out);
  ASSERT_EQ(ids.size(), 96u);
  for (int32_t id : ids) EXPECT_LT(id, kTokens);
  EXPECT_THAT(masked.err, HasSubstr("400 of the model's 3200 vocabulary rows have no token"));

  const Result text = RunDsv2("generate --model " + padded + " --prompt 'Hello' --max-tokens 48");
  EXPECT_EQ(text.exit_code, 0) << text.err;
  const Result pad = RunDsv2("detokenize --tokenizer " + padded + " --ids 5,3199,6");
  ASSERT_EQ(pad.exit_code, 0) << pad.err;
  EXPECT_EQ(pad.out, RunDsv2("detokenize --tokenizer " + padded + " --ids 5,6").out);
  const Result beyond = RunDsv2("detokenize --tokenizer " + padded + " --ids 3200");
  EXPECT_EQ(beyond.exit_code, 1);
  EXPECT_THAT(beyond.err,
              HasSubstr("token id 3200 at index 0 is not below the vocabulary size 3200"));
}

class PromptCliTest : public ::testing::TestWithParam<std::string> {};

// `generate --prompt` must produce the text of what `generate --tokens`
// produces for the prompt's ids: BOS (add_bos_token) + the text's ids, or
// the rendered chat template with --chat.
TEST_P(PromptCliTest, GeneratePromptStreamsTheTextOfTheGeneratedIds) {
  const std::string model = GetParam();
  for (bool chat : {false, true}) {
    const std::string prompt = "The capital of France is";
    const std::string rendered =
        chat ? "<\xEF\xBD\x9C"
               "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>User: " +
                   prompt + "\n\nAssistant:"
             : prompt;
    Result ids = RunDsv2("tokenize --tokenizer " + model + " --no-special-tokens --file " +
                         WriteTemp("prompt.txt", rendered));
    ASSERT_EQ(ids.exit_code, 0) << ids.err;
    std::vector<int> prompt_ids = nlohmann::json::parse(ids.out).get<std::vector<int>>();
    if (!chat) prompt_ids.insert(prompt_ids.begin(), 0);  // add_bos_token, bos id 0.
    Result by_ids = RunDsv2("generate --model " + model + " --tokens " +
                            absl::StrJoin(prompt_ids, ",") + " --max-tokens 12 --ignore-eos");
    ASSERT_EQ(by_ids.exit_code, 0) << by_ids.err;
    std::string generated = by_ids.out.substr(0, by_ids.out.size() - 1);
    absl::StrReplaceAll({{" ", ","}}, &generated);
    Result text =
        RunDsv2("detokenize --skip-special-tokens --tokenizer " + model + " --ids " + generated);
    ASSERT_EQ(text.exit_code, 0) << text.err;
    Result by_prompt = RunDsv2("generate --model " + model + " --prompt '" + prompt + "'" +
                               (chat ? " --chat" : "") + " --max-tokens 12 --ignore-eos --stats");
    ASSERT_EQ(by_prompt.exit_code, 0) << by_prompt.err;
    EXPECT_EQ(by_prompt.out, text.out) << (chat ? "chat" : "plain");
    EXPECT_THAT(by_prompt.err, HasSubstr("tokens/s"));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, PromptCliTest,
                         ::testing::Values("tests/data/tiny-v2", "tests/data/tiny-lite",
                                           "models/demo-v2"),
                         GoldenName);

TEST(CliTokenizerTest, GeneratePromptNeedsATokenizer) {
  const std::string dir = TestPath("model-without-tokenizer");
  std::filesystem::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors"}) {
    std::filesystem::copy_file(std::string("tests/data/tiny-lite/") + f, dir + "/" + f,
                               std::filesystem::copy_options::overwrite_existing);
  }
  Result result = RunDsv2("generate --model " + dir + " --prompt hi --max-tokens 2");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("has no tokenizer.json"));
  Result chat_alone = RunDsv2("generate --model tests/data/tiny-lite --tokens 1 --chat");
  EXPECT_EQ(chat_alone.exit_code, 1);
  EXPECT_THAT(chat_alone.err, HasSubstr("--chat needs --prompt"));
  Result both = RunDsv2("generate --model tests/data/tiny-lite --tokens 1 --prompt hi");
  EXPECT_EQ(both.exit_code, 1);
  EXPECT_THAT(both.err, HasSubstr("exactly one of --tokens and --prompt"));
}

// Hostile model directories (the attacks), as a user meets them:
// one line on standard error, exit status 1, nothing on standard output.

TEST(CliHostileModelTest, AMillionLayersIsOneLineNotAnAbortOrGigabytes) {
  const std::string dir = testutil::CopyModel("tests/data/tiny-lite", "million_layers");
  testutil::SetConfigField(dir, "num_hidden_layers", 1000000);
  const std::string expected = dir +
                               "/config.json: config field 'num_hidden_layers' = 1000000 is out "
                               "of range [1, 512]\n";
  // Used to abort with std::bad_alloc (rc 134).
  Result inspect = RunDsv2("inspect --model " + dir);
  EXPECT_EQ(inspect.exit_code, 1);
  EXPECT_EQ(inspect.err, "dsv2 inspect: " + expected);
  EXPECT_EQ(inspect.out, "");
  // Used to allocate gigabytes for the tensor list before failing.
  Result generate = RunDsv2("generate --model " + dir + " --tokens 1,2 --max-tokens 1");
  EXPECT_EQ(generate.exit_code, 1);
  EXPECT_EQ(generate.err, "dsv2 generate: " + expected);
}

TEST(CliHostileModelTest, FifoModelFilesAreRefusedNotWaitedOn) {
  // dsv2_cli_test has a ctest TIMEOUT: a regression hangs until it fires.
  for (const char* file : {"model.safetensors", "config.json", "tokenizer.json"}) {
    const std::string dir = testutil::CopyModel("tests/data/tiny-lite", "fifo_model");
    std::filesystem::remove(dir + "/" + file);
    ASSERT_EQ(mkfifo((dir + "/" + file).c_str(), 0600), 0);
    Result result = RunDsv2("generate --model " + dir + " --tokens 1,2 --max-tokens 1");
    EXPECT_EQ(result.exit_code, 1) << file;
    // The last line of standard error (loading the weights logs before the
    // tokenizer is read).
    EXPECT_THAT(result.err, ::testing::EndsWith("dsv2 generate: " + dir + "/" + file +
                                                " is a FIFO (named pipe), not a regular file\n"));
    EXPECT_EQ(result.out, "");
  }
  const std::string dir = testutil::CopyModel("tests/data/tiny-lite", "dir_model");
  std::filesystem::remove(dir + "/config.json");
  std::filesystem::create_directory(dir + "/config.json");
  Result inspect = RunDsv2("inspect --model " + dir);
  EXPECT_EQ(inspect.exit_code, 1);
  EXPECT_EQ(inspect.err,
            "dsv2 inspect: " + dir + "/config.json is a directory, not a regular file\n");
}

// The tokenizer.json: a JSON value of an unexpected type made
// `dsv2 tokenize` abort (rc 134) with an uncaught nlohmann exception.
TEST(CliHostileModelTest, TokenizerJsonOfTheWrongTypesIsOneLine) {
  nlohmann::json tokenizer = testutil::ReadJsonFile("tests/data/tiny-v2/tokenizer.json");
  tokenizer["post_processor"] = {{"type", "TemplateProcessing"},
                                 {"single", {{{"Sequence", {{"id", 5}, {"type_id", 0}}}}}},
                                 {"special_tokens", nlohmann::json::object()}};
  const std::string path = WriteTemp("wrong_types_tokenizer.json", tokenizer.dump());
  Result result = RunDsv2("tokenize --tokenizer " + path + " --text hi");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.err,
            "dsv2 tokenize: " + path +
                ": post_processor.single[0].Sequence.id must be a string, got number\n");
  EXPECT_EQ(result.out, "");
}

// NaN weights. A NaN the load-time check sees is named at load; one it does
// not (the embedding, under the default cheap check) reaches the router, and
// generate fails there naming the layer — it used to print garbage tokens
// and exit 0.
TEST(CliHostileModelTest, NanWeightsFailGenerateWithTheCause) {
  const std::string embed = testutil::CopyModel("tests/data/tiny-lite", "nan_embed_cli");
  testutil::PoisonBf16(embed, "model.embed_tokens.weight", 0);  // Token 0.
  const std::string args = " --tokens 0,5,6 --max-tokens 4 --ignore-eos";
  Result cheap = RunDsv2("generate --model " + embed + args);
  EXPECT_EQ(cheap.exit_code, 1);
  EXPECT_THAT(cheap.err, HasSubstr("dsv2 generate: layer 1: non-finite router scores for token 0"));
  EXPECT_EQ(cheap.out, "");
  Result full = RunDsv2("generate --weight-check full --model " + embed + args);
  EXPECT_EQ(full.exit_code, 1);
  EXPECT_EQ(full.err, "dsv2 generate: tensor 'model.embed_tokens.weight' in " + embed +
                          "/model.safetensors holds a non-finite value (nan) at [0, 0]; the "
                          "weights are corrupt\n");
  Result logits = RunDsv2("logits --weight-check=full --model " + embed + " --tokens 0,5 --out " +
                          TestPath("nan_logits.npy"));
  EXPECT_EQ(logits.exit_code, 1);
  EXPECT_THAT(logits.err, HasSubstr("holds a non-finite value (nan) at [0, 0]"));

  const std::string router = testutil::CopyModel("tests/data/tiny-lite", "nan_router_cli");
  testutil::PoisonBf16(router, "model.layers.2.mlp.gate.weight", 1, 0x7F80);  // +inf
  Result at_load = RunDsv2("generate --model " + router + args);
  EXPECT_EQ(at_load.exit_code, 1);
  EXPECT_THAT(at_load.err,
              HasSubstr("tensor 'model.layers.2.mlp.gate.weight' in " + router +
                        "/model.safetensors holds a non-finite value (inf) at [0, 1]"));
  Result unchecked = RunDsv2("generate --weight-check off --model " + router + args);
  EXPECT_EQ(unchecked.exit_code, 1);
  EXPECT_THAT(unchecked.err, HasSubstr("layer 2: non-finite router scores"));
  Result bad_flag = RunDsv2("generate --weight-check paranoid --model " + router + args);
  EXPECT_EQ(bad_flag.exit_code, 1);
  EXPECT_EQ(bad_flag.err,
            "dsv2 generate: --weight-check must be off, cheap or full, not 'paranoid'\n");
}

// --max-tokens far beyond the context: `generate` used to size its KV cache
// for the request before the engine checked it — terabytes, and an abort on
// std::bad_alloc (rc 134).
TEST(CliHostileModelTest, HugeMaxTokensIsTheContextErrorNotAnAllocation) {
  Result result =
      RunDsv2("generate --model tests/data/tiny-lite --tokens 1 --max-tokens 4000000000");
  EXPECT_EQ(result.exit_code, 1);
  // The last line of standard error, after the load's logs.
  EXPECT_THAT(result.err, ::testing::EndsWith("\ndsv2 generate: prompt (1 tokens) + max_tokens "
                                              "(4000000000) exceeds the context limit of 128 "
                                              "tokens\n"));
}

}  // namespace
}  // namespace dsv2
