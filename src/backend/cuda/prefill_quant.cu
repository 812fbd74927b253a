// Pre-fill over a quantized past (q8 / q4 retrieval pages) through a bf16 scratch: one
// memory-bound kernel dequantizes every retrieval head's positions [0, pos0) into pages laid out
// exactly like a bf16 paged cache (attention.cuh), then the chunk runs the ordinary bf16 pre-fill
// (the Hopper wgmma kernel where it can run) over a bf16 LayerKv view whose retrieval pages are
// the scratch. Streaming heads are bf16 sink + ring rows in every cache type, so the view keeps
// them as they are.
//
// Why: the mma.sync kernel that dequantizes groups into its shared-memory tiles (prefill.cu) is
// ~3.2x slower than wgmma over bf16 at 32K. The dequantization reads the past once a layer and
// chunk (O(past x d) bytes) where the attention does O(chunk x past x d) multiply-adds, so for
// chunks of a few thousand tokens it costs a few percent of the attention.
//
// dequant_past_kernel: one CTA (128 threads) a (group of 64 positions, KV head). Its 64 rows
// come from one of three places (the cache's state is a function of pos0, attention.cuh):
//  - a group below sink16: the head's bf16 sink rows (copied);
//  - a complete group at >= sink16: K and V codes (16-byte loads, all of them issued before
//    anything waits) and params (into shared memory as floats, each byte read once); a thread
//    decodes one 16-byte chunk of codes (16 channels at q8, 32 at q4) into 2 or 4 16-byte stores;
//  - the last, incomplete group: the head's bf16 residual rows (copied).
// The decoded value is kvq::decode's min + scale * code, which is exact up to its one rounding
// (scale is a half, so scale * code has <= 19 significant bits: fused or not, the same float),
// rounded to bf16 to nearest even: bit for bit the CPU's dequantize_group rounded to bf16.
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "kv/kv_quant.h"

