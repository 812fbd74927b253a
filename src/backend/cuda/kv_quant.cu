// KIVI group quantization of the retrieval heads' KV pages (layout and arithmetic: kv/kv_quant.h,
// shared with the CPU cache, so the pages written here are the CPU's bytes exactly).
//
// quantize_kernel: one CTA (128 threads) a (retrieval head, completed group of 64 positions).
// The group's 64 bf16 rows (from the residual and/or the chunk) are staged in shared memory as
// floats; keys: a thread a channel finds the channel's range over the 64 positions and writes
// its params word; values: a thread a (position, 64-channel group) pair; then all threads write
// the packed codes, consecutive threads consecutive bytes. It runs once per 64 positions per
// head, so it is not on any hot path.
#include <algorithm>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/synthetic.h"
#include "kv/kv_quant.h"

namespace duo::cuda {
namespace detail {
namespace {

constexpr int kQuantThreads = 128;
constexpr int G = kvq::kGroup;

struct QuantizeParams {
  const bf16* k;  // chunk rows (nullptr: every row is in the residual)
  const bf16* v;
  int64_t kv_stride;
  int n, pos0, n_kv;
  const int32_t* pos_d;
  LayerKv c;
};

template <int D, int BITS>
__global__ void __launch_bounds__(kQuantThreads) quantize_kernel(const QuantizeParams p) {
  constexpr int RB = D * BITS / 8;  // code bytes a position
  constexpr int CG = D / G;         // value channel groups
  __shared__ float sm[G][D + 1];    // +1: the per-position passes read rows without bank conflicts
  __shared__ float s_scale[D], s_min[D];  // keys: per channel; values: per (position, group) = G * CG = D
  const LayerKv& c = p.c;
  const int pos0 = p.pos_d ? *p.pos_d : p.pos0, end = pos0 + p.n;
  const int g = max(c.sink16 / G, pos0 / G) + (int)blockIdx.y;  // the group this CTA quantizes
  if ((g + 1) * G > end) return;                                 // not completed by this chunk
  const int kvh = c.mode == HeadMode::Mixed ? nth_kv_head(c.kinds, p.n_kv, (int)blockIdx.x, 0) : (int)blockIdx.x;
  const int64_t slot = c.slot_of[kvh];
  const int64_t page = c.page_table[(int64_t)kvh * c.max_pages + g / kvq::kGroupsPerPage];
  const int gi = g % kvq::kGroupsPerPage;
  const kvq::QuantLayout L{D, BITS};
  const int tid = threadIdx.x;

  for (int pass = 0; pass < 2; ++pass) {  // 0: keys, 1: values
    const bool keys = pass == 0;
    const bf16* chunk = keys ? p.k : p.v;
    const bf16* resid = (keys ? c.k_resid : c.v_resid) + slot * G * D;
    uint8_t* dst = (keys ? c.kq_pages : c.vq_pages) + page * c.page_bytes;
    for (int idx = tid; idx < G * D; idx += kQuantThreads) {
      const int t = idx / D, ch = idx % D, pos = g * G + t;
      const bf16* src = chunk && pos >= pos0 ? chunk + (int64_t)(pos - pos0) * p.kv_stride + (int64_t)kvh * D
                                             : resid + (int64_t)t * D;  // residual row = pos % 64 = t
      sm[t][ch] = __bfloat162float(src[ch]);
    }
    __syncthreads();
    if (keys) {
      for (int ch = tid; ch < D; ch += kQuantThreads) {
        float lo = INFINITY, hi = -INFINITY;
        for (int t = 0; t < G; ++t) lo = fminf(lo, sm[t][ch]), hi = fmaxf(hi, sm[t][ch]);
        const uint32_t w = kvq::make_params(lo, hi, BITS);
        *reinterpret_cast<uint32_t*>(dst + L.k_params(gi, ch)) = w;
        s_scale[ch] = kvq::params_scale(w), s_min[ch] = kvq::params_min(w);
      }
    } else {
      for (int idx = tid; idx < G * CG; idx += kQuantThreads) {
        const int t = idx / CG, cg = idx % CG;
        float lo = INFINITY, hi = -INFINITY;
        for (int ch = cg * G; ch < (cg + 1) * G; ++ch) lo = fminf(lo, sm[t][ch]), hi = fmaxf(hi, sm[t][ch]);
        const uint32_t w = kvq::make_params(lo, hi, BITS);
        *reinterpret_cast<uint32_t*>(dst + L.v_params(gi * G + t, cg)) = w;
        s_scale[idx] = kvq::params_scale(w), s_min[idx] = kvq::params_min(w);
      }
    }
    __syncthreads();
    for (int idx = tid; idx < G * RB; idx += kQuantThreads) {
      const int t = idx / RB, b = idx % RB;
      auto code = [&](int ch) {
        const int pi = keys ? ch : t * CG + ch / G;
        return kvq::encode(sm[t][ch], s_scale[pi], s_min[pi], BITS);
      };
      const int byte = BITS == 8 ? code(b) : code(2 * b) | (code(2 * b + 1) << 4);
      dst[L.codes(gi * G + t) + b] = (uint8_t)byte;
    }
    __syncthreads();  // sm and the params are reused by the next pass
  }
}

template <int D, int BITS>
void launch_quantize(const QuantizeParams& p, int retrieval, int groups, cudaStream_t stream) {
  quantize_kernel<D, BITS><<<dim3((unsigned)retrieval, (unsigned)groups), kQuantThreads, 0, stream>>>(p);
  DUO_CUDA_TRY(cudaGetLastError());
}

// Benchmarks: random codes, and one valid params word (scale, min) in every params slot.
__global__ void fill_quant_pages_kernel(uint32_t* pool, int64_t words, int64_t page_words, int64_t code_words,
                                        uint64_t seed, uint32_t params) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += (int64_t)gridDim.x * blockDim.x)
    pool[i] = i % page_words < code_words ? (uint32_t)mix64(seed ^ mix64((uint64_t)i)) : params;
}

}  // namespace
}  // namespace detail

