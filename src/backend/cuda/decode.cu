// Decode attention (one query token) in the flash-decoding style, and the KV append kernel.
//
// decode_kernel: a 1-D grid of 128-thread CTAs: retrieval KV heads x splits, then one CTA a
// streaming KV head. A CTA owns one KV head and one run of keys (a split, or a streaming head's
// sink + ring rows), and all G query heads of that GQA group, so each K/V row is read from
// memory exactly once. Memory-bound design: no shared-memory staging; a key row (d bf16) is
// read by D/8 lanes with 16-byte loads (a half-warp for d=128), a warp handles 32/(D/8) keys
// per load and U loads of K and V are in flight per thread before any use. Each lane group
// keeps its own online-softmax state (m, l, o) for the G heads, so the inner loop needs only
// the in-group shuffle reduction of the dot products; the states are merged through shared
// memory at the end. A split writes (o / l, log2-sum-exp) to the workspace, and merge_kernel
// combines the splits; with one split the CTA writes the output directly.
// Streaming heads: after the current token is appended, every valid row of the sink + ring
// buffer (rows [0, min(n_past, sink + recent))) is visible to it, so they are one contiguous
// run, one CTA that writes its output directly. Both kinds run in one launch, sized so every
// CTA is resident at once (one wave): the short streaming CTAs never delay a retrieval split.
// The split count does not depend on n_past (only each split's size does, computed on the
// device), so the launch can be captured once in a CUDA graph and replayed at every position.
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/decode_split.cuh"
#include "backend/cuda/reduce.cuh"

namespace duo::cuda {
namespace detail {
namespace {

template <int D, int G>
__global__ void __launch_bounds__(kDecThreads, G <= 4 ? 3 : 2) decode_kernel(const DecodeParams p) {
  constexpr int LANES = D / 8;        // lanes a key row
  constexpr int KPW = 32 / LANES;     // keys a warp-load
  constexpr int STREAMS = kDecWarps * KPW;
  constexpr int U = G <= 4 ? 8 : 4;   // loads in flight a thread (each K and V)
  const DecodeArgs& a = p.a;
  const LayerKv& c = a.cache;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane / LANES, cl = lane % LANES, stream = warp * KPW + sub;
  const int n_past = decode_n_past(a);
  const int item = blockIdx.x, n_items = p.n_retrieval * p.n_splits;
  const bool streaming = item >= n_items;
  const int split = streaming ? 0 : item % p.n_splits;
  const int kvh = streaming ? nth_head(c, a.n_kv_heads, item - n_items, 1)
                            : nth_head(c, a.n_kv_heads, item / p.n_splits, 0);
  // A streaming head, or a retrieval head without splits, writes its output directly.
  const bool direct = streaming || p.n_splits == 1;

  int begin, end;
  if (streaming) {
    begin = 0, end = min(n_past, c.sink + c.recent);
  } else {
    const int st = p.split_tokens > 0 ? p.split_tokens : device_split_tokens(n_past, p.n_splits);
    begin = split * st, end = min(n_past, begin + st);
  }
  const int h0 = kvh * G;
  if (begin >= end) {  // empty split: contributes nothing to the merge
    if (!direct && threadIdx.x < G) p.part_lse[(int64_t)(h0 + threadIdx.x) * p.n_splits + split] = -INFINITY;
    return;
  }

  const float sl2 = 1.4426950408889634f / sqrtf((float)D);
  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const uint4 u = *reinterpret_cast<const uint4*>(a.q + (int64_t)(h0 + g) * D + cl * 8);
    bf16x8_to_float(u, q[g]);
#pragma unroll
    for (int e = 0; e < 8; ++e) q[g][e] *= sl2;
  }
  float m[G], l[G], o[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) o[g][e] = 0.0f;
  }