namespace duo::cuda {
namespace detail {
namespace {

constexpr int kThreads = 128;
constexpr int G = kvq::kGroup;
constexpr size_t kTableAlign = 256;  // the K / V pages start 256-byte aligned after the page table

int64_t pages_for(int64_t tokens) { return (tokens + kPageTokens - 1) / kPageTokens; }

// KV heads whose pages the scratch holds: the retrieval heads (all heads when a Mixed layer's
// count is not given: slots stay below it).
int scratch_heads(const PrefillArgs& a) {
  switch (a.cache.mode) {
    case HeadMode::AllRetrieval: return a.n_kv_heads;
    case HeadMode::AllStreaming: return 0;
    case HeadMode::Mixed: return a.retrieval_kv_heads > 0 ? a.retrieval_kv_heads : a.n_kv_heads;
  }
  return a.n_kv_heads;
}

size_t table_bytes(int n_kv, int64_t pages) {
  return ((size_t)n_kv * (size_t)pages * sizeof(int32_t) + kTableAlign - 1) / kTableAlign * kTableAlign;
}

struct DequantParams {
  LayerKv c;        // the quantized view
  int pos0;         // positions [0, pos0) are dequantized
  int pages;        // scratch pages a retrieval head: pages_for(pos0)
  int32_t* table;   // [n_kv][pages]: the bf16 view's page table
  bf16* k_out;      // [slots * pages][kPageTokens][d]
  bf16* v_out;
};

// Loads are evict-first (__ldcs: every source byte is read once), stores plain write-back
// (__stwb: the attention reads them next) and 16 bytes wide.

// n (<= 64) consecutive bf16 rows of K and of V, 16 bytes a thread and step.
template <int D>
__device__ __forceinline__ void copy_rows(const bf16* ks, const bf16* vs, bf16* kd, bf16* vd, int n) {
  const int chunks = n * D / 8;
  const uint4* k4 = reinterpret_cast<const uint4*>(ks);
  const uint4* v4 = reinterpret_cast<const uint4*>(vs);
  uint4* kd4 = reinterpret_cast<uint4*>(kd);
  uint4* vd4 = reinterpret_cast<uint4*>(vd);
  for (int i = (int)threadIdx.x; i < chunks; i += kThreads) {
    const uint4 k = __ldcs(k4 + i), v = __ldcs(v4 + i);
    __stwb(kd4 + i, k);
    __stwb(vd4 + i, v);
  }
}

// Element e of a 16-byte chunk of codes (q8: byte e; q4: nibble e, element 2i low in byte i).
template <int BITS>
__device__ __forceinline__ int code_of(const uint4& u, int e) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
  if constexpr (BITS == 8)
    return (int)((w[e / 4] >> (8 * (e % 4))) & 255u);
  else
    return (int)((w[e / 8] >> (4 * (e % 8))) & 15u);
}

// Key params in shared memory: channel c at kskew(c), so the float4 reads of the threads of a
// quarter warp (chunks at channels 16 or 32 apart) fall in distinct banks.
__host__ __device__ constexpr int kskew(int c) { return c + c / 32 * 4; }

// Decodes chunk `u` (CH channels from channel c0 of one row) into CH / 8 16-byte stores at dst.
// Keys: per-channel params (ks / km, skewed, indexed from c0); values: one (scale, min).
template <int BITS>
__device__ __forceinline__ void decode_key_chunk(const uint4& u, const float* ks, const float* km, int c0, bf16* dst) {
  constexpr int CH = 128 / BITS;  // channels a 16-byte chunk of codes holds
#pragma unroll
  for (int s = 0; s < CH / 8; ++s) {
    const int at = kskew(c0 + s * 8);  // 8 channels never straddle a skew step (32 is a multiple of 8)
    const float4 s0 = *reinterpret_cast<const float4*>(ks + at), s1 = *reinterpret_cast<const float4*>(ks + at + 4);
    const float4 m0 = *reinterpret_cast<const float4*>(km + at), m1 = *reinterpret_cast<const float4*>(km + at + 4);
    const float sc[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
    const float mn[8] = {m0.x, m0.y, m0.z, m0.w, m1.x, m1.y, m1.z, m1.w};
    uint32_t o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int j = 2 * e;
      o[e] = pack_bf16(kvq::decode(code_of<BITS>(u, s * 8 + j), sc[j], mn[j]),
                       kvq::decode(code_of<BITS>(u, s * 8 + j + 1), sc[j + 1], mn[j + 1]));
    }
    __stwb(reinterpret_cast<uint4*>(dst) + s, make_uint4(o[0], o[1], o[2], o[3]));
  }
}
template <int BITS>
__device__ __forceinline__ void decode_value_chunk(const uint4& u, float scale, float min, bf16* dst) {
  constexpr int CH = 128 / BITS;
#pragma unroll
  for (int s = 0; s < CH / 8; ++s) {
    uint32_t o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = s * 8 + 2 * e;
      o[e] = pack_bf16(kvq::decode(code_of<BITS>(u, c), scale, min), kvq::decode(code_of<BITS>(u, c + 1), scale, min));
    }
    __stwb(reinterpret_cast<uint4*>(dst) + s, make_uint4(o[0], o[1], o[2], o[3]));
  }
}

// One complete quantized group (group gi of pool page `page`) into 64 scratch rows at kd / vd.
// Every code byte and params byte is read once, in 16-byte loads.
template <int D, int BITS>
__device__ __forceinline__ void dequant_group(const LayerKv& c, int64_t page, int gi, bf16* kd, bf16* vd,
                                              float* sm) {
  constexpr int RB = D * BITS / 8;      // code bytes a row
  constexpr int CPR = RB / 16;          // 16-byte chunks of codes a row
  constexpr int CH = 128 / BITS;        // channels a chunk
  constexpr int PER = G * CPR / kThreads;  // chunks a thread (of K, and of V)
  static_assert(RB % 16 == 0 && (G * CPR) % kThreads == 0, "whole 16-byte chunks, evenly shared");
  static_assert(D % G == 0 && CH <= G && G % CH == 0, "a chunk lies in one value channel group");
  constexpr int CG = D / G;             // value channel groups a row
  constexpr int KS = kskew(D);          // skewed key params a row of shared memory
  float* ks = sm;                       // [KS] key scale / min of the group, per channel (skewed)
  float* km = ks + KS;
  float* vs = km + KS;                  // [G][CG] value scale / min, per row and channel group
  float* vm = vs + G * CG;
  const kvq::QuantLayout L{D, BITS};
  const uint8_t* kp = c.kq_pages + page * c.page_bytes;
  const uint8_t* vp = c.vq_pages + page * c.page_bytes;
  const uint4* kc = reinterpret_cast<const uint4*>(kp + L.codes(gi * G));
  const uint4* vc = reinterpret_cast<const uint4*>(vp + L.codes(gi * G));
  const int tid = (int)threadIdx.x;
  // The codes first (the bulk of the bytes), all loads in flight before anything waits on them.
  uint4 kq[PER], vq[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) kq[i] = __ldcs(kc + tid + i * kThreads), vq[i] = __ldcs(vc + tid + i * kThreads);
  // Params: D words for K (channel order) and G * CG = D words for V (row-major), 4 a load.
  const uint4* kw = reinterpret_cast<const uint4*>(kp + L.k_params(gi, 0));
  const uint4* vw = reinterpret_cast<const uint4*>(vp + L.v_params(gi * G, 0));
  for (int i = tid; i < D / 4; i += kThreads) {
    const uint4 k = __ldcs(kw + i), v = __ldcs(vw + i);
    const uint32_t kk[4] = {k.x, k.y, k.z, k.w}, vv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      ks[kskew(4 * i + e)] = kvq::params_scale(kk[e]), km[kskew(4 * i + e)] = kvq::params_min(kk[e]);
      vs[4 * i + e] = kvq::params_scale(vv[e]), vm[4 * i + e] = kvq::params_min(vv[e]);
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int ci = tid + i * kThreads, r = ci / CPR, c0 = ci % CPR * CH;
    decode_key_chunk<BITS>(kq[i], ks, km, c0, kd + r * D + c0);
    const int pi = r * CG + c0 / G;
    decode_value_chunk<BITS>(vq[i], vs[pi], vm[pi], vd + r * D + c0);
  }
}

template <int D, int BITS>
__global__ void __launch_bounds__(kThreads) dequant_past_kernel(const DequantParams p) {
  __shared__ __align__(16) float sm[2 * kskew(D) + 2 * D];
  const LayerKv& c = p.c;
  const int g = (int)blockIdx.x, kvh = (int)blockIdx.y;
  const int page = g / kvq::kGroupsPerPage, gi = g % kvq::kGroupsPerPage;
  int32_t* entry = p.table + (int64_t)kvh * p.pages + page;
  if (c.mode == HeadMode::Mixed && c.kinds[kvh] != 0) {  // streaming head: no pages (an unused entry)
    if (gi == 0 && threadIdx.x == 0) *entry = 0;
    return;
  }
  const int64_t slot = c.slot_of[kvh];
  const int64_t spage = slot * p.pages + page;  // the head's pages are consecutive scratch pages
  if (gi == 0 && threadIdx.x == 0) *entry = (int32_t)spage;
  const int64_t row0 = spage * kPageTokens + gi * G;  // scratch row of the group's first position
  bf16* kd = p.k_out + row0 * D;
  bf16* vd = p.v_out + row0 * D;
  const int t0 = g * G;
  if (t0 < c.sink16) {  // sink16 is whole groups: the group is all sink rows
    const int64_t off = (slot * c.sink16 + t0) * D;
    copy_rows<D>(c.k_sink + off, c.v_sink + off, kd, vd, min(G, p.pos0 - t0));
  } else if (t0 + G <= p.pos0) {
    const int64_t pool_page = c.page_table[(int64_t)kvh * c.max_pages + page];
    dequant_group<D, BITS>(c, pool_page, gi, kd, vd, sm);
  } else {  // the last, incomplete group: residual rows 0 .. pos0 - t0 (row = position % 64)
    const int64_t off = slot * G * D;
    copy_rows<D>(c.k_resid + off, c.v_resid + off, kd, vd, p.pos0 - t0);
  }
}

template <int D, int BITS>
void launch_dequant(const DequantParams& p, int n_kv, cudaStream_t stream) {
  const unsigned groups = (unsigned)((p.pos0 + G - 1) / G);
  dequant_past_kernel<D, BITS><<<dim3(groups, (unsigned)n_kv), kThreads, 0, stream>>>(p);
  DUO_CUDA_TRY(cudaGetLastError());
}

// DUO_PREFILL_QUANT, read once (Bf16Scratch when unset).
PrefillQuantPath env_path() {
  static const PrefillQuantPath p = [] {
    const char* e = std::getenv("DUO_PREFILL_QUANT");
    if (!e || !*e || !std::strcmp(e, "auto") || !std::strcmp(e, "bf16scratch")) return PrefillQuantPath::Bf16Scratch;
    if (!std::strcmp(e, "mma")) return PrefillQuantPath::Mma;
    fail_arg(std::string("DUO_PREFILL_QUANT=") + e + ": expected mma, bf16scratch or auto");
  }();
  return p;
}

}  // namespace
}  // namespace detail

