// Picking the next token on the GPU, so decoding copies one int32 to the host instead of the
// logits: argmax (greedy) and temperature / top-k / top-p sampling.
//
// Sampling runs in one CTA of 1024 threads. Tokens are ordered by a 64-bit key (the float's
// order-preserving bits, then the inverted index, so equal values order by lower index as
// Sampler's sort does). The top-k cut is the k-th largest key and the top-p cut the largest
// key whose suffix mass reaches top_p; both are found bit by bit from the most significant
// bit (64 counting / summing passes over the logits, which stay in L1/L2). The draw walks the
// kept tokens in index order: a block scan gives each thread the mass before its contiguous
// index range, the thread whose range holds u * total walks it.
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/reduce.cuh"

namespace duo::cuda {
namespace detail {
namespace {

constexpr int kArgmaxThreads = 1024, kSampleThreads = 1024;

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const float* logits, int n, int32_t* out) {
  const float* row = logits + (int64_t)blockIdx.x * n;
  float best = -INFINITY;
  int bi = n;  // n: none seen yet (every value -inf or NaN)
  for (int i = threadIdx.x; i < n; i += kArgmaxThreads) {
    const float v = row[i];
    if (v > best || (v == best && i < bi)) best = v, bi = i;
  }
  // Warp then block: keep the larger value, the lower index on ties.
  for (int o = 16; o > 0; o /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) sv[warp] = best, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    best = sv[lane], bi = si[lane];
    for (int o = 16; o > 0; o /= 2) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
    }
    if (lane == 0) out[blockIdx.x] = bi < n ? bi : 0;
  }
}

__device__ __forceinline__ uint64_t sort_key(float x, int i) {
  uint32_t u = __float_as_uint(x);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // larger float -> larger unsigned
  return ((uint64_t)u << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)i);
}

__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const float* logits, int n, SampleArgs a,
                                                                int32_t* out) {
  const int tid = threadIdx.x;
  // x_i = logits_i / T is recomputed where needed (IEEE division: the same values as the CPU).
  float mx = -INFINITY;
  for (int i = tid; i < n; i += kSampleThreads) mx = fmaxf(mx, logits[i] / a.temperature);
  mx = block_max(mx);

  // Top-k: the largest K with count(key >= K) >= k is the k-th largest key (keys are distinct).
  uint64_t cut = 0;
  if (a.top_k > 0 && a.top_k < n) {
    for (int b = 63; b >= 0; --b) {
      const uint64_t cand = cut | (1ull << b);
      int c = 0;
      for (int i = tid; i < n; i += kSampleThreads) c += sort_key(logits[i] / a.temperature, i) >= cand;
      if (block_sum(c) >= a.top_k) cut = cand;
    }
  }
  // Top-p: the largest K >= cut whose kept mass sum(p_i : key_i >= K) still reaches top_p of
  // the total; those keys are the shortest prefix of the sorted order that reaches top_p.
  if (a.top_p < 1.0f) {
    float z = 0.0f;
    for (int i = tid; i < n; i += kSampleThreads) {
      const float x = logits[i] / a.temperature;
      if (sort_key(x, i) >= cut) z += expf(x - mx);
    }
    const float target = a.top_p * block_sum(z);
    uint64_t K = 0;
    for (int b = 63; b >= 0; --b) {
      const uint64_t cand = K | (1ull << b);
      const uint64_t lim = cand > cut ? cand : cut;
      float m = 0.0f;
      for (int i = tid; i < n; i += kSampleThreads) {
        const float x = logits[i] / a.temperature;
        if (sort_key(x, i) >= lim) m += expf(x - mx);
      }
      if (block_sum(m) >= target) K = cand;
    }
    if (K > cut) cut = K;
  }

  // Draw: thread tid owns indices [lo, hi); scan the kept masses in thread order.
  const int per = (n + kSampleThreads - 1) / kSampleThreads;
  const int lo = min(n, tid * per), hi = min(n, lo + per);
  float mine = 0.0f;
  int last_kept = -1;
  for (int i = lo; i < hi; ++i) {
    const float x = logits[i] / a.temperature;
    if (sort_key(x, i) >= cut) mine += expf(x - mx), last_kept = i;
  }
  float total;
  const float before = block_exclusive_scan(mine, total);
  const float r = (float)a.u * total;
  // The owner is the last thread with kept mass whose range starts at or below r.
  const int owner = block_max(mine > 0.0f && before <= r ? tid : -1);
  const int fallback = block_max(last_kept);  // rounding pushed r past every range: last kept token
  if (tid == 0 && owner < 0) out[0] = fallback >= 0 ? fallback : 0;
  if (tid == owner) {
    float acc = before;
    int pick = last_kept;
    for (int i = lo; i < hi; ++i) {
      const float x = logits[i] / a.temperature;
      if (sort_key(x, i) < cut) continue;
      acc += expf(x - mx);
      if (r < acc) {
        pick = i;
        break;
      }
    }
    out[0] = pick;
  }
}

}  // namespace
}  // namespace detail

void argmax_rows(const float* logits, int rows, int n, int32_t* out, cudaStream_t stream) {
  if (rows <= 0) return;
  if (n <= 0) fail_arg("argmax_rows: empty rows");
  detail::argmax_kernel<<<rows, detail::kArgmaxThreads, 0, stream>>>(logits, n, out);
  DUO_CUDA_TRY(cudaGetLastError());
}

void sample_token(const float* logits, int n, const SampleArgs& a, int32_t* out, cudaStream_t stream) {
  if (n <= 0) fail_arg("sample_token: empty logits");
  if (!(a.temperature > 0.0f)) fail_arg("sample_token: temperature must be > 0 (greedy: argmax)");
  if (!(a.top_p > 0.0f && a.top_p <= 1.0f) || a.top_k < 0 || !(a.u >= 0.0 && a.u < 1.0))
    fail_arg("sample_token: top_k >= 0, top_p in (0, 1], u in [0, 1)");
  detail::sample_kernel<<<1, detail::kSampleThreads, 0, stream>>>(logits, n, a, out);
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace duo::cuda