  const bf16* kbase = streaming ? c.k_ring + (int64_t)kvh * (c.sink + c.recent) * D : c.k_pages;
  const bf16* vbase = streaming ? c.v_ring + (int64_t)kvh * (c.sink + c.recent) * D : c.v_pages;
  const int32_t* pt = c.page_table + (int64_t)kvh * c.max_pages;
  constexpr int STEP = kDecWarps * KPW * U;
  // The KPW * U keys of a warp-iteration lie in one page (splits start at multiples of 64), so
  // one page-table entry serves an iteration; the next one is fetched while K/V are in flight.
  static_assert(kPageTokens % (KPW * U) == 0 && 64 % (KPW * U) == 0, "warp-iteration must stay inside a page");
  int base = begin + warp * KPW * U;
  int64_t page_row = streaming || base >= end ? 0 : (int64_t)pt[base / kPageTokens] * kPageTokens;
  for (; base < end; base += STEP) {
    const int next = base + STEP;
    int32_t next_page = 0;
    if (!streaming && next < end) next_page = pt[next / kPageTokens];
    uint4 kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + u * KPW + sub;
      if (key < end) {
        const int64_t row = streaming ? (int64_t)key : page_row + key % kPageTokens;
        kr[u] = __ldcs(reinterpret_cast<const uint4*>(kbase + row * D) + cl);
        vr[u] = __ldcs(reinterpret_cast<const uint4*>(vbase + row * D) + cl);
      } else {
        kr[u] = make_uint4(0, 0, 0, 0), vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    float s[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      bf16x8_to_float(kr[u], kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d = fmaf(q[g][e], kf[e], d);
#pragma unroll
        for (int off = LANES / 2; off > 0; off /= 2) d += __shfl_xor_sync(0xffffffffu, d, off);
        s[u][g] = base + u * KPW + sub < end ? d : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][g]);
      // A lane group whose keys all lie past `end` (sub > 0 in a warp's last iteration, or a
      // split shorter than a warp-iteration) has seen no key yet: mx is -inf, and exp2(-inf - -inf)
      // would be NaN. Use 0 as the reference then: alpha and every p come out exactly 0.
      const float ref = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2f(m[g] - ref);
      m[g] = mx;
      l[g] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; ++e) o[g][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pr = exp2f(s[u][g] - ref);
        l[g] += pr;
        float vf[8];
        bf16x8_to_float(vr[u], vf);
#pragma unroll
        for (int e = 0; e < 8; ++e) o[g][e] = fmaf(pr, vf[e], o[g][e]);
      }
    }
    page_row = (int64_t)next_page * kPageTokens;
  }

  // Merge the STREAMS lane groups of the CTA.
  __shared__ float sm_m[STREAMS][G], sm_l[STREAMS][G];
  __shared__ float sm_o[STREAMS][G][D];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (cl == 0) sm_m[stream][g] = m[g], sm_l[stream][g] = l[g];
#pragma unroll
    for (int e = 0; e < 8; ++e) sm_o[stream][g][cl * 8 + e] = o[g][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * D; idx += kDecThreads) {
    const int g = idx / D, dd = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int s2 = 0; s2 < STREAMS; ++s2) M = fmaxf(M, sm_m[s2][g]);
    float L = 0.0f, O = 0.0f;
#pragma unroll
    for (int s2 = 0; s2 < STREAMS; ++s2) {
      const float w = sm_m[s2][g] == -INFINITY ? 0.0f : exp2f(sm_m[s2][g] - M);
      L += w * sm_l[s2][g];
      O += w * sm_o[s2][g][dd];
    }
    const int h = h0 + g;
    if (direct) {
      a.out[(int64_t)h * D + dd] = __float2bfloat16(L > 0.0f ? O / L : 0.0f);
    } else {
      p.part_o[((int64_t)h * p.n_splits + split) * D + dd] = L > 0.0f ? O / L : 0.0f;
      if (dd == 0) p.part_lse[(int64_t)h * p.n_splits + split] = L > 0.0f ? M + log2f(L) : -INFINITY;
    }
  }
}

