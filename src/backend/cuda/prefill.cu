// Pre-fill attention: FlashAttention-2-style tiled kernel on mma.sync m16n8k16 (bf16 in, fp32
// accumulate) with online softmax, templated over a mask policy (causal / Λ sink+recent).
//
// CTA = 4 warps, BM = 128 query rows of one query head (32 rows a warp, as two m16 tiles so
// each K/V fragment read from shared memory feeds two MMAs), key tiles of BN = 64 rows
// double-buffered with cp.async. Shared memory rows are XOR-swizzled in 16-byte chunks so
// ldmatrix is conflict-free. Key tiles that the mask hides entirely are never visited: a
// causal block visits tiles [0, qmax], a Λ block visits the sink tiles plus the tiles of its
// recent window, so a streaming head costs O(L * (sink + recent + tiles)) instead of O(L^2).
// Keys at positions < pos0 come from the cache (pages or sink+ring rows), the rest from the
// chunk's own K/V, so one kernel does both a whole prompt and a chunk after cached context.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/online_softmax.cuh"
#include "backend/cuda/prefill_sm90.cuh"

namespace duo::cuda {

namespace detail {
namespace {

constexpr int kWarps = 4, kThreads = kWarps * 32;
constexpr int kMt = 2;                     // m16 tiles a warp
constexpr int kBM = kWarps * 16 * kMt;     // 128 query rows a CTA
constexpr int kBN = 64;                    // keys a tile
template <int D>
constexpr int smem_bytes() {
  return (kBM * D + 4 * kBN * D) * (int)sizeof(bf16);  // Q + 2 stages of K and V
}

__device__ __forceinline__ int swz(int row, int chunk) { return ((chunk ^ (row & 7)) << 3); }

// Quantized caches: a key tile (kBN = 64 positions = one group, at >= sink16 and complete)
// dequantized from its page straight into the stage's K and V tiles, as bf16. Thread (rr, cc)
// fills the 8 channels cc of rows rr, rr + RPP, ...: its 8 key params once, then a row's codes
// (4 or 8 bytes) and, for values, the row's params word.
template <int D>
__device__ __forceinline__ void dequant_tile(const LayerKv& c, int kvh, int k0, bf16* sk, bf16* sv, int rr, int cc) {
  static_assert(kBN == kvq::kGroup, "a pre-fill key tile is one quantization group");
  constexpr int CPR = D / 8, RPP = kThreads / CPR;
  const int bits = c.type == KvType::Q8 ? 8 : 4;
  const kvq::QuantLayout L{D, bits};
  const int64_t page = c.page_table[(int64_t)kvh * c.max_pages + k0 / kPageTokens];
  const int gi = k0 % kPageTokens / kvq::kGroup;
  const uint8_t* kp = c.kq_pages + page * c.page_bytes;
  const uint8_t* vp = c.vq_pages + page * c.page_bytes;
  float ks[8], km[8];
  {
    const uint4* pw = reinterpret_cast<const uint4*>(kp + L.k_params(gi, cc * 8));
    const uint4 w0 = pw[0], w1 = pw[1];
    const uint32_t w[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) ks[e] = kvq::params_scale(w[e]), km[e] = kvq::params_min(w[e]);
  }
  // The 8 codes of channels 8 cc .. 8 cc + 7 of a row of codes.
  auto codes = [&](const uint8_t* row, int (&q)[8]) {
    if (bits == 8) {
      const uint2 u = *reinterpret_cast<const uint2*>(row + cc * 8);
#pragma unroll
      for (int e = 0; e < 4; ++e) q[e] = (u.x >> (8 * e)) & 255, q[e + 4] = (u.y >> (8 * e)) & 255;
    } else {
      const uint32_t u = *reinterpret_cast<const uint32_t*>(row + cc * 4);
#pragma unroll
      for (int e = 0; e < 8; ++e) q[e] = (u >> (4 * e)) & 15;
    }
  };
#pragma unroll 2
  for (int p = 0; p < kBN / RPP; ++p) {
    const int r = rr + p * RPP, t = gi * kvq::kGroup + r;
    int q[8];
    uint4 out;
    uint32_t* o32 = reinterpret_cast<uint32_t*>(&out);
    codes(kp + L.codes(t), q);
#pragma unroll
    for (int e = 0; e < 4; ++e)
      o32[e] = pack_bf16(kvq::decode(q[2 * e], ks[2 * e], km[2 * e]), kvq::decode(q[2 * e + 1], ks[2 * e + 1], km[2 * e + 1]));
    *reinterpret_cast<uint4*>(sk + r * D + swz(r, cc)) = out;
    const uint32_t vw = *reinterpret_cast<const uint32_t*>(vp + L.v_params(t, cc * 8 / kvq::kGroup));
    const float vs = kvq::params_scale(vw), vm = kvq::params_min(vw);
    codes(vp + L.codes(t), q);
#pragma unroll
    for (int e = 0; e < 4; ++e) o32[e] = pack_bf16(kvq::decode(q[2 * e], vs, vm), kvq::decode(q[2 * e + 1], vs, vm));
    *reinterpret_cast<uint4*>(sv + r * D + swz(r, cc)) = out;
  }
}

template <int D, class Mask, bool kStreaming>
__device__ __forceinline__ void prefill_head(const PrefillArgs& a, const Mask mask, int h, int qblock, bf16* smem) {
  constexpr int CPR = D / 8;          // 16-byte chunks a row
  constexpr int RPP = kThreads / CPR; // rows a load pass
  bf16* sQ = smem;
  bf16* sK = sQ + kBM * D;
  bf16* sV = sK + 2 * kBN * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int kvh = h / (a.n_heads / a.n_kv_heads);
  const int q0 = qblock * kBM;
  const int qmin = a.pos0 + q0, qmax = a.pos0 + min(q0 + kBM, a.n) - 1;
  const int kv_len = a.pos0 + a.n;
  int r0b, r0e, r1b, r1e;
  mask.tiles(qmin, qmax, kBN, r0b, r0e, r1b, r1e);
  const int n0 = r0e - r0b, ntiles = n0 + (r1e - r1b);
  auto tile_at = [&](int t) { return t < n0 ? r0b + t : r1b + (t - n0); };

  const int cc = tid % CPR, rr = tid / CPR;
#pragma unroll
  for (int p = 0; p < kBM / RPP; ++p) {
    const int r = rr + p * RPP, qi = q0 + r;
    const bf16* src = a.q + (int64_t)min(qi, a.n - 1) * a.q_stride + (int64_t)h * D + cc * 8;
    cp_async16(sQ + r * D + swz(r, cc), src, qi < a.n ? 16 : 0);
  }
  const LayerKv& c = a.cache;
  // Quantized retrieval heads: cached positions in complete groups [sink16, qend) are read by
  // dequant_tile; the others (sink rows, the residual [qend, pos0)) are bf16 rows.
  const bool quant = !kStreaming && quantized_cache(c);
  const int qend = a.pos0 / kvq::kGroup * kvq::kGroup;
  const int64_t slot = quant ? c.slot_of[kvh] : 0;
  auto load_kv = [&](int tile, int stage) {
    const int k0 = tile * kBN;
    if (quant && k0 >= c.sink16 && k0 + kBN <= qend) {
      dequant_tile<D>(c, kvh, k0, sK + stage * kBN * D, sV + stage * kBN * D, rr, cc);
      return;
    }
#pragma unroll
    for (int p = 0; p < kBN / RPP; ++p) {
      const int r = rr + p * RPP, j = k0 + r;
      const bf16 *kp = a.k, *vp = a.v;
      int bytes = 16;
      if (j >= kv_len) {
        bytes = 0;
      } else if (j >= a.pos0) {
        const int64_t off = (int64_t)(j - a.pos0) * a.kv_stride + (int64_t)kvh * D;
        kp += off, vp += off;
      } else if constexpr (kStreaming) {
        const int row = c.window().ring_row(j);
        const int64_t off = ((int64_t)kvh * c.window().rows() + row) * D;
        kp = c.k_ring + off, vp = c.v_ring + off;
      } else if (quant) {
        const int64_t off = j < c.sink16 ? (slot * c.sink16 + j) * D : (slot * kvq::kGroup + j % kvq::kGroup) * D;
        kp = (j < c.sink16 ? c.k_sink : c.k_resid) + off, vp = (j < c.sink16 ? c.v_sink : c.v_resid) + off;
      } else {
        const int page = c.page_table[kvh * c.max_pages + j / kPageTokens];
        const int64_t off = ((int64_t)page * kPageTokens + j % kPageTokens) * D;
        kp = c.k_pages + off, vp = c.v_pages + off;
      }
      const int dst = stage * kBN * D + r * D + swz(r, cc);
      cp_async16(sK + dst, kp + cc * 8, bytes);
      cp_async16(sV + dst, vp + cc * 8, bytes);
    }
  };

  float o[kMt][D / 8][4];
  float m[kMt][2], l[kMt][2];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int db = 0; db < D / 8; ++db) o[mt][db][0] = o[mt][db][1] = o[mt][db][2] = o[mt][db][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  const float sl2 = 1.4426950408889634f / sqrtf((float)D);  // softmax in base 2

  load_kv(tile_at(0), 0);
  cp_async_commit();
  for (int t = 0; t < ntiles; ++t) {
    const int stage = t & 1, tile = tile_at(t), k0 = tile * kBN;
    if (t + 1 < ntiles) {
      load_kv(tile_at(t + 1), stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* ks = sK + stage * kBN * D;
    const bf16* vs = sV + stage * kBN * D;

    // S = Q K^T
    float s[kMt][kBN / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb) s[mt][nb][0] = s[mt][nb][1] = s[mt][nb][2] = s[mt][nb][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[kMt][4];
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
        const int row = warp * 16 * kMt + mt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        ldmatrix_x4(qa[mt], sQ + row * D + swz(row, kk * 2 + lane / 16));
      }
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t kb[4];
        const int row = np * 16 + (lane % 8) + (lane / 16) * 8;
        ldmatrix_x4(kb, ks + row * D + swz(row, kk * 2 + (lane / 8) % 2));
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          mma_bf16(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma_bf16(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    // Mask, online softmax.
    const bool full = mask.tile_full(qmin, qmax, k0, k0 + kBN) && k0 + kBN <= kv_len;
    online_softmax_tile<kMt, kBN, D>(s, m, l, o, mask, full, qmin + warp * 16 * kMt, k0, kv_len, sl2, lane);

    // O += P V
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[kMt][4];
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
        pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        const int row = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        ldmatrix_x4_trans(vb, vs + row * D + swz(row, dp * 2 + lane / 16));
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          mma_bf16(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
          mma_bf16(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // Normalise, stage this warp's rows through its own rows of sQ, write 16-byte rows.
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float lt = l[mt][hr];
      lt += __shfl_xor_sync(0xffffffffu, lt, 1);
      lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
      const int row = warp * 16 * kMt + mt * 16 + lane / 4 + hr * 8;
#pragma unroll
      for (int db = 0; db < D / 8; ++db) {
        const int col = (lane % 4) * 2;
        *reinterpret_cast<uint32_t*>(sQ + row * D + swz(row, db) + col) =
            pack_bf16(o[mt][db][2 * hr] * inv, o[mt][db][2 * hr + 1] * inv);
      }
    }
  __syncwarp();
#pragma unroll
  for (int idx = lane; idx < 16 * kMt * CPR; idx += 32) {
    const int r = warp * 16 * kMt + idx / CPR, ch = idx % CPR, qi = q0 + r;
    if (qi < a.n)
      *reinterpret_cast<uint4*>(a.out + (int64_t)qi * a.o_stride + (int64_t)h * D + ch * 8) =
          *reinterpret_cast<const uint4*>(sQ + r * D + swz(r, ch));
  }
}

template <int D, int kMode>
__global__ void __launch_bounds__(kThreads, 2) prefill_kernel(const PrefillArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  const int h = blockIdx.x;
  const int qblock = gridDim.y - 1 - blockIdx.y;  // longest (latest) query blocks first
  if constexpr (kMode == (int)HeadMode::AllRetrieval) {
    prefill_head<D, CausalMask<int>, false>(a, CausalMask<int>{}, h, qblock, smem);
  } else if constexpr (kMode == (int)HeadMode::AllStreaming) {
    prefill_head<D, StreamingMask<int>, true>(a, StreamingMask<int>{a.cache.window()}, h, qblock, smem);
  } else {
    const int kvh = h / (a.n_heads / a.n_kv_heads);
    if (a.cache.kinds[kvh] == 0)
      prefill_head<D, CausalMask<int>, false>(a, CausalMask<int>{}, h, qblock, smem);
    else
      prefill_head<D, StreamingMask<int>, true>(a, StreamingMask<int>{a.cache.window()}, h, qblock, smem);
  }
}

template <int D, int kMode>
void launch_prefill(const PrefillArgs& a, cudaStream_t stream) {
  constexpr int smem = smem_bytes<D>();
  static bool configured = false;  // attribute set once a process per instantiation
  if (!configured) {
    DUO_CUDA_TRY(cudaFuncSetAttribute(prefill_kernel<D, kMode>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  dim3 grid(a.n_heads, (a.n + kBM - 1) / kBM);
  prefill_kernel<D, kMode><<<grid, kThreads, smem, stream>>>(a);
  DUO_CUDA_TRY(cudaGetLastError());
}

template <int D>
void dispatch_mode(const PrefillArgs& a, cudaStream_t stream) {
  switch (a.cache.mode) {
    case HeadMode::AllRetrieval: return launch_prefill<D, 0>(a, stream);
    case HeadMode::AllStreaming: return launch_prefill<D, 1>(a, stream);
    case HeadMode::Mixed: return launch_prefill<D, 2>(a, stream);
  }
}

// DUO_PREFILL_KERNEL, read once: the kernel Auto means (Auto when unset).
PrefillKernel env_kernel() {
  static const PrefillKernel k = [] {
    const char* e = std::getenv("DUO_PREFILL_KERNEL");
    if (!e || !*e || !std::strcmp(e, "auto")) return PrefillKernel::Auto;
    if (!std::strcmp(e, "mma")) return PrefillKernel::Mma;
    if (!std::strcmp(e, "wgmma")) return PrefillKernel::Wgmma;
    if (!std::strcmp(e, "wgmma_serial")) return PrefillKernel::WgmmaSerial;
    if (!std::strcmp(e, "wgmma_pingpong")) return PrefillKernel::WgmmaPingPong;
    fail_arg(std::string("DUO_PREFILL_KERNEL=") + e +
                                ": expected mma, wgmma, wgmma_serial, wgmma_pingpong or auto");
  }();
  return k;
}

}  // namespace
}  // namespace detail

const char* prefill_kernel_name(PrefillKernel k) {
  switch (k) {
    case PrefillKernel::Auto: return "auto";
    case PrefillKernel::Mma: return "mma";
    case PrefillKernel::Wgmma: return "wgmma";
    case PrefillKernel::WgmmaSerial: return "wgmma_serial";
    case PrefillKernel::WgmmaPingPong: return "wgmma_pingpong";
  }
  return "?";
}

bool prefill_wgmma_available() {
  PrefillArgs probe;  // aligned null pointers, head_dim 128: only the build and the device decide
  probe.head_dim = 128;
  return detail::prefill_sm90_unsupported(probe) == nullptr;
}

PrefillKernel prefill_kernel_for(const PrefillArgs& a) {
  if (quantized_cache(a.cache) && a.cache.mode != HeadMode::AllStreaming) {  // only mma dequantizes groups
    if (a.kernel != PrefillKernel::Auto && a.kernel != PrefillKernel::Mma)
      fail_arg(std::string("prefill_attention: ") + prefill_kernel_name(a.kernel) +
                                  " kernel requested but the cache is quantized (only mma reads quantized pages)");
    return PrefillKernel::Mma;
  }
  PrefillKernel k = a.kernel == PrefillKernel::Auto ? detail::env_kernel() : a.kernel;
  if (k == PrefillKernel::Auto)
    // Ping-pong wgmma: measured fastest on the H100 (8K / 32K causal: 609 / 569 TFLOP/s vs 598 / 550
    // for wgmma and 260 / 273 for mma; docs/results-gpu.md, history of the attention kernels, run 4) and passes every pre-fill test.
    return a.head_dim == 128 && !detail::prefill_sm90_unsupported(a) ? PrefillKernel::WgmmaPingPong : PrefillKernel::Mma;
  if (k != PrefillKernel::Mma)
    if (const char* why = detail::prefill_sm90_unsupported(a))
      fail_arg(std::string("prefill_attention: ") + prefill_kernel_name(k) + " kernel requested but " + why);
  return k;
}

void prefill_attention(const PrefillArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return;
  if (a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0)
    fail_arg("prefill_attention: n_heads must be a multiple of n_kv_heads");
  if (a.pos0 > 0 && a.cache.mode != HeadMode::AllStreaming && !a.cache.page_table)
    fail_arg("prefill_attention: pos0 > 0 needs a paged cache");
  if (quantized_cache(a.cache) && a.cache.mode != HeadMode::AllStreaming &&
      (!a.cache.kq_pages || !a.cache.vq_pages || !a.cache.slot_of || !a.cache.k_resid ||
       (a.cache.sink16 > 0 && !a.cache.k_sink)))
    fail_arg("prefill_attention: the quantized cache view is incomplete");
  if (a.cache.mode != HeadMode::AllRetrieval && (a.cache.recent < 1 || a.cache.sink < 0))
    fail_arg("prefill_attention: streaming window needs recent >= 1, sink >= 0");
  if (a.retrieval_kv_heads != 0 && (a.cache.mode != HeadMode::Mixed || a.retrieval_kv_heads < 0 ||
                                    a.retrieval_kv_heads >= a.n_kv_heads))
    fail_arg("prefill_attention: retrieval_kv_heads is for Mixed heads, in [1, n_kv_heads)");
  if (const PrefillKernel k = prefill_kernel_for(a); k != PrefillKernel::Mma)
    return detail::prefill_sm90(a, k, stream);
  if (a.head_dim == 128) return detail::dispatch_mode<128>(a, stream);
  if (a.head_dim == 64) return detail::dispatch_mode<64>(a, stream);
  fail_arg("prefill_attention: head_dim must be 64 or 128");
}

}  // namespace duo::cuda
