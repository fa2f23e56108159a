// `dsv2 quantize`: a dsv2-int8 copy of a checkpoint (docs/performance.md,
// "8-bit weights"). Every linear layer's weight (IsQuantizable) becomes I8
// with its F32 "<name>_scale" tensor; everything else is copied as stored.
// Tensors stream one at a time from the input's mapping into the output
// shards, so memory stays at about the largest tensor.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "common/base/regular_file.h"
#include "common/base/status_macros.h"
#include "common/model/checkpoint.h"
#include "common/model/safetensors_writer.h"
#include "common/model/weights.h"
#include "common/tensor/q8.h"
#include "nlohmann/json.hpp"
#include "tools/dsv2/args.h"
#include "tools/dsv2/commands.h"

namespace dsv2::cli {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMaxConfigBytes = 1 << 20;

// One tensor of the output: a copy of `source`, or its int8 integers or
// scales when `spec` is set.
struct OutputTensor {
  enum Kind { kCopy, kInt8, kScales } kind = kCopy;
  const TensorInfo* source = nullptr;
  TensorToWrite tensor;
};

int64_t OutputBytes(const OutputTensor& t) {
  int64_t n = 1;
  for (int64_t d : t.tensor.shape) n *= d;
  return n * *SafetensorsElementSize(t.tensor.dtype_name);
}

// Quantizes row after row of `source` ([rows, cols], a float dtype), handing
// each row's integers and scales to `take`; false when a row is not finite.
template <typename Take>
bool QuantizeRows(const TensorInfo& source, Take&& take) {
  const int64_t rows = source.shape[0], cols = source.shape[1];
  std::vector<float> row(cols), scales(Q8Blocks(cols));
  std::vector<int8_t> q(cols);
  const int64_t row_bytes = cols * DTypeSize(*source.dtype);
  for (int64_t r = 0; r < rows; ++r) {
    ConvertToFloat(static_cast<const char*>(source.data) + r * row_bytes, *source.dtype, cols,
                   row.data());
    if (!QuantizeQ8(row.data(), cols, q.data(), scales.data())) return false;
    take(r, q.data(), scales.data());
  }
  return true;
}

// OUT must not be IN nor lie inside it (the output would be read as input).
bool Inside(const fs::path& out, const fs::path& in) {
  const fs::path relative = fs::weakly_canonical(out).lexically_relative(fs::weakly_canonical(in));
  return !relative.empty() && *relative.begin() != "..";
}

// The tokenizer and generation files travel with the weights; fixtures
// such as golden logits (which describe the float model) do not.
bool IsCompanionFile(const std::string& name) {
  return name.starts_with("tokenizer") || name == "generation_config.json" ||
         name == "special_tokens_map.json";
}

}  // namespace

