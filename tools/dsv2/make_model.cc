// `dsv2 make-model`: a checkpoint in the published format at the real
// dimensions of DeepSeek-V2 or V2-Lite, with random bf16 weights, for
// benchmarks and load tests (4 Lite layers are about 5 GB).
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/status_macros.h"
#include "common/base/thread_pool.h"
#include "common/model/presets.h"
#include "common/model/safetensors_writer.h"
#include "common/model/weights.h"
#include "nlohmann/json.hpp"
#include "tools/dsv2/args.h"
#include "tools/dsv2/commands.h"

namespace dsv2::cli {
namespace {

// SplitMix64: a fast, well-mixed generator; one stream per block of values
// so that threads fill a tensor in any order with the same result.
uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Fills `out` with bf16 values: norms are 1, matrices uniform with standard
// deviation 1/sqrt(fan_in), so activations keep unit scale through the layers.
void FillTensor(const TensorSpec& spec, uint64_t seed, uint16_t* out) {
  const int64_t n = spec.numel();
  if (spec.shape.size() == 1) {
    std::fill(out, out + n, FloatToBF16(1.0f));
    return;
  }
  const float bound = std::sqrt(3.0f / static_cast<float>(spec.shape[1]));
  constexpr int64_t kBlock = 1 << 16;
  ThreadPool::Default().ParallelFor((n + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      uint64_t state = seed * 0x100000001b3ull + static_cast<uint64_t>(block);
      const int64_t stop = std::min(n, (block + 1) * kBlock);
      for (int64_t i = block * kBlock; i < stop; ++i) {
        const float unit = static_cast<float>(SplitMix(state) >> 40) * (1.0f / 16777216.0f);
        out[i] = FloatToBF16((2.0f * unit - 1.0f) * bound);
      }
    }
  });
}

}  // namespace

absl::Status MakeModel(std::span<const std::string> argv, std::ostream& out) {
  const std::vector<FlagSpec> flags = {
      {"preset", true, "lite (DeepSeek-V2-Lite) or v2 (DeepSeek-V2)"},
      {"layers", true, "number of decoder layers (default: the preset's)"},
      {"seed", true, "random seed (default 0)"},
      {"out", true, "output directory (created)"},
  };
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(std::string preset, args.Require("preset"));
  ASSIGN_OR_RETURN(std::string dir, args.Require("out"));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  ASSIGN_OR_RETURN(std::string preset_json, PresetConfigJson(preset));
  // The presets are built in and parse (config_test); the config parser
  // checks them, and --layers, like any config.json.
  ASSIGN_OR_RETURN(ModelConfig preset_config, ParseModelConfig(preset_json));
  nlohmann::json json = nlohmann::json::parse(preset_json, nullptr, /*allow_exceptions=*/false);
  ASSIGN_OR_RETURN(int64_t layers, args.GetInt("layers", preset_config.num_hidden_layers));
  if (layers < 1) return absl::InvalidArgumentError("--layers must be at least 1");
  json["num_hidden_layers"] = layers;
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(json.dump()));

  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", error.message()));
  {
    std::ofstream config_file(std::filesystem::path(dir) / "config.json");
    config_file << json.dump(2) << "\n";
    if (!config_file) return absl::InternalError(absl::StrCat("cannot write ", dir, "/config.json"));
  }
  const std::vector<TensorSpec> specs = ExpectedTensors(config);
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& spec : specs) tensors.push_back({spec.name, "BF16", spec.shape});
  const std::string path = (std::filesystem::path(dir) / "model.safetensors").string();
  DSV2_LOG(INFO) << "writing " << specs.size() << " tensors, "
                 << CountParameters(config).total * 2 / 1e9 << " GB, to " << path;
  RETURN_IF_ERROR(WriteSafetensors(
      path, tensors,
      [&](size_t index, char* buffer, int64_t) {
        FillTensor(specs[index], static_cast<uint64_t>(seed) * 1000003ull + index,
                   reinterpret_cast<uint16_t*>(buffer));
      },
      {{"format", "pt"}}));
  out << dir << "\n";
  return absl::OkStatus();
}

}  // namespace dsv2::cli
