// What the split-KV decode kernel (decode_mma.cu) and its host side (decode.cu) share: the
// launch parameters, the split arithmetic done on the device, a CTA's share of the work
// (cta_work: its KV head, split and keys) and its end (write_merged: the merge of its warps'
// states), and the merge kernel that combines the splits of each retrieval head.
//
// One kernel body serves one sequence and a batch of sequences (decode_attention_batch): each
// kernel takes its parameters by value (`one`, a __grid_constant__ so that it can be referred
// to without a local copy) and a device array `items`; when `items` is set, CTA (x, y) works
// for item y (items[y], x indexing its CTAs like blockIdx.x does for one sequence, CTAs past
// the item's count return), else for `one` (grid.y = 1). See params_of().
#pragma once
#include <cmath>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/reduce.cuh"

namespace duo::cuda::detail {

struct DecodeParams {
  DecodeArgs a;
  int n_retrieval;   // retrieval KV heads (grid: n_retrieval * n_splits + streaming heads)
  int n_splits;      // splits a retrieval head
  int split_tokens;  // keys a split; 0: from n_past on the device
  float* part_o;     // [n_heads][n_splits][D]
  float* part_lse;   // [n_heads][n_splits]
};

// A launch of the decode kernels: `one` alone (items == nullptr, n_items 1), or the n_items
// parameter sets at `items` (device memory; `one` then only picks the kernel: head_dim, group,
// KV type). ctas: grid.x of the attention kernel (the most CTAs of an item); merge_heads: the
// most retrieval heads of an item with more than one split (0: no merge launch).
struct DecodeLaunch {
  const DecodeParams* items = nullptr;
  int n_items = 1;
  int ctas = 0;
  int merge_heads = 0;
};

// CTAs the attention kernel runs for p: retrieval heads x splits, then one a streaming head.
__host__ __device__ inline int decode_ctas(const DecodeParams& p) {
  return p.n_retrieval * p.n_splits + p.a.n_kv_heads - p.n_retrieval;
}

// The tensor-core decode (decode_mma.cu): kernel and merge launches for these parameters, the
// kernel that reads KV type kv (BF16: bf16 pages and rings; Q8 / Q4: quantized retrieval heads,
// their bf16 rows and the rings), and how many of its CTAs an SM holds (for the one-wave split
// count; the same for every GQA group).
void launch_decode_mma(const DecodeParams& one, const DecodeLaunch& l, KvType kv, cudaStream_t stream);
// Throws duo::Error unless c holds every pointer the quantized kernel reads.
void check_quant_view(const LayerKv& c);
int decode_mma_resident_ctas(int head_dim, KvType kv);

namespace {

constexpr int kDecThreads = 128, kDecWarps = 4;

// The parameters CTA (blockIdx.x, blockIdx.y) works for (see the top of this file).
__device__ __forceinline__ const DecodeParams& params_of(const DecodeParams& one, const DecodeParams* items) {
  return items ? items[blockIdx.y] : one;
}
__device__ __forceinline__ int decode_n_past(const DecodeArgs& a) { return a.pos_d ? *a.pos_d + 1 : a.n_past; }

// Keys a split when the host left it to the device: n_splits splits cover n_past, each a
// multiple of 64 keys (warp-iterations stay inside a page) and at least 256.
__device__ __forceinline__ int device_split_tokens(int n_past, int n_splits) {
  const int t = (n_past + n_splits - 1) / n_splits;
  return max(256, (t + 63) / 64 * 64);
}

// The r-th KV head of the given kind (0 retrieval, 1 streaming); without Mixed heads, r itself.
__device__ __forceinline__ int nth_head(const LayerKv& c, int n_kv, int r, int kind) {
  return c.mode == HeadMode::Mixed ? nth_kv_head(c.kinds, n_kv, r, kind) : r;
}

// What CTA blockIdx.x of an attention kernel works on: CTAs [0, n_retrieval * n_splits) are
// the splits of the retrieval KV heads (head-major), the rest one streaming KV head each.
struct CtaWork {
  bool streaming;  // a streaming head's sink + ring rows, all in one CTA
  bool direct;     // writes its output itself (streaming, or a retrieval head without splits)
  int split;       // split index (0 for a streaming head)
  int kvh;         // the KV head
  int h0;          // its first query head (kvh * G)
  int begin, end;  // keys [begin, end) (rows of the sink + ring buffer for a streaming head)
};

// The CTA's work for p at n_past positions. Streaming heads: after the current token is
// appended, every valid row of the sink + ring buffer is visible, one contiguous run.
template <int G>
__device__ __forceinline__ CtaWork cta_work(const DecodeParams& p, int n_past) {
  const DecodeArgs& a = p.a;
  const LayerKv& c = a.cache;
  const int cta = blockIdx.x, n_split_ctas = p.n_retrieval * p.n_splits;
  CtaWork w;
  w.streaming = cta >= n_split_ctas;
  w.split = w.streaming ? 0 : cta % p.n_splits;
  w.kvh = w.streaming ? nth_head(c, a.n_kv_heads, cta - n_split_ctas, 1)
                      : nth_head(c, a.n_kv_heads, cta / p.n_splits, 0);
  w.direct = w.streaming || p.n_splits == 1;
  if (w.streaming) {
    w.begin = 0, w.end = min(n_past, c.window().rows());
  } else {
    const int st = p.split_tokens > 0 ? p.split_tokens : device_split_tokens(n_past, p.n_splits);
    w.begin = w.split * st, w.end = min(n_past, w.begin + st);
  }
  w.h0 = w.kvh * G;
  return w;
}

// Whether the CTA has keys to attend to. An empty split contributes nothing to the merge: it
// writes only its log-sum-exp, -inf (the merge then skips its stale partial output).
template <int G>
__device__ __forceinline__ bool cta_has_keys(const DecodeParams& p, const CtaWork& w) {
  if (w.begin < w.end) return true;
  if (!w.direct && threadIdx.x < G) p.part_lse[(int64_t)(w.h0 + threadIdx.x) * p.n_splits + w.split] = -INFINITY;
  return false;
}

// Shared-memory home of the online-softmax states of a CTA's STREAMS warps,
// for the merge at the end of the CTA.
template <int D, int G, int STREAMS>
struct CtaStates {
  float m[STREAMS][G], l[STREAMS][G];
  float o[STREAMS][G][D];
};

// The end of an attention CTA, once every stream has written its state to s (and the CTA has
// synchronised): merges the STREAMS states of each query head and writes the output (direct)
// or the split's partials for the merge kernel.
template <int D, int G, int STREAMS>
__device__ __forceinline__ void write_merged(const DecodeParams& p, const CtaWork& w, const CtaStates<D, G, STREAMS>& s) {
  for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
    const int g = idx / D, dd = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int s2 = 0; s2 < STREAMS; ++s2) M = fmaxf(M, s.m[s2][g]);
    float L = 0.0f, O = 0.0f;
#pragma unroll
    for (int s2 = 0; s2 < STREAMS; ++s2) {
      const float ws = s.m[s2][g] == -INFINITY ? 0.0f : exp2f(s.m[s2][g] - M);
      L += ws * s.l[s2][g];
      O += ws * s.o[s2][g][dd];
    }
    const int h = w.h0 + g;
    if (w.direct) {
      p.a.out[(int64_t)h * D + dd] = __float2bfloat16(L > 0.0f ? O / L : 0.0f);
    } else {
      p.part_o[((int64_t)h * p.n_splits + w.split) * D + dd] = L > 0.0f ? O / L : 0.0f;
      if (dd == 0) p.part_lse[(int64_t)h * p.n_splits + w.split] = L > 0.0f ? M + log2f(L) : -INFINITY;
    }
  }
}

