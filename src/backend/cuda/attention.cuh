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
//    (StreamingWindow::ring_row, the same layout as the CPU HeadCache).
//  Buffers must be zero-initialised once (cudaMemset) so never-written rows are finite.
//  - quantized caches (LayerKv::type Q8 / Q4, kv/kv_quant.h): retrieval heads' pages hold KIVI
//    groups (kq_pages / vq_pages, page_bytes each, the same page table); a retrieval head's first
//    sink16 positions stay bf16 rows in k_sink / v_sink ([slot][sink16][d]) and the positions of
//    its last, incomplete group of 64 bf16 rows in k_resid / v_resid ([slot][64][d], row = pos %
//    64), slot = slot_of[kv head] (its index among the layer's retrieval heads). Position p >=
//    sink16 is quantized once its group is complete (kv_quantize), i.e. the cache's state is a
//    function of n_past: groups below n_past / 64 * 64 in pages, the rest in the residual.
//    Streaming heads keep their bf16 sink + ring rows.
//
// Protocol (same as the CPU engine): pre-fill of a chunk at positions [pos0, pos0 + n) attends
// over the cache (positions < pos0) plus the chunk itself, then kv_append() stores the chunk.
// Decode appends the new token first (kv_append with n = 1), then decode_attention() attends
// over positions [0, n_past) (n_past includes the new token). Quantized caches: kv_quantize()
// runs before kv_append() in pre-fill (it reads the completed groups' earlier rows from the
// residual, which kv_append then overwrites) and after the append in decode.
//
// Retrieval and streaming heads of one layer run in one launch: the kernels read the head kind
// per KV head from device memory (HeadMode::Mixed) and dispatch to the causal or the Λ
// (sink + recent) mask policy inside the kernel, so no host round trip is needed.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "duo/duo_policy.h"
#include "duo/kv_type.h"

