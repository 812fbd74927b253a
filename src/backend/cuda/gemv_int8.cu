// int8 weight-only linear layers (--gpu-weights int8): W[r][c] ~ scale[r] * q[r][c] with q int8 in
// [-127, 127] and one fp32 scale an output row (quantized on upload: scale = max |W[r]| / 127).
//  - gemv_int8: the one-token layer (decode), gemv_rows.cuh's skeleton reading half the bytes: a
//    warp owns whole rows, a lane reads 16 int8 weights a 16-byte load (kGemvUnroll in flight) and the
//    matching 16 bf16 of x from shared memory; int8 -> float without I2F (the byte, biased by 128,
//    is placed under the exponent of 2^23 and 2^23 + 128 subtracted: exact); the row's sum is
//    scaled once. The SwiGLU variant computes a gate row and its up row, as gemv_swiglu_bf16.
//  - dequant_int8_rows: rows to bf16 (scale * q rounded to bf16), the tile a pre-fill GEMM
//    (cuBLAS) reads: Gemm::linear dequantizes a block of rows at a time into a scratch buffer.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemv_rows.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/synthetic.h"

namespace duo::cuda {
namespace detail {
namespace {

// The 4 int8 of a word as exact floats.
__device__ __forceinline__ void int8x4_to_float(uint32_t w, float* f) {
  const uint32_t u = w ^ 0x80808080u;  // signed -> biased unsigned (b + 128)
#pragma unroll
  for (int k = 0; k < 4; ++k) f[k] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540u | k)) - 8388736.0f;
}

// 16 weights (one 16-byte load) against 16 bf16 of x (two 16-byte pieces in shared memory).
__device__ __forceinline__ float dot16(const uint4& w, const uint4& x0, const uint4& x1) {
  const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
  const __nv_bfloat162* xa = reinterpret_cast<const __nv_bfloat162*>(&x0);
  const __nv_bfloat162* xb = reinterpret_cast<const __nv_bfloat162*>(&x1);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float f[4];
    int8x4_to_float(ws[i], f);
    const __nv_bfloat162* xp = i < 2 ? xa + 2 * i : xb + 2 * (i - 2);
    const float2 a = __bfloat1622float2(xp[0]), b = __bfloat1622float2(xp[1]);
    s = fmaf(f[0], a.x, s);
    s = fmaf(f[1], a.y, s);
    s = fmaf(f[2], b.x, s);
    s = fmaf(f[3], b.y, s);
  }
  return s;
}

// int8 weights for gemv_rows.cuh: 16 a load, against two 16-byte pieces of x, scaled a row.
struct Int8Rows {
  using Elem = int8_t;
  static constexpr int kPerLoad = 16;
  static constexpr bool kScaled = true;
  __device__ static __forceinline__ float dot(const uint4& w, const uint4* sx, int c) {
    return dot16(w, sx[2 * c], sx[2 * c + 1]);
  }
};

// One thread per 8 weights of the row-major matrix (8 bytes in, 16 bytes out), over the whole
// matrix at once: a CTA a row left a 4096-column row's 256 threads with two short loads each, too
// few bytes in flight to stream the weights at the copy bandwidth.
__global__ void dequant_kernel(const int8_t* q, const float* scale, int64_t rows, int cols, bf16* out) {
  const int64_t per_row = cols / 8, total = rows * per_row;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const float s = scale[i / per_row];
    const uint2 w = reinterpret_cast<const uint2*>(q)[i];
    float f[8];
    int8x4_to_float(w.x, f);
    int8x4_to_float(w.y, f + 4);
    uint4 o;
    uint32_t* o32 = reinterpret_cast<uint32_t*>(&o);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const __nv_bfloat162 b = __floats2bfloat162_rn(s * f[2 * k], s * f[2 * k + 1]);
      o32[k] = *reinterpret_cast<const uint32_t*>(&b);
    }
    reinterpret_cast<uint4*>(out)[i] = o;
  }
}

// Uniform integers in [-127, 127] from the counter hash (synthetic.h).
__global__ void fill_int8_kernel(int8_t* dst, int64_t count, uint64_t seed) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = (int8_t)((int)(mix64(seed ^ mix64((uint64_t)i)) % 255u) - 127);
}

unsigned grid_for(int64_t count) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((count + 255) / 256, 1 << 16));
}

}  // namespace
}  // namespace detail

bool gemv_int8_supported(const int8_t* W, int64_t cols, const bf16* x) {
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return cols > 0 && cols % 16 == 0 && cols <= detail::kGemvMaxCols && aligned(W) && aligned(x);
}

void gemv_int8(const int8_t* W, const float* scale, int64_t rows, int64_t cols, const bf16* x, float* y,
               bool accumulate, cudaStream_t stream) {
  if (rows <= 0) return;
  if (!gemv_int8_supported(W, cols, x))
    fail_arg("gemv_int8: needs cols % 16 == 0, cols <= 24576 and 16-byte aligned W and x");
  detail::launch_gemv_rows<detail::Int8Rows, false>(W, scale, rows, cols, x, y, nullptr, accumulate, stream);
}

void gemv_swiglu_int8(const int8_t* Wgu, const float* scale, int64_t F, int64_t cols, const bf16* x, bf16* h,
                      cudaStream_t stream, Glu act) {
  if (F <= 0) return;
  if (!gemv_int8_supported(Wgu, cols, x))
    fail_arg("gemv_swiglu_int8: needs cols % 16 == 0, cols <= 24576 and 16-byte aligned W and x");
  detail::launch_gemv_rows<detail::Int8Rows, true>(Wgu, scale, F, cols, x, nullptr, h, false, stream, act);
}

void dequant_int8_rows(const int8_t* q, const float* scale, int64_t rows, int64_t cols, bf16* out,
                       cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  if (cols % 8 != 0 || cols > (1 << 30) || (reinterpret_cast<uintptr_t>(q) & 7) || (reinterpret_cast<uintptr_t>(out) & 15))
    fail_arg("dequant_int8_rows: needs cols % 8 == 0 and 8 / 16-byte aligned q / out");
  const int64_t chunks = rows * (cols / 8);
  const unsigned blocks = (unsigned)std::min<int64_t>((chunks + 255) / 256, 1 << 20);
  detail::dequant_kernel<<<blocks, 256, 0, stream>>>(q, scale, rows, (int)cols, out);
  DUO_CUDA_TRY(cudaGetLastError());
}

void fill_int8(int8_t* dst, int64_t count, uint64_t seed, cudaStream_t stream) {
  if (count <= 0) return;
  detail::fill_int8_kernel<<<detail::grid_for(count), 256, 0, stream>>>(dst, count, seed);
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace duo::cuda