template <int D, int G>
void launch_decode(const DecodeParams& p, cudaStream_t stream) {
  const int streaming_heads = p.a.n_kv_heads - p.n_retrieval;
  decode_kernel<D, G><<<p.n_retrieval * p.n_splits + streaming_heads, kDecThreads, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "decode_attention launch");
  launch_merge<D, G>(p, stream);
}

template <int D>
void dispatch_group(const DecodeParams& p, cudaStream_t stream) {
  switch (p.a.n_heads / p.a.n_kv_heads) {
    case 1: return launch_decode<D, 1>(p, stream);
    case 2: return launch_decode<D, 2>(p, stream);
    case 3: return launch_decode<D, 3>(p, stream);
    case 4: return launch_decode<D, 4>(p, stream);
    case 5: return launch_decode<D, 5>(p, stream);
    case 6: return launch_decode<D, 6>(p, stream);
    case 7: return launch_decode<D, 7>(p, stream);
    case 8: return launch_decode<D, 8>(p, stream);
    default: throw std::invalid_argument("decode_attention: at most 8 query heads a KV head");
  }
}

int sm_count() {
  static int n = [] {
    int dev = 0, v = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev), "SM count");
    return v;
  }();
  return n;
}

template <int D, int G>
int resident_ctas() {
  static int n = [] {
    int v = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, decode_kernel<D, G>, kDecThreads, 0),
               "decode occupancy");
    return std::max(1, v);
  }();
  return n;
}

int resident_ctas(int d, int g) {
  // G <= 4 kernels fit 3 CTAs an SM and G > 4 two (launch bounds); read it off the device.
  if (d == 128) return g <= 4 ? resident_ctas<128, 4>() : resident_ctas<128, 8>();
  return g <= 4 ? resident_ctas<64, 4>() : resident_ctas<64, 8>();
}

// Retrieval KV heads of a launch (validated).
int retrieval_heads(const DecodeArgs& a) {
  switch (a.cache.mode) {
    case HeadMode::AllRetrieval:
      if (a.retrieval_kv_heads != 0 && a.retrieval_kv_heads != a.n_kv_heads)
        throw std::invalid_argument("decode_attention: retrieval_kv_heads must be 0 or n_kv_heads for AllRetrieval");
      return a.n_kv_heads;
    case HeadMode::AllStreaming: return 0;
    case HeadMode::Mixed:
      if (a.retrieval_kv_heads <= 0 || a.retrieval_kv_heads >= a.n_kv_heads)
        throw std::invalid_argument("decode_attention: Mixed heads need retrieval_kv_heads in [1, n_kv_heads)");
      return a.retrieval_kv_heads;
  }
  throw std::invalid_argument("decode_attention: bad head mode");
}

// Splits a retrieval head, and their size (0: computed on the device from n_past).
void choose_splits(const DecodeArgs& a, int& n_splits, int& split_tokens) {
  const int R = retrieval_heads(a);
  if (R == 0) {
    n_splits = 1, split_tokens = 0;
    return;
  }
  if (a.split_tokens > 0 && !a.pos_d) {
    split_tokens = (a.split_tokens + 63) / 64 * 64;
    n_splits = std::max(1, (a.n_past + split_tokens - 1) / split_tokens);
    return;
  }
  if (a.split_tokens > 0) throw std::invalid_argument("decode_attention: split_tokens needs a host n_past (no pos_d)");
  // One full wave: the retrieval splits plus one CTA a streaming head fill every resident CTA
  // slot once (a second, partial wave would leave most SMs idle at the end).
  const int g = a.n_heads / a.n_kv_heads;
  const int per_sm = quantized_cache(a.cache) ? decode_quant_resident_ctas(a.head_dim, g, a.cache.type)
                                              : resident_ctas(a.head_dim, g);  // (R > 0 here)
  const int slots = per_sm * sm_count();
  n_splits = std::max(1, (slots - (a.n_kv_heads - R)) / R);
  if (a.n_past > 0) n_splits = std::min(n_splits, std::max(1, (a.n_past + 255) / 256));  // >= 256 keys a split
  split_tokens = 0;
}