namespace duo::cuda {

using bf16 = __nv_bfloat16;

// kPageTokens, the streaming window's rules and the quantized page layout: duo/duo_policy.h.

enum class HeadMode : int { AllRetrieval = 0, AllStreaming = 1, Mixed = 2 };

// Device view of one layer's KV cache. Pointers are device pointers.
struct LayerKv {
  bf16* k_pages = nullptr;  // [pool pages][kPageTokens][d] (bf16 caches; nullptr when quantized)
  bf16* v_pages = nullptr;
  const int32_t* page_table = nullptr;  // [n_kv_heads][max_pages]
  int max_pages = 0;
  bf16* k_ring = nullptr;  // [n_kv_heads][sink + recent][d]
  bf16* v_ring = nullptr;
  const uint8_t* kinds = nullptr;  // [n_kv_heads]: 0 retrieval, 1 streaming (read when Mixed)
  HeadMode mode = HeadMode::AllRetrieval;
  int sink = StreamingWindow{}.sink, recent = StreamingWindow{}.recent;  // the window, in window()'s form below
  DUO_HD StreamingWindow window() const { return {sink, recent}; }
  // Quantized retrieval heads (type Q8 or Q4; see the layout notes above).
  KvType type = KvType::BF16;
  uint8_t* kq_pages = nullptr;  // [pool pages][page_bytes]
  uint8_t* vq_pages = nullptr;
  int64_t page_bytes = 0;
  bf16* k_sink = nullptr;  // [retrieval slot][sink16][d]
  bf16* v_sink = nullptr;
  bf16* k_resid = nullptr;  // [retrieval slot][64][d]
  bf16* v_resid = nullptr;
  const int32_t* slot_of = nullptr;  // [n_kv_heads]: retrieval slot of a retrieval head
  int sink16 = 0;                    // kvq::sink16(sink)
};
__host__ __device__ inline bool quantized_cache(const LayerKv& c) { return c.type == KvType::Q8 || c.type == KvType::Q4; }

// Which pre-fill kernel prefill_attention runs.
//  - Mma: FlashAttention-2-style mma.sync kernel (prefill.cu), any device, head_dim 64/128.
//  - Wgmma: FlashAttention-3-style Hopper kernel (prefill_sm90.cu: wgmma, warp-specialised
//    producer/consumers, intra-warpgroup overlap); needs sm_90a code and a cc 9.0 device.
//  - WgmmaSerial: the same kernel without the intra-warpgroup overlap (debugging/measurement).
//  - WgmmaPingPong: Wgmma plus FA3's inter-warpgroup ping-pong (the two consumer warpgroups
//    issue their GEMMs in turns, so one's softmax overlaps the other's GEMMs).
//  - Auto: the environment variable DUO_PREFILL_KERNEL (mma | wgmma | wgmma_serial |
//    wgmma_pingpong | auto) when set, else Wgmma for head_dim 128 where it can run, else Mma.
// A forced Wgmma that cannot run these arguments is an error (duo::Error), not a fallback.
// Quantized caches run on Mma, which dequantizes cached groups into its shared-memory tiles
// (prefill.cu); Auto picks it for them whatever DUO_PREFILL_KERNEL says.
enum class PrefillKernel : int { Auto = 0, Mma = 1, Wgmma = 2, WgmmaSerial = 3, WgmmaPingPong = 4 };

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
  // Mixed heads: how many KV heads are retrieval heads (0: not given). When given, the wgmma
  // kernel dispatches every retrieval head's query blocks before any streaming head's: a
  // streaming block costs a few key tiles, a retrieval block up to the whole context, and
  // heavy blocks first leave a short tail that the light ones fill.
  int retrieval_kv_heads = 0;
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
// pos_d (graph replay): when set, pos0 is read from that device int32 instead.
// Quantized caches: retrieval heads' sink rows, and the rows of the chunk's last group into the
// residual; the groups the chunk completes before that are kv_quantize's (run it first).
void kv_append(const bf16* k, const bf16* v, int64_t kv_stride, int n, int pos0, int n_kv_heads, int head_dim,
               const LayerKv& cache, cudaStream_t stream, const int32_t* pos_d = nullptr);

// Decode tokens of several sequences (continuous batching) in one launch: item i's token, row
// rows_d[i] of k / v (all KV heads, row stride kv_stride), goes into the cache caches_d[i] (a
// device array of layer views, one an item) at position pos_d[i] (device), exactly as
// kv_append(n = 1, pos0 = pos_d[i]) stores it, for every cache type. Quantized caches still need
// that call's follow-up: kv_quantize (decode form, no chunk rows) for each item whose token
// completes a group. All items share n_kv_heads and head_dim; rows_d, caches_d and pos_d hold
// n_items entries each; an item at a negative position is skipped (padding of a replayed step).
void kv_append_batch(const bf16* k, const bf16* v, int64_t kv_stride, const int32_t* rows_d, const LayerKv* caches_d,
                     const int32_t* pos_d, int n_items, int n_kv_heads, int head_dim, cudaStream_t stream);

// Quantized caches: quantizes every retrieval head's groups of 64 positions (at >= sink16) that
// the chunk [pos0, pos0 + n) completes, into their pages (kv_quant.h layout, the CPU cache's
// bytes exactly). Rows at positions < pos0 come from the residual; rows >= pos0 from the chunk's
// k / v (row p at (p - pos0) * kv_stride + head * head_dim), or, when k is nullptr, from the
// residual too (decode: the new token was written there first). Pre-fill: call before
// kv_append. pos_d (graph replay, n = 1): pos0 is read on the device; the launch does nothing
// unless that token completes a group. retrieval_kv_heads: the layer's retrieval heads (the
// grid). A no-op for bf16 caches.
void kv_quantize(const bf16* k, const bf16* v, int64_t kv_stride, int n, int pos0, int n_kv_heads, int head_dim,
                 int retrieval_kv_heads, const LayerKv& cache, cudaStream_t stream, const int32_t* pos_d = nullptr);

struct DecodeArgs {
  const bf16* q = nullptr;  // [n_heads][d] (one token)
  bf16* out = nullptr;      // [n_heads][d]
  int n_past = 0;           // keys at positions [0, n_past); the current token is already appended
  // Graph replay: when set, the current token's position is read from this device int32
  // (n_past = *pos_d + 1); n_past above then only bounds it (the most keys any replay will see,
  // 0: unknown), which caps the split count. Nothing about the launch depends on the position:
  // the split count is fixed (one wave, at most one a 256 keys of the bound) and each split's
  // size is computed on the device, so one captured launch serves every step.
  const int32_t* pos_d = nullptr;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  LayerKv cache;
  // Split-KV workspace (flash-decoding): from decode_workspace_bytes(). Splits of a retrieval
  // head are `split_tokens` keys each (0: the split count fills one wave of CTAs and the size
  // follows from n_past on the device: a multiple of 64, at least 256).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int split_tokens = 0;  // rounded up to a multiple of 64
  // How many KV heads are retrieval heads: all of them when the cache mode is AllRetrieval
  // (0 or n_kv_heads accepted), none for AllStreaming; Mixed needs the exact count. The grid is
  // retrieval heads x splits + one CTA a streaming head, sized to one wave (streaming heads
  // read only sink + recent rows and must not leave a tail).
  int retrieval_kv_heads = 0;
};

size_t decode_workspace_bytes(int n_heads, int head_dim, int max_splits);
// How many splits a retrieval head gets (the workspace must hold that many).
int decode_splits(const DecodeArgs& a);
// One token's attention: a split-KV kernel (one CTA per retrieval KV head and split, one per
// streaming KV head, all query heads of the GQA group in the CTA so K/V are read once) plus a
// merge kernel for the retrieval heads when there are splits.
void decode_attention(const DecodeArgs& a, cudaStream_t stream);

// Decode attention of several sequences (one query token each) in one launch: item i attends
// like decode_attention(items[i]) (host n_past, pos_d unused), all items of one KV type and shape.
//  - Each item has its own cache view (page table, head kinds / mode, sink / recent window),
//    n_past, q / out, retrieval_kv_heads and optionally split_tokens (0: one split size chosen
//    for the batch, at least 256 keys, so the retrieval heads' CTAs fill whole waves of the
//    device; an item's own workspace fields are ignored).
//  - workspace: decode_batch_workspace_bytes(items, n) bytes of device memory (the split
//    partials of all items; 0 when no item is split); params: decode_batch_params_bytes(n)
//    bytes of device memory, which receives the per-item launch parameters (copied on `stream`
//    from pinned host staging before the kernels; both must stay untouched until they ran).
//  - Two launches (attention, grid.y = item; merge of the splits) after the parameter copy.
//    Not capturable in a CUDA graph (host n_past; throws duo::Error when `stream` is
//    capturing). Both size functions depend on the current device (its SM count and occupancy)
//    and on every item's n_past and plan: call them for the same items as the launch.
struct DecodeBatch {
  const DecodeArgs* items = nullptr;
  int n = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  void* params = nullptr;
  size_t params_bytes = 0;
};
size_t decode_batch_workspace_bytes(const DecodeArgs* items, int n);  // split partials of all items
size_t decode_batch_params_bytes(int n);  // device bytes for the per-item parameter array
void decode_attention_batch(const DecodeBatch& b, cudaStream_t stream);

// The replayable form of decode_attention_batch, for decode steps captured once in a CUDA graph
// and replayed: the launch has a fixed grid (g.max_items sequences x g.max_item_ctas CTAs each)
// and reads parameters the host wrote beforehand (decode_batch_stage) and copied to `params`
// itself, so one capture serves every later batch that fits the grid. Items past the staged
// count do nothing. The split choice is decode_attention_batch's, with no item above
// max_item_ctas CTAs.
struct DecodeBatchGrid {
  int max_items = 0;
  int max_item_ctas = 0;
};
// The grid for up to max_items sequences shaped like `shape` (head shape and KV type): about
// two waves of the device's CTA slots shared by the items, and at least one CTA a KV head.
DecodeBatchGrid decode_batch_grid(const DecodeArgs& shape, int max_items);
// Workspace bytes enough for every batch that fits the grid.
size_t decode_batch_grid_workspace_bytes(const DecodeArgs& shape, const DecodeBatchGrid& g);
// Writes the parameters of b.items[0 .. b.n) into host memory dst (decode_batch_params_bytes(
// g.max_items) bytes), padded to g.max_items; b.workspace: the device workspace (at least
// decode_batch_grid_workspace_bytes), b.params unused. Returns whether the quantized-cache
// kernel runs this batch (the replayed launch must have been captured with the same).
bool decode_batch_stage(const DecodeBatch& b, const DecodeBatchGrid& g, void* dst);
// The launch itself (capturable): `shape` picks the kernel, params (device) holds what
// decode_batch_stage wrote.
void decode_attention_batch_replay(const DecodeArgs& shape, bool quant, const void* params, const DecodeBatchGrid& g,
                                   cudaStream_t stream);

}  // namespace duo::cuda
