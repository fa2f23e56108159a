// <immintrin.h> for the AVX-512 kernels (x86 only). GCC 12's AVX-512
// intrinsics start from deliberately uninitialized values (`__Y = __Y`, its
// `_mm512_undefined_*`) and warn about their own code when inlined; the
// warning is about the header, not about the kernels that include it.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