const char* prefill_quant_path_name(PrefillQuantPath p) {
  switch (p) {
    case PrefillQuantPath::Auto: return "auto";
    case PrefillQuantPath::Mma: return "mma";
    case PrefillQuantPath::Bf16Scratch: return "bf16scratch";
  }
  return "?";
}

PrefillQuantPath prefill_quant_path_env() { return detail::env_path(); }

size_t prefill_quant_scratch_cap() {
  static const size_t cap = [] {
    const char* e = std::getenv("DUO_PREFILL_QUANT_SCRATCH_MB");
    if (!e || !*e) return kPrefillQuantScratchCap;
    char* end = nullptr;
    const long long mb = std::strtoll(e, &end, 10);
    if (*end || mb < 0) fail_arg(std::string("DUO_PREFILL_QUANT_SCRATCH_MB=") + e + ": expected a number of MiB >= 0");
    return (size_t)mb << 20;
  }();
  return cap;
}

size_t prefill_quant_scratch_bytes(const PrefillArgs& a) {
  if (!quantized_cache(a.cache) || a.pos0 <= 0) return 0;
  const int heads = detail::scratch_heads(a);
  if (heads <= 0) return 0;
  const int64_t pages = detail::pages_for(a.pos0);
  return detail::table_bytes(a.n_kv_heads, pages) +
         2 * (size_t)heads * (size_t)pages * kPageTokens * (size_t)a.head_dim * sizeof(bf16);
}