// kv_append: one CTA a chunk token, one thread a 16-byte piece of a row of each KV head.
__global__ void append_kernel(const bf16* k, const bf16* v, int64_t kv_stride, int n, int pos0_host, int n_kv,
                              int d, const LayerKv c, const int32_t* pos_d) {
  const int pos0 = pos_d ? *pos_d : pos0_host;
  const int r = blockIdx.x, pos = pos0 + r;
  const int cpr = d / 8;
  for (int idx = threadIdx.x; idx < n_kv * cpr; idx += blockDim.x) {
    const int h = idx / cpr, ch = idx % cpr;
    bf16 *kd, *vd;
    if (!cache_rows(c, h, pos, pos0 + n, d, kd, vd)) continue;
    const int64_t src = (int64_t)r * kv_stride + (int64_t)h * d + ch * 8;
    reinterpret_cast<uint4*>(kd)[ch] = *reinterpret_cast<const uint4*>(k + src);
    reinterpret_cast<uint4*>(vd)[ch] = *reinterpret_cast<const uint4*>(v + src);
  }
}

}  // namespace
}  // namespace detail

size_t decode_workspace_bytes(int n_heads, int head_dim, int max_splits) {
  return (size_t)n_heads * max_splits * (head_dim + 1) * sizeof(float);
}

int decode_splits(const DecodeArgs& a) {
  if (!a.pos_d && a.n_past <= 0) throw std::invalid_argument("decode_attention: n_past must be > 0");
  int n = 1, t = 0;
  detail::choose_splits(a, n, t);
  return n;
}

void decode_attention(const DecodeArgs& a, cudaStream_t stream) {
  if (!a.pos_d && a.n_past <= 0) throw std::invalid_argument("decode_attention: n_past must be > 0");
  if (a.pos_d && a.n_past < 0) throw std::invalid_argument("decode_attention: negative n_past bound");
  if (a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0)
    throw std::invalid_argument("decode_attention: n_heads must be a multiple of n_kv_heads");
  detail::DecodeParams p;
  p.a = a;
  p.n_retrieval = detail::retrieval_heads(a);
  detail::choose_splits(a, p.n_splits, p.split_tokens);
  if (p.n_splits > detail::kMaxMergeSplits)
    throw std::invalid_argument("decode_attention: more than 2048 splits (raise split_tokens)");
  if (p.n_splits > 1) {
    if (!a.workspace || a.workspace_bytes < decode_workspace_bytes(a.n_heads, a.head_dim, p.n_splits))
      throw std::invalid_argument("decode_attention: workspace too small for the splits");
    p.part_o = static_cast<float*>(a.workspace);
    p.part_lse = p.part_o + (size_t)a.n_heads * p.n_splits * a.head_dim;
  } else {
    p.part_o = p.part_lse = nullptr;
  }
  if (a.head_dim != 64 && a.head_dim != 128) throw std::invalid_argument("decode_attention: head_dim must be 64 or 128");
  if (a.n_heads / a.n_kv_heads > 8) throw std::invalid_argument("decode_attention: at most 8 query heads a KV head");
  // A layer without retrieval heads reads only bf16 rings, whatever the cache's type.
  if (quantized_cache(a.cache) && p.n_retrieval > 0) return detail::launch_decode_quant(p, stream);
  if (a.head_dim == 128) return detail::dispatch_group<128>(p, stream);
  return detail::dispatch_group<64>(p, stream);
}

void kv_append(const bf16* k, const bf16* v, int64_t kv_stride, int n, int pos0, int n_kv_heads, int head_dim,
               const LayerKv& cache, cudaStream_t stream, const int32_t* pos_d) {
  if (n <= 0) return;
  if (head_dim % 8 != 0) throw std::invalid_argument("kv_append: head_dim must be a multiple of 8");
  detail::append_kernel<<<n, 256, 0, stream>>>(k, v, kv_stride, n, pos0, n_kv_heads, head_dim, cache, pos_d);
  check_cuda(cudaGetLastError(), "kv_append launch");
}

}  // namespace duo::cuda
