// Device code of qkv_grad.cu (GQA sum, RoPE backward, packing into [dq | dk | dv]), built for the
// GPU and for the CPU emulation test (device_env.cuh). One CTA a token.
#pragma once
#include <cmath>
#include <cstdint>

#include "calibrate/cuda/device_env.cuh"
#include "calibrate/cuda/grad_kernels.h"

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

namespace qkv {
constexpr int kThreads = 256;
}  // namespace qkv

__global__ void __launch_bounds__(qkv::kThreads) qkv_grad_kernel(const QkvGradArgs a) {
  const int64_t t = blockIdx.x;
  const int D = a.head_dim, half = D / 2, H = a.n_heads, HKV = a.n_kv_heads, G = H / HKV;
  const int64_t Q = (int64_t)H * D, KV = (int64_t)HKV * D, ld = Q + 2 * KV;
  const float pos = (float)t;  // exact for positions < 2^24, as the forward
  const float* dq = a.dq + t * Q;
  const float* dk = a.dk_part + t * Q;
  const float* dv = a.dv_part + t * Q;
  bf16* out = a.dqkv + t * ld;
  // Rotation pairs: query heads, then KV heads (their K gradient summed over the group).
  const int pairs = (H + HKV) * half;
  for (int idx = threadIdx.x; idx < pairs; idx += qkv::kThreads) {
    const int head = idx / half, i = idx % half;
    const int ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
    float x0 = 0.0f, x1 = 0.0f;
    int64_t dst;
    if (head < H) {
      x0 = dq[(int64_t)head * D + ia], x1 = dq[(int64_t)head * D + ib];
      dst = (int64_t)head * D;
    } else {
      const int j = head - H;
      for (int g = 0; g < G; ++g) {
        const int64_t src = (int64_t)(j * G + g) * D;
        x0 += dk[src + ia], x1 += dk[src + ib];
      }
      dst = Q + (int64_t)j * D;
    }
    float s, c;
    sincosf(pos * a.inv_freq[i], &s, &c);
    out[dst + ia] = __float2bfloat16(x0 * c + x1 * s);  // rotation by -angle
    out[dst + ib] = __float2bfloat16(x1 * c - x0 * s);
  }
  for (int64_t e = threadIdx.x; e < KV; e += qkv::kThreads) {
    const int j = (int)(e / D), d = (int)(e % D);
    float x = 0.0f;
    for (int g = 0; g < G; ++g) x += dv[(int64_t)(j * G + g) * D + d];
    out[Q + KV + e] = __float2bfloat16(x);
  }
}

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