void kv_quantize(const bf16* k, const bf16* v, int64_t kv_stride, int n, int pos0, int n_kv_heads, int head_dim,
                 int retrieval_kv_heads, const LayerKv& cache, cudaStream_t stream, const int32_t* pos_d) {
  if (!quantized_cache(cache) || n <= 0 || retrieval_kv_heads <= 0) return;
  if (head_dim != 64 && head_dim != 128) fail_arg("kv_quantize: head_dim must be 64 or 128");
  if (!cache.kq_pages || !cache.vq_pages || !cache.k_resid || !cache.slot_of || cache.page_bytes <= 0)
    fail_arg("kv_quantize: the layer view has no quantized pages");
  if ((k == nullptr) != (v == nullptr)) fail_arg("kv_quantize: give both k and v, or neither");
  if (pos_d && n != 1) fail_arg("kv_quantize: a device position needs n = 1");
  if (retrieval_kv_heads > n_kv_heads) fail_arg("kv_quantize: more retrieval heads than heads");
  detail::QuantizeParams p{k, v, kv_stride, n, pos0, n_kv_heads, pos_d, cache};
  // Groups a chunk can complete: the one holding pos0, and one more every 64 positions.
  const int groups = pos_d ? 1 : (n + kvq::kGroup - 1) / kvq::kGroup + 1;
  const bool q8 = cache.type == KvType::Q8;
  if (head_dim == 128)
    q8 ? detail::launch_quantize<128, 8>(p, retrieval_kv_heads, groups, stream)
       : detail::launch_quantize<128, 4>(p, retrieval_kv_heads, groups, stream);
  else
    q8 ? detail::launch_quantize<64, 8>(p, retrieval_kv_heads, groups, stream)
       : detail::launch_quantize<64, 4>(p, retrieval_kv_heads, groups, stream);
}

void fill_quant_pages(uint8_t* pool, int64_t pages, int64_t page_bytes, int64_t code_bytes, uint64_t seed,
                      uint32_t params, cudaStream_t stream) {
  if (pages <= 0) return;
  if (page_bytes % 4 || code_bytes % 4) fail_arg("fill_quant_pages: sizes must be multiples of 4");
  const int64_t words = pages * page_bytes / 4;
  const unsigned blocks = (unsigned)std::max<int64_t>(1, std::min<int64_t>((words + 255) / 256, 1 << 16));
  detail::fill_quant_pages_kernel<<<blocks, 256, 0, stream>>>(reinterpret_cast<uint32_t*>(pool), words,
                                                              page_bytes / 4, code_bytes / 4, seed, params);
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace duo::cuda
