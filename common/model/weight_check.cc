#include "common/model/weight_check.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/thread_pool.h"
#include "common/tensor/dtype.h"

namespace dsv2 {
namespace {

// An IEEE value is NaN or infinite exactly when its exponent bits are all
// ones, so the scan compares bits and never converts. `Bits` is the
// unsigned integer of the storage width; `kExponent` the exponent mask.
template <typename Bits, Bits kExponent>
std::optional<int64_t> FindAllOnesExponent(const void* data, int64_t begin, int64_t end) {
  const char* bytes = static_cast<const char*>(data);
  // Blocks of branch-free OR-reduction (which vectorizes), then the exact
  // element in the rare block that has one.
  constexpr int64_t kBlock = 1024;
  for (int64_t block = begin; block < end; block += kBlock) {
    const int64_t stop = std::min(end, block + kBlock);
    bool any = false;
    for (int64_t i = block; i < stop; ++i) {
      Bits v;
      std::memcpy(&v, bytes + i * sizeof(Bits), sizeof(Bits));  // Data may be unaligned.
      any |= (v & kExponent) == kExponent;
    }
    if (!any) continue;
    for (int64_t i = block; i < stop; ++i) {
      Bits v;
      std::memcpy(&v, bytes + i * sizeof(Bits), sizeof(Bits));
      if ((v & kExponent) == kExponent) return i;
    }
  }
  return std::nullopt;
}

// "[3, 17]" for element 209 of shape [12, 64].
std::string Coordinates(const std::vector<int64_t>& shape, int64_t index) {
  std::vector<int64_t> at(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 0) continue;
    at[d] = index % shape[d];
    index /= shape[d];
  }
  return absl::StrCat("[", absl::StrJoin(at, ", "), "]");
}

// The value of element `index`, for the message: "nan", "inf" or "-inf".
std::string ValueName(const TensorInfo& tensor, int64_t index) {
  double value = 0;
  const char* bytes = static_cast<const char*>(tensor.data);
  if (tensor.dtype_name == "F64") {
    std::memcpy(&value, bytes + index * 8, 8);
  } else if (tensor.dtype) {
    const int64_t size = DTypeSize(*tensor.dtype);
    float f;
    ConvertToFloat(bytes + index * size, *tensor.dtype, 1, &f);
    value = f;
  }
  if (std::isnan(value)) return "nan";
  return value > 0 ? "inf" : "-inf";
}

// Elements per unit of parallel work: big tensors are split so that threads
// share them.
constexpr int64_t kChunkElements = int64_t{1} << 22;

}  // namespace

absl::StatusOr<WeightCheck> ParseWeightCheck(std::string_view name) {
  if (name == "off") return WeightCheck::kOff;
  if (name == "cheap") return WeightCheck::kCheap;
  if (name == "full") return WeightCheck::kFull;
  return absl::InvalidArgumentError(
      absl::StrCat("must be off, cheap or full, not '", std::string(name), "'"));
}

const char* WeightCheckName(WeightCheck check) {
  switch (check) {
    case WeightCheck::kOff:
      return "off";
    case WeightCheck::kCheap:
      return "cheap";
    case WeightCheck::kFull:
      return "full";
  }
  return "?";
}

bool IsCheapCheckTensor(std::string_view name) {
  return name.ends_with("layernorm.weight") || name == "model.norm.weight" ||
         name.ends_with(".mlp.gate.weight") || name.ends_with(".mlp.gate.e_score_correction_bias");
}

std::optional<int64_t> FindNonFinite(const TensorInfo& tensor, int64_t begin, int64_t end) {
  if (tensor.dtype_name == "BF16") {
    return FindAllOnesExponent<uint16_t, 0x7F80>(tensor.data, begin, end);
  }
  if (tensor.dtype_name == "F16") {
    return FindAllOnesExponent<uint16_t, 0x7C00>(tensor.data, begin, end);
  }
  if (tensor.dtype_name == "F32") {
    return FindAllOnesExponent<uint32_t, 0x7F800000u>(tensor.data, begin, end);
  }
  if (tensor.dtype_name == "F64") {
    return FindAllOnesExponent<uint64_t, 0x7FF0000000000000ull>(tensor.data, begin, end);
  }
  return std::nullopt;
}

absl::Status CheckWeightsFinite(const Checkpoint& checkpoint, WeightCheck check,
                                const std::function<bool(std::string_view)>& want) {
  if (check == WeightCheck::kOff) return absl::OkStatus();
  // The tensors to scan, in name order, and their chunks.
  std::vector<const TensorInfo*> tensors;
  for (const std::string& name : checkpoint.TensorNames()) {
    const bool selected =
        check == WeightCheck::kCheap ? IsCheapCheckTensor(name) : (!want || want(name));
    if (selected) tensors.push_back(checkpoint.Find(name));
  }
  struct Chunk {
    size_t tensor;
    int64_t begin, end;
  };
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t n = tensors[t]->numel();
    for (int64_t begin = 0; begin < n; begin += kChunkElements) {
      chunks.push_back({t, begin, std::min(n, begin + kChunkElements)});
    }
  }
  // Each chunk records its first bad element; the first chunk in order with
  // one names the result, so it does not depend on the thread count.
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::vector<int64_t> found(chunks.size(), kNone);
  ThreadPool::Default().ParallelFor(
      static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
        for (int64_t c = first; c < last; ++c) {
          const Chunk& chunk = chunks[c];
          if (auto bad = FindNonFinite(*tensors[chunk.tensor], chunk.begin, chunk.end)) {
            found[c] = *bad;
          }
        }
      });
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (found[c] == kNone) continue;
    const TensorInfo& tensor = *tensors[chunks[c].tensor];
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", tensor.name, "' in ", tensor.file, " holds a non-finite value (",
                     ValueName(tensor, found[c]), ") at ", Coordinates(tensor.shape, found[c]),
                     "; the weights are corrupt"));
  }
  return absl::OkStatus();
}

}  // namespace dsv2
