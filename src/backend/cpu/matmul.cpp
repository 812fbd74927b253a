// Quantized weight x float activation products.
//
// Activations are quantized once per call to 16-bit blocks of 32 (scale d, and d * sum(q)
// for the offset term). 16 bits rather than llama.cpp's 8: on AVX2 _mm256_madd_epi16 costs
// about what _mm256_maddubs_epi16 + _mm256_madd_epi16 cost, and the error (~1e-5 of
// sum |w||x|) keeps greedy decoding equal to a float reference even at near-ties.
//
// Every quantized weight type is viewed through one decomposition: within a 32-element
// block b, w[j] = dw[b] * q[j] + mw[b] with integer q that fits int16 (Q6_K's 6-bit values
// times their int8 sub-scale, Q4_K's nibbles with the sub-scale folded into dw, ...). So
//   sum_j w[j] x[j] = sum_b dw[b] * xd[b] * (q . xq)[b] + mw[b] * xs[b].
//  - decode (few tokens): memory/latency bound. Q4_0/Q4_1/Q8_0/Q4_K/Q2_K rows are dotted straight
//    from their blocks; the other types unpack a row into an L1 panel, then dot it.
//  Q2_K alone does not fit the decomposition (a min per 16 elements): its pre-fill takes the
//  float-weight tile over dequantized rows (prefill_dequantizes).
//  - pre-fill (many tokens): a thread unpacks a block of rows into an int16 panel (never the
//    whole matrix); activations are regrouped with 8 tokens in the lanes of a vector, so one
//    broadcast weight pair times one activation vector (_mm256_madd_epi16) serves 8 tokens,
//    and a 6-row x 8-token register tile reuses each activation load for 6 rows. The float
//    work per block (convert, scale, offset term) is shared by 8 tokens. The kernel is bound
//    by vpmaddwd throughput on Zen3 (about one per cycle as measured). Float weights (F32/F16/BF16) use a 3x4 FMA tile
//    over dequantized row blocks.
//  - at the AVX-512 SIMD level (simd_level.h) quantized pre-fill goes to matmul_avx512.cpp
//    instead (weight rows in the lanes, vpdpwssd; same numbers). Decode uses the dots of
//    matmul_kernels.h at every level.
// The kernels below AVX-512 live in matmul_kernels.h, compiled once per instruction set
// (matmul_scalar.cpp, matmul_avx2.cpp); this file is the generic dispatch over them.
// matmul_multi runs matrices that share an input (Q/K/V, gate/up) as one call: one activation
// quantization, one parallel region.
#include "backend/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd_level.h"
#include "core/dequant.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace duo {

using namespace mm;

namespace mm {

template <typename T>
void grow(std::vector<T>& v, size_t n) {
  v.resize(n);
}
template void grow(std::vector<float>&, size_t);
template void grow(std::vector<int16_t>&, size_t);
template void grow(std::vector<int32_t>&, size_t);
template void grow(std::vector<uint8_t>&, size_t);
template void grow(std::vector<ActQ16>&, size_t);
template void grow(std::vector<ActQ8>&, size_t);
template void grow(std::vector<ActGroupBlock>&, size_t);

void fail_no_integer_path(GgmlType type) { fail("matmul: no integer path for {}", type_name(type)); }

bool is_float_type(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }
bool has_min(GgmlType t) {
  return t == GgmlType::Q4_1 || t == GgmlType::Q5_1 || t == GgmlType::Q4_K || t == GgmlType::Q5_K;
}
bool prefill_dequantizes(GgmlType t) { return is_float_type(t) || t == GgmlType::Q2_K; }

ActBuf& act_buffer() {
  static thread_local ActBuf a;
  return a;
}

}  // namespace mm

namespace {

// The kernels of the current SIMD level (the AVX-512 level uses AVX2's for what it has no
// kernel of its own: decode, float weights).
const MatmulKernels& kernels() {
#if DUO_SIMD_X86
  if (simd_level() >= SimdLevel::Avx2) return avx2::kernels;
#endif
  return scalar::kernels;
}

void check(const MatmulWeight& w) {
  DUO_CHECK(w.data != nullptr && w.rows > 0 && w.cols > 0, "matmul: empty weight");
  DUO_CHECK(w.act_bits == 16 || w.act_bits == 8, "matmul: activations of {} bits (16 or 8)", w.act_bits);
  DUO_CHECK(type_traits(w.type).can_dequantize, "matmul: weights of type {} are not supported", type_name(w.type));
  DUO_CHECK(w.cols % type_traits(w.type).block_elems == 0, "matmul: {} columns is not a whole number of {} blocks",
            w.cols, type_name(w.type));
}

}  // namespace

