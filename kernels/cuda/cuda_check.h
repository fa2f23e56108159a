// Checks of CUDA runtime and cuBLAS calls whose failure leaves the device in
// an unknown state (a fault inside an op, a benchmark's timing): the process
// stops with a log line naming the call and the error.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "common/base/logging.h"

#define DSV2_CUDA_CHECK(call)                                                          \
  do {                                                                                 \
    const cudaError_t dsv2_error = (call);                                             \
    if (dsv2_error != cudaSuccess) {                                                   \
      DSV2_LOG(FATAL) << #call << " failed: " << cudaGetErrorName(dsv2_error) << " (" \
                      << cudaGetErrorString(dsv2_error) << ")";                        \
    }                                                                                  \
  } while (0)

#define DSV2_CUBLAS_CHECK(call)                                                    \
  do {                                                                             \
    const cublasStatus_t dsv2_status = (call);                                     \
    if (dsv2_status != CUBLAS_STATUS_SUCCESS) {                                    \
      DSV2_LOG(FATAL) << #call << " failed: " << cublasGetStatusName(dsv2_status); \
    }                                                                              \
  } while (0)
