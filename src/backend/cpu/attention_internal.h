// Pieces of the CPU attention shared by its ISA-specific files (attention.cpp: dispatch;
// attention_kernels.h: AVX2 and scalar row kernels; attention_avx512.cpp: the AVX-512 kernels).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "duo/head_plan.h"
#include "backend/cpu/kv_segment.h"

namespace duo::attn {

constexpr int kKeyBlock = 64;    // keys per block (the AVX2 row kernel keeps a row's scores in 8 registers)
constexpr int kMaxRows = 64;     // query rows (positions x heads of one GQA group) per task
constexpr int kMaxHeadDim = 256;

// A block of up to kKeyBlock consecutive positions inside one segment. Float segments are read
// in place (k, v, stride); the rows of other formats (16-bit, quantized groups) have k = v =
// nullptr and name rows [r0, r0 + n) of *seg, decoded when the block is visited into a buffer of
// one block (never the whole cache). 16-bit blocks (type F16 or BF16) also point at their rows
// (kh, vh, stride elements apart): the AVX-512 kernels read those in place, converting in
// registers, so a half-precision cache costs half the memory traffic of a float one. The
// AVX-512 kernels take F32, F16 and BF16 blocks (reads_in_place), not quantized ones.
struct KeyBlock {
  const float* k;
  const float* v;
  int64_t pos0;
  int n;
  int64_t stride;
  const KvSegment* seg = nullptr;
  int64_t r0 = 0;
  KvType type = KvType::F32;
  const uint16_t* kh = nullptr;
  const uint16_t* vh = nullptr;
};
inline bool reads_in_place(const KeyBlock& b) {
  return b.type == KvType::F32 || b.type == KvType::F16 || b.type == KvType::BF16;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Online-softmax state of `rows` query rows.
struct RowState {
  float m[kMaxRows], l[kMaxRows];
  alignas(32) float o[kMaxRows * kMaxHeadDim];
  void reset(int rows, int d) {
    for (int r = 0; r < rows; ++r) m[r] = kNegInf, l[r] = 0.0f;
    std::memset(o, 0, sizeof(float) * rows * d);
  }
};

// The row kernel below the AVX-512 level (attention_kernels.h), one per instruction set: scalar
// (plain loops, every CPU) and, on x86-64, avx2. Processes key blocks [kb0, kb1) for `rows`
// query rows into st; row r is query position pos[r] of query vector qrow[r].
using AttendBlocksFn = void(const KeyBlock* blocks, size_t kb0, size_t kb1, int rows, const float* const* qrow,
                            const int64_t* pos, HeadKind kind, const StreamingWindow& w, int d, float scale,
                            RowState& st);
namespace scalar {
AttendBlocksFn attend_blocks;
}
namespace avx2 {
AttendBlocksFn attend_blocks;
}

// AVX-512 pre-fill kernel (attention_avx512.cpp), callable when use_avx512(): `rows` query
// vectors qrow[r] at positions pos[r] (all of one KV head) attend to blocks[0..n_blocks) under
// the head's mask; out[r] receives the normalized output row (d floats). 16 <= rows <= kMaxRows.
void attend_rows_avx512(const KeyBlock* blocks, size_t n_blocks, int rows, const float* const* qrow,
                        const int64_t* pos, HeadKind kind, const StreamingWindow& w, int d, float scale,
                        float* const* out);

// AVX-512 kernel for few rows (decode: the query heads of one KV head): rows query vectors at
// positions pos[r] attend to blocks [kb0, kb1), updating an online-softmax state: running max
// m[r], sum l[r] and unnormalized output o[r * d ...] (as the caller initialized them: -inf, 0,
// 0). Keys are dotted in place, 16 at a time, with a transposing reduction (no key
// transposition). Needs d in {64, 128, 256} (decode_kernel_fits).
inline bool decode_kernel_fits(int d) { return d == 64 || d == 128 || d == 256; }
void attend_rows_decode_avx512(const KeyBlock* blocks, size_t kb0, size_t kb1, int rows, const float* const* qrow,
                               const int64_t* pos, HeadKind kind, const StreamingWindow& w, int d, float scale,
                               float* m, float* l, float* o);

}  // namespace duo::attn
