// Decode attention (one query token) in the flash-decoding style: the host side of the
// tensor-core kernel (decode_mma.cu, every KV type): the split choice, batches, the replayable
// launch; and the KV append kernels.
//
// The grid: retrieval KV heads x splits, then one CTA a streaming KV head. A CTA owns one KV
// head and one run of keys (a split, or a streaming head's sink + ring rows), and all G query
// heads of that GQA group, so each K/V row is read from memory exactly once. A split writes
// (o / l, log2-sum-exp) to the workspace, and merge_kernel combines the splits; with one split
// the CTA writes the output directly. Streaming heads: after the current token is appended,
// every valid row of the sink + ring buffer (rows [0, min(n_past, sink + recent))) is visible
// to it, so they are one contiguous run, one CTA that writes its output directly. Both kinds
// run in one launch, sized so every CTA is resident at once (one wave): the short streaming
// CTAs never delay a retrieval split. The split count does not depend on n_past (only each
// split's size does, computed on the device), so the launch can be captured once in a CUDA
// graph and replayed at every position.
//
// decode_attention_batch: the same kernels (decode_split.cuh) over several sequences in one
// launch, grid.y = sequence. The splits are chosen for the batch as a whole: one split size for
// all sequences, so the heavy CTAs fill whole waves (choose_batch_splits) and a long sequence
// gets many splits and a short one one, instead of a wave each.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/decode_split.cuh"

