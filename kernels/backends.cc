#include "kernels/backends.h"

#include "absl/strings/str_cat.h"

#ifdef DSV2_HAVE_CUDA_BACKEND
#include "kernels/cuda/cuda_backend.h"
#endif

namespace dsv2 {
namespace {

absl::StatusOr<Backend*> CreateCuda() {
#ifdef DSV2_HAVE_CUDA_BACKEND
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend = CudaBackend::Create();
  if (!backend.ok()) return backend.status();
  return backend->release();  // Kept for the process.
#else
  return absl::FailedPreconditionError(
      "this build has no CUDA backend (configure with -DDSV2_ENABLE_CUDA=ON where nvcc exists; "
      "docs/gpu.md)");
#endif
}

}  // namespace

absl::StatusOr<Backend*> BackendByName(std::string_view name) {
  if (name == "cpu") return &CpuBackendInstance();
  if (name == "cuda") {
    static const absl::StatusOr<Backend*>* const cuda = new absl::StatusOr<Backend*>(CreateCuda());
    return *cuda;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", std::string(name), "' (cpu or cuda)"));
}

}  // namespace dsv2