void matmul_ref(const MatmulWeight& w, const float* x, int64_t n, float* y) {
  check(w);
  std::vector<float> row((size_t)w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.data + r * w.row_stride, row.data(), w.cols);
    for (int64_t t = 0; t < n; ++t) {
      double s = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) s += (double)row[c] * x[t * w.cols + c];
      y[t * w.rows + r] = (float)s;
    }
  }
}

std::shared_ptr<const PackedWeight> pack_weight(const MatmulWeight& w, ThreadPool& pool) {
  check(w);
#if DUO_SIMD_X86
  if (matmul_uses_act8(w)) return pack_weight_act8_avx512(w, pool);
  if (use_avx512() && !prefill_dequantizes(w.type)) return pack_weight_avx512(w, pool);
#else
  (void)pool;
#endif
  return nullptr;
}

// The quantized kernels (AVX-512 tile, AVX2 token-group tile, scalar) keep one accumulator per
// (row, token) and visit the blocks in the same order for every token; only the float-weight
// tile mixes paths (3x4 SIMD tiles, dot products for the ragged edge).
bool matmul_tokens_independent(const MatmulWeight& w) { return !prefill_dequantizes(w.type); }

bool matmul_uses_act8(const MatmulWeight& w) {
#if DUO_SIMD_X86
  return w.act_bits == 8 && act8_type(w.type) && use_avx512();
#else
  (void)w;
  return false;
#endif
}

size_t packed_bytes(const PackedWeight& p) { return p.q.size() * sizeof(int32_t) + p.dm.size() * sizeof(float); }

void matmul(const MatmulWeight& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  matmul_multi({{w, y}}, x, n, pool);
}

void matmul_multi(std::initializer_list<MatmulOut> outs, const float* x, int64_t n, ThreadPool& pool) {
  const MatmulOut* o = outs.begin();
  const int count = (int)outs.size();
  DUO_CHECK(count > 0, "matmul: no matrices");
  bool any_float = false, any_act8 = false;
  for (int i = 0; i < count; ++i) {
    any_act8 = any_act8 || matmul_uses_act8(o[i].w);
    check(o[i].w);
    DUO_CHECK(o[i].w.cols == o[0].w.cols, "matmul: matrices sharing an input have {} and {} columns", o[0].w.cols,
              o[i].w.cols);
    any_float |= prefill_dequantizes(o[i].w.type);
  }
  const MatmulKernels& k = kernels();
  if (n <= kMatmulFewTokens) {
    k.rows(o, count, x, n, pool);
    return;
  }
#if DUO_SIMD_X86
  // 8-bit activations: the matrices that take them in one call of their kernel, the others
  // (another weight type) in the 16-bit one below.
  if (any_act8) {
    std::vector<MatmulOut> act8, rest;
    for (int i = 0; i < count; ++i) (matmul_uses_act8(o[i].w) ? act8 : rest).push_back(o[i]);
    matmul_prefill_act8_avx512(act8.data(), (int)act8.size(), quantize_acts8(x, n, o[0].w.cols, pool), n, pool);
    for (const MatmulOut& r : rest) matmul_multi({r}, x, n, pool);
    return;
  }
  if (use_avx512() && !any_float) {
    ActBuf& ab = act_buffer();
    k.quantize_acts(x, n, o[0].w.cols, ab, pool);
    matmul_prefill_avx512(o, count, ab.q.data(), n, pool);
    return;
  }
#endif
  for (int i = 0; i < count; ++i) {
    if (prefill_dequantizes(o[i].w.type))
      k.tiled_float(o[i].w, x, n, o[i].y, pool);
    else
      k.tiled_int(o[i].w, x, n, o[i].y, pool);
  }
}

}  // namespace duo