PrefillQuantPath prefill_quant_path_for(const PrefillArgs& a, PrefillQuantPath requested, size_t scratch_bytes) {
  if (!quantized_cache(a.cache) || a.cache.mode == HeadMode::AllStreaming) return PrefillQuantPath::Auto;
  const PrefillQuantPath p = requested == PrefillQuantPath::Auto ? detail::env_path() : requested;
  if (p == PrefillQuantPath::Bf16Scratch && prefill_quant_scratch_bytes(a) > scratch_bytes) return PrefillQuantPath::Mma;
  return p;
}

LayerKv dequant_past_kv(const PrefillArgs& a, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  const LayerKv& c = a.cache;
  if (!quantized_cache(c)) fail_arg("dequant_past_kv: the cache is not quantized");
  if (a.head_dim != 64 && a.head_dim != 128) fail_arg("dequant_past_kv: head_dim must be 64 or 128");
  if (a.n_kv_heads <= 0 || a.n_kv_heads > 65535) fail_arg("dequant_past_kv: n_kv_heads must be in [1, 65535]");
  LayerKv v = c;  // rings, head kinds, mode and window as they are; retrieval pages from the scratch
  v.type = KvType::BF16;
  v.kq_pages = v.vq_pages = nullptr;
  v.page_bytes = 0;
  v.k_sink = v.v_sink = v.k_resid = v.v_resid = nullptr;
  v.slot_of = nullptr;
  v.sink16 = 0;
  v.k_pages = v.v_pages = nullptr;
  v.page_table = nullptr;
  v.max_pages = 0;
  const size_t need = prefill_quant_scratch_bytes(a);
  if (need == 0) return v;  // no cached retrieval positions
  if (scratch_bytes < need)
    fail_arg("dequant_past_kv: the scratch holds " + std::to_string(scratch_bytes) + " bytes, " +
             std::to_string(need) + " needed");
  if (!scratch || reinterpret_cast<uintptr_t>(scratch) % 16)
    fail_arg("dequant_past_kv: the scratch must be a 16-byte aligned device buffer");
  if (!c.kq_pages || !c.vq_pages || !c.page_table || !c.slot_of || !c.k_resid || !c.v_resid ||
      (c.sink16 > 0 && (!c.k_sink || !c.v_sink)) || (c.mode == HeadMode::Mixed && !c.kinds))
    fail_arg("dequant_past_kv: the quantized cache view is incomplete");
  const int64_t pages = detail::pages_for(a.pos0);
  const int heads = detail::scratch_heads(a);
  const size_t page_elems = (size_t)kPageTokens * a.head_dim;
  detail::DequantParams p;
  p.c = c;
  p.pos0 = a.pos0;
  p.pages = (int)pages;
  p.table = static_cast<int32_t*>(scratch);
  p.k_out = reinterpret_cast<bf16*>(static_cast<unsigned char*>(scratch) + detail::table_bytes(a.n_kv_heads, pages));
  p.v_out = p.k_out + (size_t)heads * (size_t)pages * page_elems;
  const bool q8 = c.type == KvType::Q8;
  if (a.head_dim == 128)
    q8 ? detail::launch_dequant<128, 8>(p, a.n_kv_heads, stream) : detail::launch_dequant<128, 4>(p, a.n_kv_heads, stream);
  else
    q8 ? detail::launch_dequant<64, 8>(p, a.n_kv_heads, stream) : detail::launch_dequant<64, 4>(p, a.n_kv_heads, stream);
  v.k_pages = p.k_out;
  v.v_pages = p.v_out;
  v.page_table = p.table;
  v.max_pages = (int)pages;
  return v;
}

void prefill_attention_quant(const PrefillArgs& a, PrefillQuantPath requested, void* scratch, size_t scratch_bytes,
                             cudaStream_t stream) {
  if (a.n <= 0) return;
  if (prefill_quant_path_for(a, requested, scratch_bytes) != PrefillQuantPath::Bf16Scratch)
    return prefill_attention(a, stream);
  if (a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0)
    fail_arg("prefill_attention: n_heads must be a multiple of n_kv_heads");
  PrefillArgs b = a;
  b.cache = dequant_past_kv(a, scratch, scratch_bytes, stream);
  prefill_attention(b, stream);
}

}  // namespace duo::cuda
