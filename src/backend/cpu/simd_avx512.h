// The AVX-512 subset the CPU kernels use (F, BW, VL, VNNI: Ice Lake / Sapphire Rapids Xeons,
// AMD Zen 4 and later). DUO_HAVE_AVX512 is 1 when the compiler targets all of it.
// Include this before anything else that includes <immintrin.h>.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
// GCC 12 warns inside its own AVX-512 intrinsics (the self-initialised _mm512_undefined_ps
// operand, GCC bug 105593): silence that, for the intrinsics headers only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    defined(__FMA__) && defined(__F16C__)
#define DUO_HAVE_AVX512 1
#else
#define DUO_HAVE_AVX512 0
#endif
