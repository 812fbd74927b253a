// QKV post-processing after the fused QKV GEMM: bias, per-head q/k RMS norm (qwen3, gemma3), RoPE
// on Q and K, the query scale (gemma3), bf16 conversion. One CTA a token; a thread rotates one (a, b) pair of one head, as
// rope() in cpu/ops.cpp. With the norm, a warp a head first sums its squares (the scale of each
// Q and K head of the token in shared memory), so the norm costs no extra pass over memory. In
// the decode step K and V are written straight into the KV cache (no separate kv_append).

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/reduce.cuh"

namespace duo::cuda {
namespace detail {
namespace {

constexpr int kRopeThreads = 256;

constexpr int kMaxCacheHeads = 128;  // to_cache: rows looked up once a KV head, in shared memory

// kQkNorm: a.q_norm / a.k_norm are set; needs (n_heads + n_kv_heads) floats of dynamic shared memory.
template <bool kQkNorm>
__global__ void __launch_bounds__(kRopeThreads) qkv_rope_kernel(const QkvRopeArgs a) {
  const int t = blockIdx.x, D = a.head_dim, half = D / 2;
  const int64_t Q = (int64_t)a.n_heads * D, KV = (int64_t)a.n_kv_heads * D;
  const float* row = a.qkv + (int64_t)t * a.ld;
  const int pos0 = a.pos_d ? *a.pos_d : a.pos0;
  const float pos = (float)(a.row_pos ? a.row_pos[t] : pos0 + t);  // exact for positions < 2^24
  __shared__ bf16* k_row[kMaxCacheHeads];
  __shared__ bf16* v_row[kMaxCacheHeads];
  if (a.to_cache) {  // where each KV head keeps this position (nullptr: nowhere, never for n = 1)
    for (int h = threadIdx.x; h < a.n_kv_heads; h += kRopeThreads)
      if (!cache_rows(a.cache, h, pos0 + t, pos0 + a.n, D, k_row[h], v_row[h])) k_row[h] = v_row[h] = nullptr;
    __syncthreads();
  }
  extern __shared__ float head_scale[];  // kQkNorm: 1 / rms of each Q head, then each K head
  if constexpr (kQkNorm) {
    const int lane = threadIdx.x % 32;
    for (int head = threadIdx.x / 32; head < a.n_heads + a.n_kv_heads; head += kRopeThreads / 32) {
      const int64_t src = head < a.n_heads ? (int64_t)head * D : Q + (int64_t)(head - a.n_heads) * D;
      float ss = 0.0f;
      for (int i = lane; i < D; i += 32) {
        float x = row[src + i];
        if (a.bias) x += a.bias[src + i];
        ss += x * x;
      }
      ss = warp_sum(ss);
      if (lane == 0) head_scale[head] = 1.0f / sqrtf(ss / (float)D + a.norm_eps);
    }
    __syncthreads();
  }
  const int pairs = (a.n_heads + a.n_kv_heads) * half;
  for (int idx = threadIdx.x; idx < pairs; idx += kRopeThreads) {
    const int head = idx / half, i = idx % half;
    int64_t src;  // offset of this head in the qkv row (== in the bias)
    bf16* dst;
    if (head < a.n_heads) {
      src = (int64_t)head * D;
      dst = a.q + (int64_t)t * Q + src;
    } else {
      src = Q + (int64_t)(head - a.n_heads) * D;
      dst = a.to_cache ? k_row[head - a.n_heads] : a.k + (int64_t)t * KV + (src - Q);
      if (!dst) continue;
    }
    const int ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
    float x0 = row[src + ia], x1 = row[src + ib];
    if (a.bias) x0 += a.bias[src + ia], x1 += a.bias[src + ib];
    if constexpr (kQkNorm) {  // x * scale * w, as cpu rmsnorm()
      const float* w = head < a.n_heads ? a.q_norm : a.k_norm;
      x0 = x0 * head_scale[head] * w[ia], x1 = x1 * head_scale[head] * w[ib];
    }
    float s, c;
    sincosf(pos * a.inv_freq[i], &s, &c);
    // Queries: then times q_scale (gemma3's query_pre_attn_scalar; x 1 is exact for K and others).
    const float m = head < a.n_heads ? a.q_scale : 1.0f;
    dst[ia] = __float2bfloat16((x0 * c - x1 * s) * m);
    dst[ib] = __float2bfloat16((x0 * s + x1 * c) * m);
  }
  for (int64_t j = threadIdx.x; j < KV; j += kRopeThreads) {
    float x = row[Q + KV + j];
    if (a.bias) x += a.bias[Q + KV + j];
    bf16* dst = a.to_cache ? v_row[j / D] : a.v + (int64_t)t * KV;
    if (!dst) continue;
    dst[a.to_cache ? j % D : j] = __float2bfloat16(x);
  }
}

}  // namespace
}  // namespace detail

void qkv_bias_rope(const QkvRopeArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return;
  if (a.head_dim % 2 != 0 || a.n_heads <= 0 || a.n_kv_heads <= 0)
    fail_arg("qkv_bias_rope: bad head shape");
  if (a.row_pos && a.to_cache)
    fail_arg("qkv_bias_rope: rows at their own positions (row_pos) cannot go to one cache");
  if (a.to_cache && (a.n != 1 || a.n_kv_heads > detail::kMaxCacheHeads))
    fail_arg("qkv_bias_rope: writing to the cache takes one token and at most 128 KV heads");
  if ((a.q_norm == nullptr) != (a.k_norm == nullptr)) fail_arg("qkv_bias_rope: q_norm and k_norm come together");
  if (a.q_norm) {
    const size_t smem = sizeof(float) * (size_t)(a.n_heads + a.n_kv_heads);
    if (smem > 48 * 1024) fail_arg("qkv_bias_rope: too many heads for the q/k norm");
    detail::qkv_rope_kernel<true><<<a.n, detail::kRopeThreads, smem, stream>>>(a);
  } else {
    detail::qkv_rope_kernel<false><<<a.n, detail::kRopeThreads, 0, stream>>>(a);
  }
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace duo::cuda
