// The plain parts of the 8-bit activation mode of the quantized matmul (MatmulWeight::act_bits
// == 8): activation quantization to int8 blocks, Q4_0/Q4_1/Q8_0 rows as bytes, and the
// reference the AVX-512 kernel (matmul_act8_avx512.cpp) is tested against.
//
// Why 8 bits: the many-token kernel is bound by its integer dot instructions. Q4 nibbles are
// unsigned 0..15, so with int8 activations vpdpbusd (u8 x s8, 4 products a lane) does 64
// products an instruction where the 16-bit kernel's vpdpwssd does 32. Q8_0 weights are signed:
// there the activations take the unsigned side, offset by 128 (matmul_act8_avx512.cpp). The cost is precision:
// an activation moves by up to amax / 254 of its block instead of amax / 65534.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/matmul_internal.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace duo::mm {

void quantize_act_q8(const float* x, int64_t nb, ActQ8* out) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* v = x + b * QK;
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < QK; ++j) {
      // amax * (1 / d) may round to just above 127: clamp.
      const int q = std::clamp((int)std::nearbyint(v[j] * id), -127, 127);
      out[b].q[j] = (int8_t)q;
      sum += q;
    }
    out[b].d = d;
    out[b].s = d * (float)sum;
  }
}

const ActQ8* quantize_acts8(const float* x, int64_t n, int64_t cols, ThreadPool& pool) {
  static thread_local std::vector<ActQ8> buf;
  const int64_t nb = cols / QK;
  ActQ8* q = scratch(buf, (size_t)(n * nb));
  auto body = [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) quantize_act_q8(x + t * cols, nb, q + t * nb);
  };
  if (n * cols >= 16384)  // as quantize_acts: small inputs are not worth a parallel region
    pool.parallel_for(n, body);
  else
    body(0, n, 0);
  return q;
}

bool act8_type(GgmlType t) { return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q8_0; }

void unpack_row_8(GgmlType type, const uint8_t* src, int64_t nb, uint8_t* q, float* dw, float* mw) {
  DUO_CHECK(act8_type(type), "matmul: no 8-bit activation path for {}", type_name(type));
  if (type == GgmlType::Q8_0) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(src);
    for (int64_t i = 0; i < nb; ++i) {
      std::memcpy(q + i * QK, b[i].qs, QK);
      dw[i] = h2f(b[i].d);
      mw[i] = 0.0f;
    }
    return;
  }
  const bool one = type == GgmlType::Q4_1;
  const size_t bs = one ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* blk = src + i * bs;
    uint16_t d, m = 0;
    std::memcpy(&d, blk, 2);
    if (one) std::memcpy(&m, blk + 2, 2);
    const uint8_t* qs = blk + (one ? 4 : 2);
    // Element j is the low nibble of byte j, element j + 16 the high one.
    for (int j = 0; j < QK / 2; ++j) {
      q[i * QK + j] = qs[j] & 0xF;
      q[i * QK + j + QK / 2] = qs[j] >> 4;
    }
    dw[i] = h2f(d);
    mw[i] = one ? h2f(m) : -8.0f * dw[i];
  }
}

}  // namespace duo::mm

namespace duo {

void matmul_act8_ref(const MatmulWeight& w, const float* x, int64_t n, float* y) {
  DUO_CHECK(mm::act8_type(w.type), "matmul: no 8-bit activation path for {}", type_name(w.type));
  DUO_CHECK(w.data != nullptr && w.rows > 0 && w.cols > 0 && w.cols % QK == 0, "matmul: bad weight shape");
  const int64_t nb = w.cols / QK;
  std::vector<mm::ActQ8> a((size_t)(n * nb));
  for (int64_t t = 0; t < n; ++t) mm::quantize_act_q8(x + t * w.cols, nb, a.data() + t * nb);
  std::vector<uint8_t> q((size_t)w.cols);
  const bool signed_w = w.type == GgmlType::Q8_0;
  std::vector<float> dw((size_t)nb), mw((size_t)nb);
  for (int64_t r = 0; r < w.rows; ++r) {
    mm::unpack_row_8(w.type, w.data + r * w.row_stride, nb, q.data(), dw.data(), mw.data());
    for (int64_t t = 0; t < n; ++t) {
      double sum = 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        const mm::ActQ8& ab = a[(size_t)(t * nb + b)];
        int64_t isum = 0, xsum = 0;
        for (int j = 0; j < QK; ++j) {
          const uint8_t qb = q[(size_t)(b * QK + j)];
          isum += (signed_w ? (int)(int8_t)qb : (int)qb) * ab.q[j];
          xsum += ab.q[j];
        }
        sum += (double)dw[(size_t)b] * ab.d * (double)isum + (double)mw[(size_t)b] * ab.d * (double)xsum;
      }
      y[t * w.rows + r] = (float)sum;
    }
  }
}

}  // namespace duo