// One CTA a query head of a retrieval KV head: out = sum_s w_s o_s / sum_s w_s, w_s = 2^lse_s.
// The split weights are computed once into shared memory; then kMergeThreads / D groups of D
// threads each sum a share of the splits (loads unrolled, so many are in flight: a loop with
// one load an iteration waits out the memory latency once per split, ~100 splits a head).
constexpr int kMergeThreads = 512, kMaxMergeSplits = 2048;
template <int D, int G>
__global__ void __launch_bounds__(kMergeThreads)
    merge_kernel(const __grid_constant__ DecodeParams one, const DecodeParams* __restrict__ items) {
  constexpr int kGroups = kMergeThreads / D;
  __shared__ float w_s[kMaxMergeSplits];
  __shared__ float part[kGroups][D];
  __shared__ float red[kMergeThreads / 32];
  const DecodeParams& p = params_of(one, items);
  if (p.n_splits <= 1 || (int)blockIdx.x >= p.n_retrieval * G) return;  // (a batch item without splits)
  const int kvh = nth_head(p.a.cache, p.a.n_kv_heads, blockIdx.x / G, 0);
  const int h = kvh * G + blockIdx.x % G, S = p.n_splits;
  const float* lse = p.part_lse + (int64_t)h * S;
  float M = -INFINITY;
  for (int s = threadIdx.x; s < S; s += kMergeThreads) M = fmaxf(M, lse[s]);
  M = warp_max(M);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = M;
  __syncthreads();
  M = red[0];
#pragma unroll
  for (int i = 1; i < kMergeThreads / 32; ++i) M = fmaxf(M, red[i]);
  for (int s = threadIdx.x; s < S; s += kMergeThreads) w_s[s] = lse[s] == -INFINITY ? 0.0f : exp2f(lse[s] - M);
  __syncthreads();
  const int dd = threadIdx.x % D, grp = threadIdx.x / D;
  const float* po = p.part_o + (int64_t)h * S * D + dd;
  float O = 0.0f;
#pragma unroll 8
  for (int s = grp; s < S; s += kGroups) {
    // An empty split wrote only its lse (-inf, so w = 0); its part_o is stale workspace
    // memory that may hold NaN, and 0 * NaN is NaN: skip it, do not multiply.
    const float w = w_s[s], v = po[(int64_t)s * D];
    O += w != 0.0f ? w * v : 0.0f;
  }
  part[grp][dd] = O;
  float W = 0.0f;
  for (int s = threadIdx.x; s < S; s += kMergeThreads) W += w_s[s];
  W = warp_sum(W);
  __syncthreads();  // part[] written; red[] (the max) read by everyone
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = W;
  __syncthreads();
  if (grp == 0) {
    float Wt = 0.0f;
#pragma unroll
    for (int i = 0; i < kMergeThreads / 32; ++i) Wt += red[i];
    float Ot = 0.0f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) Ot += part[g][dd];
    p.a.out[(int64_t)h * D + dd] = __float2bfloat16(Wt > 0.0f ? Ot / Wt : 0.0f);
  }
}

template <int D, int G>
void launch_merge(const DecodeParams& one, const DecodeLaunch& l, cudaStream_t stream) {
  if (l.merge_heads > 0) {
    merge_kernel<D, G><<<dim3(l.merge_heads * G, l.n_items), kMergeThreads, 0, stream>>>(one, l.items);
    DUO_CUDA_TRY(cudaGetLastError());
  }
}

}  // namespace
}  // namespace duo::cuda::detail