absl::Status Quantize(std::span<const std::string> argv, std::ostream& out) {
  const std::vector<FlagSpec> flags = {
      {"model", true, "input model directory (config.json and safetensors, float weights)"},
      {"out", true, "output directory (created; must not hold a checkpoint already)"},
      {"shard-mb", true, "largest output shard in MB before a new one starts (default 4096)"},
  };
  ASSIGN_OR_RETURN(Args args, Args::Parse(argv, flags));
  ASSIGN_OR_RETURN(std::string in_dir, args.Require("model"));
  ASSIGN_OR_RETURN(std::string out_dir, args.Require("out"));
  ASSIGN_OR_RETURN(int64_t shard_mb, args.GetInt("shard-mb", 4096));
  constexpr int64_t kMaxShardMb = int64_t{1} << 20;  // 1 TiB: bounds shard_mb << 20.
  if (shard_mb < 1 || shard_mb > kMaxShardMb) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard-mb must be between 1 and ", kMaxShardMb, ", not ", shard_mb));
  }
  const int64_t shard_bytes = shard_mb << 20;

  ASSIGN_OR_RETURN(const std::string config_text,
                   ReadRegularFile(in_dir + "/config.json", kMaxConfigBytes));
  ASSIGN_OR_RETURN(const ModelConfig config, ParseModelConfig(config_text));
  if (config.int8_weights) {
    return absl::InvalidArgumentError(absl::StrCat(in_dir, " is already a dsv2-int8 checkpoint"));
  }
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(in_dir));
  RETURN_IF_ERROR(CheckCheckpointMatchesConfig(config, checkpoint));
  if (Inside(out_dir, in_dir)) {
    return absl::InvalidArgumentError(absl::StrCat("--out ", out_dir, " is inside --model ", in_dir,
                                                   "; choose another directory"));
  }
  std::error_code error;
  if (fs::exists(out_dir + "/config.json", error) ||
      fs::exists(out_dir + "/model.safetensors", error) ||
      fs::exists(out_dir + "/model.safetensors.index.json", error)) {
    return absl::InvalidArgumentError(absl::StrCat("--out ", out_dir, " already holds a model"));
  }
  fs::create_directories(out_dir, error);
  if (error)
    return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", error.message()));

  // What to write: every stored tensor, the quantizable ones as I8 + scales.
  std::set<std::string, std::less<>> quantizable;
  ForEachExpectedTensor(config, [&](const TensorSpec& spec) {
    if (IsQuantizable(spec)) quantizable.insert(spec.name);
    return true;
  });
  std::vector<std::vector<OutputTensor>> shards(1);
  int64_t filled = 0, total = 0;
  for (const std::string& name : checkpoint.TensorNames()) {
    const TensorInfo* info = checkpoint.Find(name);
    std::vector<OutputTensor> group;
    if (quantizable.contains(name)) {
      group.push_back({OutputTensor::kScales,
                       info,
                       {ScaleTensorName(name), "F32", {info->shape[0], Q8Blocks(info->shape[1])}}});
      group.push_back({OutputTensor::kInt8, info, {name, "I8", info->shape}});
    } else {
      group.push_back({OutputTensor::kCopy, info, {name, info->dtype_name, info->shape}});
    }
    int64_t bytes = 0;
    for (const OutputTensor& t : group) bytes += OutputBytes(t);
    if (filled > 0 && filled + bytes > shard_bytes) {
      shards.emplace_back();
      filled = 0;
    }
    for (OutputTensor& t : group) shards.back().push_back(std::move(t));
    filled += bytes;
    total += bytes;
  }

  // Each shard in decreasing element size, as the reference library lays
  // files out, so that the F32 scales start 4-byte aligned.
  const fs::path out_path(out_dir);
  nlohmann::json weight_map = nlohmann::json::object();
  std::optional<absl::Status> failure;
  for (size_t s = 0; s < shards.size(); ++s) {
    std::vector<OutputTensor>& shard = shards[s];
    std::stable_sort(shard.begin(), shard.end(), [](const OutputTensor& a, const OutputTensor& b) {
      return *SafetensorsElementSize(a.tensor.dtype_name) >
             *SafetensorsElementSize(b.tensor.dtype_name);
    });
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : absl::StrFormat("model-%05d-of-%05d.safetensors",
                                                                  s + 1, shards.size());
    std::vector<TensorToWrite> tensors;
    for (const OutputTensor& t : shard) {
      tensors.push_back(t.tensor);
      weight_map[t.tensor.name] = file;
    }
    DSV2_LOG(INFO) << "writing " << (out_path / file).string() << ": " << tensors.size()
                   << " tensors";
    RETURN_IF_ERROR(WriteSafetensors(
        (out_path / file).string(), tensors,
        [&](size_t index, char* buffer, int64_t num_bytes) {
          const OutputTensor& t = shard[index];
          if (t.kind == OutputTensor::kCopy) {
            std::memcpy(buffer, t.source->data, static_cast<size_t>(num_bytes));
            return;
          }
          const int64_t cols = t.source->shape[1], blocks = Q8Blocks(cols);
          const bool finite =
              QuantizeRows(*t.source, [&](int64_t r, const int8_t* q, const float* scales) {
                if (t.kind == OutputTensor::kInt8) {
                  std::memcpy(buffer + r * cols, q, static_cast<size_t>(cols));
                } else {
                  std::memcpy(buffer + r * blocks * 4, scales, static_cast<size_t>(blocks) * 4);
                }
              });
          if (!finite && !failure) {
            failure = absl::InvalidArgumentError(
                absl::StrCat("tensor '", t.source->name, "' in ", t.source->file,
                             " holds a non-finite value; it cannot be quantized"));
          }
        },
        {{"format", "pt"}}));
    if (failure) {
      fs::remove(out_path / file, error);
      return *failure;
    }
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total}}},
                                  {"weight_map", weight_map}};
    std::ofstream index_file(out_path / "model.safetensors.index.json");
    index_file << index.dump(2) << "\n";
    if (!index_file)
      return absl::InternalError(absl::StrCat("cannot write the index in ", out_dir));
  }
  for (const auto& entry : fs::directory_iterator(in_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || !IsCompanionFile(name)) continue;
    fs::copy_file(entry.path(), out_path / name, fs::copy_options::overwrite_existing, error);
    if (error)
      return absl::InternalError(absl::StrCat("cannot copy ", name, ": ", error.message()));
  }
  // config.json last: a directory without it is not mistaken for a model.
  nlohmann::json json = nlohmann::json::parse(config_text);
  json["quantization_config"] = {{"quant_method", "dsv2-int8"}, {"group_size", kQ8Block}};
  {
    std::ofstream config_file(out_path / "config.json");
    config_file << json.dump(2) << "\n";
    if (!config_file)
      return absl::InternalError(absl::StrCat("cannot write ", out_dir, "/config.json"));
  }
  DSV2_LOG(INFO) << absl::StrFormat("%s: %.3f GB of weights (%s: %.3f GB)", out_dir, total / 1e9,
                                    in_dir, checkpoint.total_bytes() / 1e9);
  out << out_dir << "\n";
  return absl::OkStatus();
}

}  // namespace dsv2::cli
