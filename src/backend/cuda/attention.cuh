// CUDA attention kernels for DuoAttention: bf16 Q/K/V, fp32 accumulation.
//
// Layouts (row-major, strides in elements):
//  - queries / outputs of a chunk: [token][head][head_dim], token stride given (>= heads * d),
//    head stride = head_dim. The chunk's own keys/values use the same layout with n_kv_heads.
//  - retrieval heads (paged cache): a pool of pages, each page = kPageTokens rows of head_dim
//    (K pool and V pool separately: [page][kPageTokens][d]); page_table[kv_head * max_pages + p]
//    is the pool page holding positions [p * 256, (p + 1) * 256) of that head. One page is 64 KB
//    for d=128, so a warp streams whole 256-byte rows and a CTA long contiguous runs.
//  - streaming heads: per KV head a buffer of sink + recent rows ([kv_head][sink+recent][d]):
//    row r < sink holds position r, position p >= sink sits in row sink + (p - sink) % recent
//    (the same layout as the CPU HeadCache).
//  Buffers must be zero-initialised once (cudaMemset) so never-written rows are finite.
//
// Protocol (same as the CPU engine): pre-fill of a chunk at positions [pos0, pos0 + n) attends
// over the cache (positions < pos0) plus the chunk itself, then kv_append() stores the chunk.
// Decode appends the new token first (kv_append with n = 1), then decode_attention() attends
// over positions [0, n_past) (n_past includes the new token).
//
// Retrieval and streaming heads of one layer run in one launch: the kernels read the head kind
// per KV head from device memory (HeadMode::Mixed) and dispatch to the causal or the Λ
// (sink + recent) mask policy inside the kernel, so no host round trip is needed.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace duo::cuda {

using bf16 = __nv_bfloat16;

constexpr int kPageTokens = 256;

enum class HeadMode : int { AllRetrieval = 0, AllStreaming = 1, Mixed = 2 };

// Device view of one layer's KV cache. Pointers are device pointers.
struct LayerKv {
  bf16* k_pages = nullptr;  // [pool pages][kPageTokens][d]
  bf16* v_pages = nullptr;
  const int32_t* page_table = nullptr;  // [n_kv_heads][max_pages]
  int max_pages = 0;
  bf16* k_ring = nullptr;  // [n_kv_heads][sink + recent][d]
  bf16* v_ring = nullptr;
  const uint8_t* kinds = nullptr;  // [n_kv_heads]: 0 retrieval, 1 streaming (read when Mixed)
  HeadMode mode = HeadMode::AllRetrieval;
  int sink = 64, recent = 256;
};

// Which pre-fill kernel prefill_attention runs.
//  - Mma: FlashAttention-2-style mma.sync kernel (prefill.cu), any device, head_dim 64/128.
//  - Wgmma: FlashAttention-3-style Hopper kernel (prefill_sm90.cu: wgmma, warp-specialised
//    producer/consumers, intra-warpgroup overlap); needs sm_90a code and a cc 9.0 device.
//  - WgmmaSerial: the same kernel without the intra-warpgroup overlap (debugging/measurement).
//  - Auto: the environment variable DUO_PREFILL_KERNEL (mma | wgmma | wgmma_serial | auto) when
//    set, else Wgmma for head_dim 128 where it can run, else Mma.
// A forced Wgmma that cannot run these arguments is an error (std::invalid_argument), not a fallback.
enum class PrefillKernel : int { Auto = 0, Mma = 1, Wgmma = 2, WgmmaSerial = 3 };

struct PrefillArgs {
  const bf16* q = nullptr;  // [n][n_heads][d], token stride q_stride
  const bf16* k = nullptr;  // chunk keys [n][n_kv_heads][d], token stride kv_stride
  const bf16* v = nullptr;
  bf16* out = nullptr;  // [n][n_heads][d], token stride o_stride
  int64_t q_stride = 0, kv_stride = 0, o_stride = 0;
  int n = 0;     // queries in the chunk
  int pos0 = 0;  // position of the first query; keys < pos0 come from `cache`
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;  // head_dim 64 or 128
  LayerKv cache;
  PrefillKernel kernel = PrefillKernel::Auto;
};

// Causal / Λ attention of a chunk over cache + chunk (tensor cores, online softmax).
void prefill_attention(const PrefillArgs& a, cudaStream_t stream);
// The kernel prefill_attention runs for `a` (Auto resolved); throws like prefill_attention when a
// forced wgmma kernel cannot run.
PrefillKernel prefill_kernel_for(const PrefillArgs& a);
// Whether the wgmma kernel can run on the current device (sm_90a code built, cc 9.0 device).
bool prefill_wgmma_available();
const char* prefill_kernel_name(PrefillKernel k);

// Copies the chunk's keys/values (positions [pos0, pos0 + n)) into the cache: pages for
// retrieval heads, sink + ring rows for streaming heads (only what a later query can see).
void kv_append(const bf16* k, const bf16* v, int64_t kv_stride, int n, int pos0, int n_kv_heads, int head_dim,
               const LayerKv& cache, cudaStream_t stream);

struct DecodeArgs {
  const bf16* q = nullptr;  // [n_heads][d] (one token)
  bf16* out = nullptr;      // [n_heads][d]
  int n_past = 0;           // keys at positions [0, n_past); the current token is already appended
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  LayerKv cache;
  // Split-KV workspace (flash-decoding): from decode_workspace_bytes(). Splits of a retrieval
  // head are `split_tokens` keys each (0: chosen from the SM count and n_past).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int split_tokens = 0;  // rounded up to a multiple of 64
  // How many KV heads are retrieval heads (0: all). Only sizes the splits: the split-KV grid is
  // one wave of CTAs spread over the retrieval heads (streaming heads need one CTA each).
  int retrieval_kv_heads = 0;
};

size_t decode_workspace_bytes(int n_heads, int head_dim, int max_splits);
// How many splits decode_attention uses for these arguments.
int decode_splits(const DecodeArgs& a);
// One token's attention: a split-KV kernel (one CTA per KV head and split, all query heads of
// the GQA group in the CTA so K/V are read once) plus a merge kernel when there are splits.
void decode_attention(const DecodeArgs& a, cudaStream_t stream);

// Throws std::runtime_error with the CUDA error string.
void check_cuda(cudaError_t e, const char* what);

}  // namespace duo::cuda
