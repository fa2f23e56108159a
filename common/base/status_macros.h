// Propagation helpers for absl::Status / absl::StatusOr, which the whole
// project uses for every error that input, files, network or configuration
// can cause.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DSV2_CONCAT_INNER_(a, b) a##b
#define DSV2_CONCAT_(a, b) DSV2_CONCAT_INNER_(a, b)

// Returns from the current function if `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status _dsv2_status = (expr);          \
    if (!_dsv2_status.ok()) return _dsv2_status;   \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` binds the value of a StatusOr or
// returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  DSV2_ASSIGN_OR_RETURN_IMPL_(DSV2_CONCAT_(_dsv2_statusor_, __LINE__), lhs, expr)
#define DSV2_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