namespace duo::cuda {
namespace detail {
namespace {

int sm_count() {
  static int n = [] {
    int dev = 0, v = 0;
    DUO_CUDA_TRY(cudaGetDevice(&dev));
    DUO_CUDA_TRY(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}

// Retrieval KV heads of a launch (validated).
int retrieval_heads(const DecodeArgs& a) {
  switch (a.cache.mode) {
    case HeadMode::AllRetrieval:
      if (a.retrieval_kv_heads != 0 && a.retrieval_kv_heads != a.n_kv_heads)
        fail_arg("decode_attention: retrieval_kv_heads must be 0 or n_kv_heads for AllRetrieval");
      return a.n_kv_heads;
    case HeadMode::AllStreaming: return 0;
    case HeadMode::Mixed:
      if (a.retrieval_kv_heads <= 0 || a.retrieval_kv_heads >= a.n_kv_heads)
        fail_arg("decode_attention: Mixed heads need retrieval_kv_heads in [1, n_kv_heads)");
      return a.retrieval_kv_heads;
  }
  fail_arg("decode_attention: bad head mode");
}

// The KV type the kernel of a launch reads: the cache's type when a quantized retrieval head
// takes part, else BF16 (bf16 pages, or only bf16 rings).
KvType kernel_kv(const LayerKv& c, bool any_retrieval) {
  return quantized_cache(c) && any_retrieval ? c.type : KvType::BF16;
}

// Resident CTA slots of the whole device (one wave) for the kernel that reads KV type kv.
int wave_slots(int head_dim, KvType kv) { return decode_mma_resident_ctas(head_dim, kv) * sm_count(); }

// The shape checks of decode_attention; returns the retrieval KV heads.
int check_args(const DecodeArgs& a) {
  if (a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0)
    fail_arg("decode_attention: n_heads must be a multiple of n_kv_heads");
  if (a.head_dim != 64 && a.head_dim != 128)
    fail_arg("decode_attention: head_dim must be 64 or 128");
  if (a.n_heads / a.n_kv_heads > 8) fail_arg("decode_attention: at most 8 query heads a KV head");
  return retrieval_heads(a);
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
  if (a.split_tokens > 0) fail_arg("decode_attention: split_tokens needs a host n_past (no pos_d)");
  // One full wave: the retrieval splits plus one CTA a streaming head fill every resident CTA
  // slot once (a second, partial wave would leave most SMs idle at the end).
  const int slots = wave_slots(a.head_dim, kernel_kv(a.cache, true));
  n_splits = std::max(1, (slots - (a.n_kv_heads - R)) / R);
  if (a.n_past > 0) n_splits = std::min(n_splits, std::max(1, (a.n_past + 255) / 256));  // >= 256 keys a split
  split_tokens = 0;
}

// The splits of a batch (decode_attention_batch): one split size T for every retrieval head that
// leaves it to the batch (a multiple of 64 keys, at least 256), chosen so the heavy CTAs
// (retrieval heads x splits) fill whole waves of the device's resident CTA slots. Modelled time:
// waves(T) x (T + kCtaOverheadKeys), waves = ceil(heavy CTAs / slots). Counting whole waves
// matters: 116 heads of 32K keys on 396 slots get 3 splits (348 CTAs, one wave), where shares
// of the wave rounded down per item gave 2 (232 CTAs, 40% of the slots idle), and 424 heads get
// ~7 splits (8 nearly full waves) instead of 1 (a second wave of 28 CTAs). Streaming CTAs read
// only sink + recent rows and are not counted: when they push the grid past one wave they
// finish first and the heavy CTAs behind them start microseconds later. Items that fixed
// split_tokens keep it (as decode_attention does). max_item_ctas > 0: no item may get more CTAs
// than that (the replayable launch's fixed grid row; T = the longest item in one split always fits).
constexpr int kCtaOverheadKeys = 128;
void choose_batch_splits(std::vector<DecodeParams>& ps, KvType kv, int max_item_ctas = 0) {
  const DecodeArgs& f = ps[0].a;
  int64_t fixed_heavy = 0;
  int longest = 0;
  for (DecodeParams& p : ps) {
    const DecodeArgs& a = p.a;
    const int R = p.n_retrieval;
    if (R == 0) {
      p.n_splits = 1, p.split_tokens = 0;
    } else if (a.split_tokens > 0) {
      p.split_tokens = (a.split_tokens + 63) / 64 * 64;
      p.n_splits = std::max(1, (a.n_past + p.split_tokens - 1) / p.split_tokens);
      fixed_heavy += (int64_t)R * p.n_splits;
    } else {
      longest = std::max(longest, a.n_past);
    }
  }
  if (longest == 0) return;  // no item left to choose for
  const int64_t slots = wave_slots(f.head_dim, kv);
  const auto heavy = [&](int T) {
    int64_t h = fixed_heavy;
    for (const DecodeParams& p : ps)
      if (p.n_retrieval > 0 && p.a.split_tokens <= 0) h += (int64_t)p.n_retrieval * ((p.a.n_past + T - 1) / T);
    return h;
  };
  const auto fits_grid = [&](int T) {  // every item's CTAs within max_item_ctas
    if (max_item_ctas <= 0) return true;
    for (const DecodeParams& p : ps)
      if (p.n_retrieval > 0 && p.a.split_tokens <= 0 &&
          p.n_retrieval * ((p.a.n_past + T - 1) / T) + p.a.n_kv_heads - p.n_retrieval > max_item_ctas)
        return false;
    return true;
  };
  // Candidates: the longest item in k splits, k = 1, 2, ..., until splits get shorter than 256
  // keys, the merge limit is reached or the heavy CTAs pass 16 waves (later candidates only
  // shave the rounding of the last wave, and the merges grow).
  int best_t = 0, prev_t = 0;
  double best = 0;
  for (int k = 1; k <= kMaxMergeSplits; ++k) {
    const int T = std::max(256, ((longest + k - 1) / k + 63) / 64 * 64);
    if (T == prev_t) continue;
    prev_t = T;
    if (best_t != 0 && !fits_grid(T)) break;  // shorter splits only add CTAs
    const int64_t h = heavy(T);
    const double cost = (double)((h + slots - 1) / slots) * (T + kCtaOverheadKeys);
    if (best_t == 0 || cost < best) best = cost, best_t = T;
    if (T == 256 || h > 16 * slots) break;
  }
  for (DecodeParams& p : ps) {
    if (p.n_retrieval == 0 || p.a.split_tokens > 0) continue;
    p.split_tokens = best_t;
    p.n_splits = (p.a.n_past + best_t - 1) / best_t;
  }
}

// A batch's parameters (the workspace pointers as offsets from its start) and launch shape.
struct BatchPlan {
  std::vector<DecodeParams> items;
  std::vector<size_t> ws_offset;  // item i's partials at workspace + ws_offset[i] (when n_splits > 1)
  size_t ws_bytes = 0;
  bool quant = false;  // runs the quantized-cache kernel
  KvType kv = KvType::BF16;  // the KV type its kernel reads
  DecodeLaunch launch;
};

BatchPlan plan_batch(const DecodeArgs* items, int n, int max_item_ctas = 0) {
  if (n < 0 || (n > 0 && !items)) fail_arg("decode_attention_batch: no items");
  if (n > 65535) fail_arg("decode_attention_batch: at most 65535 items");
  BatchPlan b;
  if (n == 0) return b;
  const DecodeArgs& f = items[0];
  b.items.resize(n);
  bool any_retrieval = false;
  for (int i = 0; i < n; ++i) {
    const DecodeArgs& a = items[i];
    if (a.n_past <= 0) fail_arg("decode_attention_batch: every item needs a host n_past > 0");
    if (a.n_heads != f.n_heads || a.n_kv_heads != f.n_kv_heads || a.head_dim != f.head_dim ||
        a.cache.type != f.cache.type)
      fail_arg("decode_attention_batch: the items differ in head shape or KV type");
    DecodeParams& p = b.items[i];
    p = DecodeParams{};
    p.a = a;
    p.a.pos_d = nullptr;  // host n_past only
    p.a.workspace = nullptr, p.a.workspace_bytes = 0;
    p.n_retrieval = check_args(a);
    any_retrieval |= p.n_retrieval > 0;
  }
  // Items without retrieval heads read only bf16 rings; with any quantized retrieval head the
  // whole batch runs the quantized kernel (whose streaming CTAs read the rings as well).
  b.quant = quantized_cache(f.cache) && any_retrieval;
  b.kv = kernel_kv(f.cache, any_retrieval);
  if (b.quant)
    for (const DecodeParams& p : b.items)
      if (p.n_retrieval > 0) check_quant_view(p.a.cache);
  choose_batch_splits(b.items, b.kv, max_item_ctas);
  b.ws_offset.assign(n, 0);
  b.launch.n_items = n;
  for (int i = 0; i < n; ++i) {
    const DecodeParams& p = b.items[i];
    if (p.n_splits > kMaxMergeSplits)
      fail_arg("decode_attention_batch: more than 2048 splits (raise split_tokens)");
    b.launch.ctas = std::max(b.launch.ctas, decode_ctas(p));
    if (p.n_splits > 1) {
      b.ws_offset[i] = (b.ws_bytes + 255) / 256 * 256;
      b.ws_bytes = b.ws_offset[i] + decode_workspace_bytes(p.a.n_heads, p.a.head_dim, p.n_splits);
      b.launch.merge_heads = std::max(b.launch.merge_heads, p.n_retrieval);
    }
  }
  return b;
}

// Host -> device copies of a batch's parameters through pinned staging buffers, used in turn.
// A buffer is refilled only after the copy that last read it has run (its event): an enqueued
// cudaMemcpyAsync reads pinned memory when the stream reaches it, so overwriting it earlier
// would corrupt a launch still waiting in the stream. With kSlots buffers the host may run
// kSlots batch launches (a step's layers, and more) ahead of the device before it waits. (A
// copy from pageable memory would be staged by the driver, but the CUDA documentation only says
// it "might be synchronous", so this does not rely on it.) One device: the events belong to the
// device current at a buffer's first use.
class ParamStaging {
 public:
  void copy(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    Slot& s = slots_[next_];
    next_ = (next_ + 1) % kSlots;
    if (s.done)
      DUO_CUDA_TRY(cudaEventSynchronize(s.done));
    else
      DUO_CUDA_TRY(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    if (s.bytes < bytes) {
      if (s.host) DUO_CUDA_TRY(cudaFreeHost(s.host));
      s.host = nullptr, s.bytes = 0;
      const size_t want = std::max<size_t>(16384, bytes * 2);
      DUO_CUDA_TRY(cudaMallocHost(&s.host, want));
      s.bytes = want;
    }
    std::memcpy(s.host, src, bytes);
    DUO_CUDA_TRY(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, stream));
    DUO_CUDA_TRY(cudaEventRecord(s.done, stream));
  }

 private:
  static constexpr int kSlots = 64;
  struct Slot {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;
  };
  std::mutex mu_;
  Slot slots_[kSlots];
  int next_ = 0;
};

ParamStaging& staging() {
  static ParamStaging* s = new ParamStaging;  // never destroyed: may outlive the CUDA context
  return *s;
}

// kv_append: one CTA a chunk token, one thread a 16-byte piece of a row of each KV head. Stores
// the row at k / v + src (all KV heads) at position pos, for a chunk ending at `end`.
__device__ __forceinline__ void append_row(const bf16* k, const bf16* v, int64_t src, int n_kv, int d,
                                           const LayerKv& c, int pos, int end) {
  const int cpr = d / 8;
  for (int idx = threadIdx.x; idx < n_kv * cpr; idx += blockDim.x) {
    const int h = idx / cpr, ch = idx % cpr;
    bf16 *kd, *vd;
    if (!cache_rows(c, h, pos, end, d, kd, vd)) continue;
    const int64_t at = src + (int64_t)h * d + ch * 8;
    reinterpret_cast<uint4*>(kd)[ch] = *reinterpret_cast<const uint4*>(k + at);
    reinterpret_cast<uint4*>(vd)[ch] = *reinterpret_cast<const uint4*>(v + at);
  }
}

__global__ void append_kernel(const bf16* k, const bf16* v, int64_t kv_stride, int n, int pos0_host, int n_kv,
                              int d, const LayerKv c, const int32_t* pos_d) {
  const int pos0 = pos_d ? *pos_d : pos0_host;
  append_row(k, v, (int64_t)blockIdx.x * kv_stride, n_kv, d, c, pos0 + blockIdx.x, pos0 + n);
}

// kv_append_batch: CTA i stores item i's token (row rows[i]) into caches[i] at position pos[i].
__global__ void append_batch_kernel(const bf16* k, const bf16* v, int64_t kv_stride, const int32_t* rows,
                                    const LayerKv* caches, const int32_t* pos, int n_kv, int d) {
  const int i = blockIdx.x, p = pos[i];
  if (p < 0) return;  // a padding item of a replayed step
  append_row(k, v, (int64_t)rows[i] * kv_stride, n_kv, d, caches[i], p, p + 1);
}

}  // namespace
}  // namespace detail

size_t decode_workspace_bytes(int n_heads, int head_dim, int max_splits) {
  return (size_t)n_heads * max_splits * (head_dim + 1) * sizeof(float);
}

int decode_splits(const DecodeArgs& a) {
  if (!a.pos_d && a.n_past <= 0) fail_arg("decode_attention: n_past must be > 0");
  int n = 1, t = 0;
  detail::choose_splits(a, n, t);
  return n;
}

void decode_attention(const DecodeArgs& a, cudaStream_t stream) {
  if (!a.pos_d && a.n_past <= 0) fail_arg("decode_attention: n_past must be > 0");
  if (a.pos_d && a.n_past < 0) fail_arg("decode_attention: negative n_past bound");
  detail::DecodeParams p;
  p.a = a;
  p.n_retrieval = detail::check_args(a);
  detail::choose_splits(a, p.n_splits, p.split_tokens);
  if (p.n_splits > detail::kMaxMergeSplits)
    fail_arg("decode_attention: more than 2048 splits (raise split_tokens)");
  if (p.n_splits > 1) {
    if (!a.workspace || a.workspace_bytes < decode_workspace_bytes(a.n_heads, a.head_dim, p.n_splits))
      fail_arg("decode_attention: workspace too small for the splits");
    p.part_o = static_cast<float*>(a.workspace);
    p.part_lse = p.part_o + (size_t)a.n_heads * p.n_splits * a.head_dim;
  } else {
    p.part_o = p.part_lse = nullptr;
  }
  detail::DecodeLaunch l;
  l.ctas = detail::decode_ctas(p);
  l.merge_heads = p.n_splits > 1 ? p.n_retrieval : 0;
  // A layer without retrieval heads reads only bf16 rings, whatever the cache's type.
  detail::launch_decode_mma(p, l, detail::kernel_kv(a.cache, p.n_retrieval > 0), stream);
}

size_t decode_batch_workspace_bytes(const DecodeArgs* items, int n) { return detail::plan_batch(items, n).ws_bytes; }

size_t decode_batch_params_bytes(int n) { return (size_t)std::max(n, 0) * sizeof(detail::DecodeParams); }

void decode_attention_batch(const DecodeBatch& b, cudaStream_t stream) {
  detail::BatchPlan pl = detail::plan_batch(b.items, b.n);
  if (b.n == 0) return;
  const size_t params_bytes = decode_batch_params_bytes(b.n);
  if (!b.params || b.params_bytes < params_bytes)
    fail_arg("decode_attention_batch: params buffer too small (decode_batch_params_bytes)");
  if (pl.ws_bytes > 0 && (!b.workspace || b.workspace_bytes < pl.ws_bytes))
    fail_arg("decode_attention_batch: workspace too small (decode_batch_workspace_bytes)");
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  DUO_CUDA_TRY(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone)
    fail_arg("decode_attention_batch: cannot be captured in a CUDA graph (host-staged parameters)");
  for (int i = 0; i < b.n; ++i) {
    detail::DecodeParams& p = pl.items[i];
    if (p.n_splits > 1) {
      p.part_o = reinterpret_cast<float*>(static_cast<char*>(b.workspace) + pl.ws_offset[i]);
      p.part_lse = p.part_o + (size_t)p.a.n_heads * p.n_splits * p.a.head_dim;
    } else {
      p.part_o = p.part_lse = nullptr;
    }
  }
  detail::staging().copy(b.params, pl.items.data(), params_bytes, stream);
  pl.launch.items = static_cast<const detail::DecodeParams*>(b.params);
  const detail::DecodeParams& one = pl.items[0];  // picks the kernel (shape and type are common)
  detail::launch_decode_mma(one, pl.launch, pl.kv, stream);
}

DecodeBatchGrid decode_batch_grid(const DecodeArgs& shape, int max_items) {
  if (max_items <= 0 || max_items > 65535) fail_arg("decode_batch_grid: 1 to 65535 items");
  detail::check_args(shape);
  const int slots = detail::wave_slots(shape.head_dim, detail::kernel_kv(shape.cache, true));
  DecodeBatchGrid g;
  g.max_items = max_items;
  // Two waves' worth of rows: an item of a full batch may still take twice its even share (a
  // long sequence beside short ones); CTAs past an item's count exit at once.
  g.max_item_ctas = std::min(detail::kMaxMergeSplits, (2 * slots + max_items - 1) / max_items + shape.n_kv_heads);
  return g;
}

size_t decode_batch_grid_workspace_bytes(const DecodeArgs& shape, const DecodeBatchGrid& g) {
  return (size_t)g.max_items * (decode_workspace_bytes(shape.n_heads, shape.head_dim, g.max_item_ctas) + 256);
}

bool decode_batch_stage(const DecodeBatch& b, const DecodeBatchGrid& g, void* dst) {
  if (b.n <= 0 || b.n > g.max_items) fail_arg("decode_batch_stage: 1 to max_items items");
  detail::BatchPlan pl = detail::plan_batch(b.items, b.n, g.max_item_ctas);
  if (pl.launch.ctas > g.max_item_ctas)  // items that fixed their split size
    fail_arg("decode_batch_stage: an item needs more CTAs than the grid has");
  if (pl.ws_bytes > 0 && (!b.workspace || b.workspace_bytes < pl.ws_bytes))
    fail_arg("decode_batch_stage: workspace too small");
  std::vector<detail::DecodeParams> all(g.max_items, detail::DecodeParams{});  // padding: no CTA, no merge
  for (int i = 0; i < b.n; ++i) {
    all[i] = pl.items[i];
    detail::DecodeParams& p = all[i];
    if (p.n_splits > 1) {
      p.part_o = reinterpret_cast<float*>(static_cast<char*>(b.workspace) + pl.ws_offset[i]);
      p.part_lse = p.part_o + (size_t)p.a.n_heads * p.n_splits * p.a.head_dim;
    } else {
      p.part_o = p.part_lse = nullptr;
    }
  }
  std::memcpy(dst, all.data(), decode_batch_params_bytes(g.max_items));
  return pl.quant;
}

void decode_attention_batch_replay(const DecodeArgs& shape, bool quant, const void* params, const DecodeBatchGrid& g,
                                   cudaStream_t stream) {
  if (!params || g.max_items <= 0 || g.max_item_ctas <= 0)
    fail_arg("decode_attention_batch_replay: no parameters or an empty grid");
  detail::DecodeParams one{};
  one.a = shape;  // picks the kernel only: every CTA reads its item's parameters
  detail::DecodeLaunch l;
  l.items = static_cast<const detail::DecodeParams*>(params);
  l.n_items = g.max_items;
  l.ctas = g.max_item_ctas;
  l.merge_heads = shape.n_kv_heads;  // items without splits leave the merge at once
  detail::launch_decode_mma(one, l, detail::kernel_kv(shape.cache, quant), stream);
}

void kv_append(const bf16* k, const bf16* v, int64_t kv_stride, int n, int pos0, int n_kv_heads, int head_dim,
               const LayerKv& cache, cudaStream_t stream, const int32_t* pos_d) {
  if (n <= 0) return;
  if (head_dim % 8 != 0) fail_arg("kv_append: head_dim must be a multiple of 8");
  detail::append_kernel<<<n, 256, 0, stream>>>(k, v, kv_stride, n, pos0, n_kv_heads, head_dim, cache, pos_d);
  DUO_CUDA_TRY(cudaGetLastError());
}

void kv_append_batch(const bf16* k, const bf16* v, int64_t kv_stride, const int32_t* rows_d, const LayerKv* caches_d,
                     const int32_t* pos_d, int n_items, int n_kv_heads, int head_dim, cudaStream_t stream) {
  if (n_items <= 0) return;
  if (head_dim % 8 != 0) fail_arg("kv_append_batch: head_dim must be a multiple of 8");
  if (!rows_d || !caches_d || !pos_d) fail_arg("kv_append_batch: rows, caches and positions needed");
  detail::append_batch_kernel<<<n_items, 256, 0, stream>>>(k, v, kv_stride, rows_d, caches_d, pos_d, n_kv_heads,
                                                           head_dim);
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace duo::cuda
