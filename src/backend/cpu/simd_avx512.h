// The AVX-512 subset the CPU kernels use (F, BW, VL, VNNI: Ice Lake / Sapphire Rapids Xeons,
// AMD Zen 4 and later). DUO_HAVE_AVX512 is 1 when the compiler targets all of it.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    defined(__FMA__) && defined(__F16C__)
#define DUO_HAVE_AVX512 1
#include <immintrin.h>
#else
#define DUO_HAVE_AVX512 0
#endif
