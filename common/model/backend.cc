#include "common/model/backend.h"

#include <utility>

namespace dsv2 {

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) backend_->Free(data_);
    backend_ = std::exchange(other.backend_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    count_ = std::exchange(other.count_, 0);
  }
  return *this;
}

Buffer::~Buffer() {
  if (data_ != nullptr) backend_->Free(data_);
}

void Backend::Mlp(const MlpWeights& mlp, const float* x, int64_t n, float* out) {
  const int64_t width = mlp.gate.rows;
  Buffer gate = Allocate(n * width), up = Allocate(n * width);  // [n, width]
  Linear(x, n, mlp.gate, gate.data());
  Linear(x, n, mlp.up, up.data());
  SiluMul(gate.data(), up.data(), gate.data(), n * width);
  Linear(gate.data(), n, mlp.down, out);
}

}  // namespace dsv2
