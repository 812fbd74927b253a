// CUDA attention kernels vs the CPU reference (attention_ref, double accumulation). Inputs are
// drawn at random, rounded to bf16, and the same rounded values feed the reference. Outputs
// are poisoned with NaN before each launch so an unwritten element fails.
// Tolerance: bf16 output (~3 significant digits) with P rounded to bf16 before P*V:
// max |gpu - ref| <= 2e-2 and ||gpu - ref|| / ||ref|| <= 1e-2.
// Every pre-fill case runs on each kernel (mma.sync, wgmma, wgmma without intra-warpgroup
// overlap); the wgmma ones are skipped, loudly, on devices that cannot run them. The Probe* cases
// run one-hot attention through the wgmma tiles so a layout bug shows as "row i read key j" or
// "element (i, c) came from V[j'][c']" in one run's output.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.h"

namespace duo::cuda {
// gtest prints test parameters through this (kernel names instead of raw bytes).
void PrintTo(PrefillKernel k, std::ostream* os) { *os << prefill_kernel_name(k); }

namespace {

constexpr double kMaxAbs = 2e-2, kMaxRel = 1e-2;

// Launchers throw duo::Error (cuda_check.h); the nvcc-compiled tests expect its base class,
// std::runtime_error, to keep fmt (core/error.h) out of device compilation.
#define CK(x) DUO_CUDA_TRY(x)

template <class T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    CK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)));
    CK(cudaMemset(p, 0, std::max<size_t>(1, n) * sizeof(T)));
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void upload(const T* h, size_t count, size_t offset = 0) {
    CK(cudaMemcpy(p + offset, h, count * sizeof(T), cudaMemcpyHostToDevice));
  }
};

// Waits for the GPU like cudaDeviceSynchronize, but a kernel that never finishes (a deadlocked
// mbarrier pipeline) ends the process after 60 s with a message naming what was running, instead
// of hanging the test binary until an outer timeout (exiting tears the CUDA context down).
void sync_or_die(const std::string& what) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t e = cudaStreamQuery(0);
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) CK(e);
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(60)) {
      std::fprintf(stderr, "FATAL: %s did not finish within 60 s (deadlocked pipeline?)\n", what.c_str());
      std::fflush(stderr);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Random bf16 values and their float twins.
void random_bf16(std::mt19937& rng, size_t n, float scale, std::vector<bf16>& b, std::vector<float>& f) {
  std::normal_distribution<float> nd(0.0f, scale);
  b.resize(n), f.resize(n);
  for (size_t i = 0; i < n; ++i) {
    b[i] = __float2bfloat16(nd(rng));
    f[i] = __bfloat162float(b[i]);
  }
}

struct Err {
  double max_abs = 0, num = 0, den = 0;
  long worst = -1, first_bad = -1;  // element indices (first_bad: first beyond kMaxAbs or not finite)
  float worst_got = 0, worst_ref = 0, bad_got = 0, bad_ref = 0;
  void add(long i, float got, float ref) {
    const double d = std::isfinite(got) ? std::fabs(got - ref) : INFINITY;
    if (d > kMaxAbs && first_bad < 0) first_bad = i, bad_got = got, bad_ref = ref;
    if (d > max_abs || worst < 0) max_abs = std::max(max_abs, d), worst = i, worst_got = got, worst_ref = ref;
    if (std::isfinite(got)) num += (double)(got - ref) * (got - ref), den += (double)ref * ref;
  }
  double rel() const { return std::sqrt(num / std::max(den, 1e-30)); }
  // "(token t, head h, dim c)" of element i of an [n][heads][d] output.
  static std::string where(long i, int heads, int d) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "(token %ld, head %ld, dim %ld)", i / ((long)heads * d), i / d % heads, i % d);
    return buf;
  }
  std::string report(int heads, int d) const {
    std::string r = "worst at " + where(worst, heads, d) + ": got " + std::to_string(worst_got) + " want " +
                    std::to_string(worst_ref);
    if (first_bad >= 0)
      r += "; first bad at " + where(first_bad, heads, d) + ": got " + std::to_string(bad_got) + " want " +
           std::to_string(bad_ref);
    return r;
  }
};

// One layer's cache on the device, sized for `max_len` positions, pages shuffled.
struct TestCache {
  int n_kv, d, max_pages;
  std::vector<uint8_t> kinds;
  DevBuf<bf16> kp, vp, kr, vr;
  DevBuf<int32_t> pt;
  DevBuf<uint8_t> dk;
  LayerKv view;
  TestCache(int n_kv_, int d_, int max_len, const std::vector<uint8_t>& kinds_, int sink, int recent, uint32_t seed)
      : n_kv(n_kv_),
        d(d_),
        max_pages((max_len + kPageTokens - 1) / kPageTokens),
        kinds(kinds_),
        kp((size_t)n_kv_ * max_pages * kPageTokens * d_),
        vp((size_t)n_kv_ * max_pages * kPageTokens * d_),
        kr((size_t)n_kv_ * (sink + recent) * d_),
        vr((size_t)n_kv_ * (sink + recent) * d_),
        pt((size_t)n_kv_ * max_pages),
        dk(n_kv_) {
    std::vector<int32_t> perm((size_t)n_kv * max_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(perm.begin(), perm.end(), rng);
    pt.upload(perm.data(), perm.size());
    dk.upload(kinds.data(), kinds.size());
    bool any_r = false, any_s = false;
    for (auto k : kinds) (k ? any_s : any_r) = true;
    view.k_pages = kp.p, view.v_pages = vp.p, view.page_table = pt.p, view.max_pages = max_pages;
    view.k_ring = kr.p, view.v_ring = vr.p, view.kinds = dk.p;
    view.mode = any_r && any_s ? HeadMode::Mixed : any_s ? HeadMode::AllStreaming : HeadMode::AllRetrieval;
    view.sink = sink, view.recent = recent;
  }
};

struct Shape {
  int heads, kv_heads, d;
};

std::vector<uint8_t> make_kinds(int n_kv, int pattern) {
  // pattern 0: all retrieval, 1: all streaming, 2: alternating (head 0 retrieval)
  std::vector<uint8_t> k(n_kv);
  for (int h = 0; h < n_kv; ++h) k[h] = pattern == 2 ? (uint8_t)(h % 2) : (uint8_t)pattern;
  return k;
}

// CPU reference for queries at [pos0, pos0 + n) over keys [0, pos0 + n) of the full sequence.
void reference(const Shape& s, const std::vector<float>& q, const std::vector<float>& kf, const std::vector<float>& vf,
               int pos0, int n, const std::vector<uint8_t>& kinds, int sink, int recent, std::vector<float>& out) {
  std::vector<std::vector<KvSegment>> segs(s.kv_heads);
  std::vector<HeadKind> hk(s.kv_heads);
  for (int h = 0; h < s.kv_heads; ++h) {
    segs[h].push_back({kf.data() + (size_t)h * s.d, vf.data() + (size_t)h * s.d, 0, pos0 + n,
                       (int64_t)s.kv_heads * s.d});
    hk[h] = kinds[h] ? HeadKind::Streaming : HeadKind::Retrieval;
  }
  out.assign((size_t)n * s.heads * s.d, 0.0f);
  AttentionArgs a;
  a.q = q.data(), a.out = out.data(), a.n = n, a.pos0 = pos0;
  a.n_heads = s.heads, a.n_kv_heads = s.kv_heads, a.head_dim = s.d;
  a.segments = &segs, a.kinds = &hk;
  a.window.sink = sink, a.window.recent = recent;
  attention_ref(a);
}

Err compare(const std::vector<bf16>& got, const std::vector<float>& ref) {
  Err e;
  for (size_t i = 0; i < ref.size(); ++i) e.add((long)i, __bfloat162float(got[i]), ref[i]);
  return e;
}

// Pre-fill a sequence of `len` tokens in the given chunks (each chunk attends to the cache
// plus itself, then is appended), checking every chunk's output against the reference.
// tell_retrieval: Mixed heads pass their retrieval count (the wgmma kernel then dispatches the
// retrieval heads' blocks first); false leaves it 0 (plain head-major block order).
void run_prefill(const Shape& s, const std::vector<int>& chunks, int pattern, int sink, int recent, uint32_t seed,
                 PrefillKernel kernel, bool tell_retrieval = true) {
  const int len = std::accumulate(chunks.begin(), chunks.end(), 0);
  const auto kinds = make_kinds(s.kv_heads, pattern);
  std::mt19937 rng(seed);
  std::vector<bf16> kb, vb, qb;
  std::vector<float> kf, vf, qf;
  const size_t kvrow = (size_t)s.kv_heads * s.d, qrow = (size_t)s.heads * s.d;
  random_bf16(rng, len * kvrow, 1.0f, kb, kf);
  random_bf16(rng, len * kvrow, 1.0f, vb, vf);
  random_bf16(rng, len * qrow, 1.5f, qb, qf);
  TestCache cache(s.kv_heads, s.d, len, kinds, sink, recent, seed + 1);
  DevBuf<bf16> dq(len * qrow), dk(len * kvrow), dv(len * kvrow), dout(len * qrow);
  dq.upload(qb.data(), qb.size()), dk.upload(kb.data(), kb.size()), dv.upload(vb.data(), vb.size());
  int pos0 = 0;
  for (int n : chunks) {
    CK(cudaMemset(dout.p, 0xff, len * qrow * sizeof(bf16)));  // NaN poison
    PrefillArgs a;
    a.q = dq.p + pos0 * qrow, a.k = dk.p + pos0 * kvrow, a.v = dv.p + pos0 * kvrow, a.out = dout.p + pos0 * qrow;
    a.q_stride = a.o_stride = (int64_t)qrow, a.kv_stride = (int64_t)kvrow;
    a.n = n, a.pos0 = pos0, a.n_heads = s.heads, a.n_kv_heads = s.kv_heads, a.head_dim = s.d;
    a.cache = cache.view;
    a.kernel = kernel;
    if (tell_retrieval && cache.view.mode == HeadMode::Mixed)
      a.retrieval_kv_heads = (int)std::count(kinds.begin(), kinds.end(), 0);
    prefill_attention(a, 0);
    sync_or_die(std::string("prefill_attention[") + prefill_kernel_name(kernel) + "] chunk at " + std::to_string(pos0));
    kv_append(a.k, a.v, a.kv_stride, n, pos0, s.kv_heads, s.d, cache.view, 0);
    CK(cudaDeviceSynchronize());
    std::vector<bf16> got(n * qrow);
    CK(cudaMemcpy(got.data(), a.out, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    std::vector<float> q(qf.begin() + pos0 * qrow, qf.begin() + (pos0 + n) * qrow), ref;
    reference(s, q, kf, vf, pos0, n, kinds, sink, recent, ref);
    const Err e = compare(got, ref);
    std::printf("  prefill[%s] %d/%d d=%d kinds=%d sink=%d recent=%d chunk [%d,%d): max_abs %.3g rel %.3g\n",
                prefill_kernel_name(kernel), s.heads, s.kv_heads, s.d, pattern, sink, recent, pos0, pos0 + n,
                e.max_abs, e.rel());
    EXPECT_LE(e.max_abs, kMaxAbs) << "chunk at " << pos0 << ", " << e.report(s.heads, s.d);
    EXPECT_LE(e.rel(), kMaxRel) << "chunk at " << pos0 << ", " << e.report(s.heads, s.d);
    pos0 += n;
  }
}

// Fill the cache with `len0` tokens, then decode `steps` tokens (append, then attend).
// device_pos: the position comes from device memory (the CUDA-graph form: kv_append and
// decode_attention read it there, the split count is fixed and n_past is poisoned).
void run_decode(const Shape& s, int len0, int steps, int pattern, int sink, int recent, int split_tokens,
                uint32_t seed, bool device_pos = false) {
  const int len = len0 + steps;
  const auto kinds = make_kinds(s.kv_heads, pattern);
  std::mt19937 rng(seed);
  std::vector<bf16> kb, vb, qb;
  std::vector<float> kf, vf, qf;
  const size_t kvrow = (size_t)s.kv_heads * s.d, qrow = (size_t)s.heads * s.d;
  random_bf16(rng, len * kvrow, 1.0f, kb, kf);
  random_bf16(rng, len * kvrow, 1.0f, vb, vf);
  random_bf16(rng, len * qrow, 1.5f, qb, qf);
  TestCache cache(s.kv_heads, s.d, len, kinds, sink, recent, seed + 1);
  DevBuf<bf16> dq(len * qrow), dk(len * kvrow), dv(len * kvrow), dout(qrow);
  dq.upload(qb.data(), qb.size()), dk.upload(kb.data(), kb.size()), dv.upload(vb.data(), vb.size());
  kv_append(dk.p, dv.p, kvrow, len0, 0, s.kv_heads, s.d, cache.view, 0);
  const int max_splits = std::max((len + 63) / 64 + 1, 1024);  // device_pos: one wave of splits
  DevBuf<unsigned char> ws(decode_workspace_bytes(s.heads, s.d, max_splits));
  DevBuf<int32_t> dpos(1);
  for (int t = 0; t < steps; ++t) {
    const int pos = len0 + t;
    if (device_pos) {
      dpos.upload(&pos, 1);
      kv_append(dk.p + pos * kvrow, dv.p + pos * kvrow, kvrow, 1, -12345, s.kv_heads, s.d, cache.view, 0, dpos.p);
    } else {
      kv_append(dk.p + pos * kvrow, dv.p + pos * kvrow, kvrow, 1, pos, s.kv_heads, s.d, cache.view, 0);
    }
    CK(cudaMemset(dout.p, 0xff, qrow * sizeof(bf16)));
    CK(cudaMemset(ws.p, 0xff, ws.n));  // NaN poison: empty splits must not read stale partials
    DecodeArgs a;
    a.q = dq.p + pos * qrow, a.out = dout.p, a.n_past = device_pos ? (pos % 2 ? 0 : len) : pos + 1;  // bound or none
    if (device_pos) a.pos_d = dpos.p;
    a.n_heads = s.heads, a.n_kv_heads = s.kv_heads, a.head_dim = s.d;
    a.cache = cache.view;
    a.workspace = ws.p, a.workspace_bytes = ws.n, a.split_tokens = split_tokens;
    a.retrieval_kv_heads = (int)std::count(kinds.begin(), kinds.end(), 0);
    decode_attention(a, 0);
    CK(cudaDeviceSynchronize());
    std::vector<bf16> got(qrow);
    CK(cudaMemcpy(got.data(), dout.p, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    std::vector<float> q(qf.begin() + pos * qrow, qf.begin() + (pos + 1) * qrow), ref;
    reference(s, q, kf, vf, pos, 1, kinds, sink, recent, ref);
    const Err e = compare(got, ref);
    std::printf("  decode %d/%d d=%d kinds=%d sink=%d recent=%d pos %d splits %d: max_abs %.3g rel %.3g\n", s.heads,
                s.kv_heads, s.d, pattern, sink, recent, pos, decode_splits(a), e.max_abs, e.rel());
    EXPECT_LE(e.max_abs, kMaxAbs) << "pos " << pos;
    EXPECT_LE(e.rel(), kMaxRel) << "pos " << pos;
  }
}

const Shape kLlama{32, 8, 128}, kMha{8, 8, 128}, kSmol{9, 3, 64};
const Shape kGqa8{16, 2, 128}, kQwen{12, 2, 128}, kSmall{8, 2, 128};

// Pre-fill cases run once per kernel: the test parameter.
class CudaPrefill : public ::testing::TestWithParam<PrefillKernel> {
 protected:
  void SetUp() override {
    if (GetParam() != PrefillKernel::Mma && !prefill_wgmma_available())
      GTEST_SKIP() << "wgmma pre-fill kernel unavailable here (needs sm_90a code and a cc 9.0 device)";
  }
  void run(const Shape& s, const std::vector<int>& chunks, int pattern, int sink, int recent, uint32_t seed,
           bool tell_retrieval = true) {
    run_prefill(s, chunks, pattern, sink, recent, seed, GetParam(), tell_retrieval);
  }
};

TEST_P(CudaPrefill, CausalGqa32x8D128) { run(kLlama, {333}, 0, 0, 1, 1); }
TEST_P(CudaPrefill, CausalMhaD128) { run(kMha, {200}, 0, 0, 1, 2); }
TEST_P(CudaPrefill, CausalSmol9x3D64) { run(kSmol, {517}, 0, 0, 1, 3); }
TEST_P(CudaPrefill, LambdaGqaSmallWindow) { run(kLlama, {333}, 1, 4, 40, 4); }
TEST_P(CudaPrefill, LambdaSmolWindowWiderThanTile) { run(kSmol, {517}, 1, 3, 100, 5); }
TEST_P(CudaPrefill, LambdaNoSink) { run(kMha, {300}, 1, 0, 17, 6); }
TEST_P(CudaPrefill, ChunkedRetrievalOverPages) { run(kLlama, {250, 300, 150}, 0, 0, 1, 7); }
TEST_P(CudaPrefill, ChunkedMixedHeadsRingWrap) { run(kLlama, {250, 250, 200}, 2, 5, 70, 8); }
TEST_P(CudaPrefill, ChunkedMixedSmol) { run(kSmol, {130, 1, 300, 77}, 2, 4, 90, 9); }
TEST_P(CudaPrefill, ChunkedMixedRetrievalCountNotGiven) { run(kLlama, {250, 250, 200}, 2, 5, 70, 8, false); }
TEST_P(CudaPrefill, ChunkedStreamingMha) { run(kMha, {100, 200, 129}, 1, 8, 33, 10); }

// Tiling edges of the wgmma kernel (128-row query blocks, 128-key tiles, 2-stage K/V ring).
TEST_P(CudaPrefill, TinyChunks) { run(kLlama, {1, 2, 1, 5}, 0, 0, 1, 20); }
TEST_P(CudaPrefill, OneBlockExactly) { run(kMha, {128}, 0, 0, 1, 21); }
TEST_P(CudaPrefill, OneBlockPlusOneRow) { run(kMha, {129}, 0, 0, 1, 22); }
TEST_P(CudaPrefill, SecondWarpgroupEmpty) { run(kLlama, {64}, 0, 0, 1, 23); }
TEST_P(CudaPrefill, SecondWarpgroupOneRow) { run(kLlama, {65}, 2, 3, 20, 24); }
TEST_P(CudaPrefill, GqaGroupOf8) { run(kGqa8, {300}, 0, 0, 1, 25); }
TEST_P(CudaPrefill, GqaGroupOf6Mixed) { run(kQwen, {200, 170}, 2, 64, 256, 26); }
// Many tiles a block: the K/V ring wraps several times (both stages, both phases).
TEST_P(CudaPrefill, LongCausalManyTiles) { run(kSmall, {1100}, 0, 0, 1, 27); }
TEST_P(CudaPrefill, LongMixedManyTiles) { run(kSmall, {1100}, 2, 64, 256, 28); }
// Chunks starting mid-tile and mid-page: one key tile mixes cache rows and chunk rows.
TEST_P(CudaPrefill, ChunkedRetrievalOddOffsets) { run(kLlama, {100, 157, 300}, 0, 0, 1, 29); }
TEST_P(CudaPrefill, ChunkedMixedOddOffsetsRingWrap) { run(kLlama, {37, 300, 5, 200}, 2, 3, 50, 30); }
// Λ windows against the 128-key tile: recent smaller than a tile, several tiles wide, a sink
// wider than a tile (sink tiles and recent tiles overlap for early blocks).
TEST_P(CudaPrefill, LambdaRecentSmallerThanTile) { run(kSmall, {700}, 1, 4, 100, 31); }
TEST_P(CudaPrefill, LambdaRecentSeveralTiles) { run(kSmall, {900}, 1, 16, 300, 32); }
TEST_P(CudaPrefill, LambdaSinkWiderThanTile) { run(kSmall, {800}, 1, 130, 60, 33); }
TEST_P(CudaPrefill, LambdaChunkedSinkWiderThanTile) { run(kSmall, {300, 260, 250}, 1, 130, 60, 34); }
TEST_P(CudaPrefill, LambdaD64ChunkedRing) { run(kSmol, {200, 300}, 1, 8, 150, 35); }

// One-hot probe of the wgmma layouts: query i attends (with probability 1 in bf16) to key
// key_of(i) only, because Q[i] = 256 e_{key_of(i)} and K[j] = e_j (d = 128 >= keys), so the output
// row must equal V[key_of(i)] exactly. A wrong row names the key that was read instead (Q/K
// operand layout, S fragment or mask); a wrong element names the V element it came from (V
// operand layout, P fragment, O fragment or epilogue).
void run_probe(int n, int (*key_of)(int), PrefillKernel kernel) {
  constexpr int d = 128;
  ASSERT_LE(n, d) << "one-hot keys need n <= head_dim";
  std::vector<bf16> qb((size_t)n * d, __float2bfloat16(0.0f)), kb((size_t)n * d, __float2bfloat16(0.0f)), vb;
  std::vector<float> vf;
  std::mt19937 rng(77);
  random_bf16(rng, (size_t)n * d, 1.0f, vb, vf);
  for (int i = 0; i < n; ++i) {
    qb[(size_t)i * d + key_of(i)] = __float2bfloat16(256.0f);
    kb[(size_t)i * d + i] = __float2bfloat16(1.0f);
  }
  TestCache cache(1, d, n, {0}, 0, 1, 5);
  DevBuf<bf16> dq(qb.size()), dk(kb.size()), dv(vb.size()), dout(qb.size());
  dq.upload(qb.data(), qb.size()), dk.upload(kb.data(), kb.size()), dv.upload(vb.data(), vb.size());
  CK(cudaMemset(dout.p, 0xff, dout.n * sizeof(bf16)));
  PrefillArgs a;
  a.q = dq.p, a.k = dk.p, a.v = dv.p, a.out = dout.p;
  a.q_stride = a.kv_stride = a.o_stride = d;
  a.n = n, a.pos0 = 0, a.n_heads = 1, a.n_kv_heads = 1, a.head_dim = d;
  a.cache = cache.view;
  a.kernel = kernel;
  prefill_attention(a, 0);
  sync_or_die(std::string("probe prefill_attention[") + prefill_kernel_name(kernel) + "]");
  std::vector<bf16> got(qb.size());
  CK(cudaMemcpy(got.data(), dout.p, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
  int bad_rows = 0;
  for (int i = 0; i < n; ++i) {
    const float* want = &vf[(size_t)key_of(i) * d];
    int c = 0;
    while (c < d && __bfloat162float(got[(size_t)i * d + c]) == want[c]) ++c;
    if (c == d) continue;
    if (++bad_rows > 8) continue;  // report the first few rows only
    int read = -1;  // a key whose whole V row is the output row
    for (int j = 0; j < n && read < 0; ++j) {
      int e = 0;
      while (e < d && __bfloat162float(got[(size_t)i * d + e]) == vf[(size_t)j * d + e]) ++e;
      if (e == d) read = j;
    }
    const float g = __bfloat162float(got[(size_t)i * d + c]);
    std::string from;
    for (int j = 0, found = 0; j < n && found < 3; ++j)
      for (int e = 0; e < d && found < 3; ++e)
        if (vf[(size_t)j * d + e] == g) from += " V[" + std::to_string(j) + "][" + std::to_string(e) + "]", ++found;
    ADD_FAILURE() << "row " << i << " should be V[" << key_of(i) << "]"
                  << (read >= 0 ? ", is V[" + std::to_string(read) + "] (wrong key read)" : std::string())
                  << "; first wrong dim " << c << ": got " << g << " want " << want[c]
                  << (from.empty() ? std::string(" (no V element has this value)") : ", value of" + from);
  }
  std::printf("  probe[%s] n=%d: %d of %d rows wrong\n", prefill_kernel_name(kernel), n, bad_rows, n);
}

TEST_P(CudaPrefill, ProbeOneTileDiagonal) {  // one CTA, one key tile: key i for query i
  run_probe(128, [](int i) { return i; }, GetParam());
}
TEST_P(CudaPrefill, ProbeOneTileScrambled) {
  run_probe(128, [](int i) { return (i * 37 + 11) % (i + 1); }, GetParam());
}
TEST_P(CudaPrefill, ProbeOneTilePartialRows) {  // 77 rows: masked tail rows, keys past the end
  run_probe(77, [](int i) { return (i * 53 + 5) % (i + 1); }, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Kernel, CudaPrefill,
                         ::testing::Values(PrefillKernel::Mma, PrefillKernel::Wgmma, PrefillKernel::WgmmaSerial,
                                           PrefillKernel::WgmmaPingPong),
                         [](const ::testing::TestParamInfo<PrefillKernel>& i) {
                           return std::string(prefill_kernel_name(i.param));
                         });

// Dispatch: on a Hopper device the test binary must hold the wgmma kernel and Auto must pick it
// for head_dim 128; head_dim 64 and misaligned rows stay on mma.sync; forcing wgmma where it
// cannot run is an error.
TEST(CudaPrefillDispatch, AutoChoosesWgmmaOnHopper) {
  int dev = 0, major = 0, minor = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  CK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  PrefillArgs a;
  a.head_dim = 128, a.n = 1, a.n_heads = a.n_kv_heads = 1;
  a.q_stride = a.kv_stride = a.o_stride = 128;
  if (major == 9 && minor == 0) {
    ASSERT_TRUE(prefill_wgmma_available()) << "cc 9.0 device but no sm_90a code: build with CMAKE_CUDA_ARCHITECTURES=90a";
    if (std::getenv("DUO_PREFILL_KERNEL") == nullptr) EXPECT_EQ(prefill_kernel_for(a), PrefillKernel::WgmmaPingPong);
  } else {
    EXPECT_FALSE(prefill_wgmma_available());
    EXPECT_THROW(
        {
          a.kernel = PrefillKernel::Wgmma;
          prefill_kernel_for(a);
        },
        std::runtime_error);
    return;
  }
  a.kernel = PrefillKernel::Auto;
  a.head_dim = 64;
  a.q_stride = a.kv_stride = a.o_stride = 64;
  if (std::getenv("DUO_PREFILL_KERNEL") == nullptr) EXPECT_EQ(prefill_kernel_for(a), PrefillKernel::Mma);
  a.kernel = PrefillKernel::Wgmma;
  EXPECT_EQ(prefill_kernel_for(a), PrefillKernel::Wgmma);  // head_dim 64 runs when forced
  a.head_dim = 128, a.q_stride = 132;                       // rows not 16-byte aligned
  a.kernel = PrefillKernel::Auto;
  if (std::getenv("DUO_PREFILL_KERNEL") == nullptr) EXPECT_EQ(prefill_kernel_for(a), PrefillKernel::Mma);
  a.kernel = PrefillKernel::Wgmma;
  EXPECT_THROW(prefill_kernel_for(a), std::runtime_error);
}

TEST(CudaDecode, PagedGqaPartialPageManySplits) { run_decode(kLlama, 1337, 3, 0, 0, 1, 256, 11); }
TEST(CudaDecode, PagedGqaAutoSplit) { run_decode(kLlama, 1500, 2, 0, 0, 1, 0, 12); }
TEST(CudaDecode, MixedGqaRingWrap) { run_decode(kLlama, 1337, 3, 2, 4, 64, 320, 13); }
TEST(CudaDecode, MixedSmol) { run_decode(kSmol, 700, 3, 2, 4, 50, 128, 14); }
TEST(CudaDecode, MhaSingleSplit) { run_decode(kMha, 300, 2, 0, 0, 1, 4096, 15); }
TEST(CudaDecode, StreamingShortContext) { run_decode(kLlama, 20, 3, 1, 4, 64, 0, 16); }
TEST(CudaDecode, StreamingLongRingWrap) { run_decode(kSmol, 1000, 2, 1, 16, 100, 0, 17); }
TEST(CudaDecode, MixedAutoSplit) { run_decode(kLlama, 1500, 3, 2, 4, 64, 0, 18); }
// Position in device memory (what a captured CUDA graph replays): one-wave split count, split
// sizes from the device position, over a page boundary and the ring wrap.
TEST(CudaDecode, DevicePosRetrieval) { run_decode(kLlama, 250, 12, 0, 0, 1, 0, 30, true); }
TEST(CudaDecode, DevicePosMixedRingWrap) { run_decode(kLlama, 1530, 10, 2, 4, 64, 0, 31, true); }
TEST(CudaDecode, DevicePosStreaming) { run_decode(kSmol, 300, 5, 1, 4, 32, 0, 32, true); }
TEST(CudaDecode, DevicePosEveryShortContextMixed) { run_decode(kSmol, 0, 70, 2, 4, 16, 0, 33, true); }
// Every context length from 1 on: a lane group or a split whose keys all lie past n_past must
// contribute nothing (it once produced NaN through exp2(-inf - -inf) and broke real decoding).
TEST(CudaDecode, EveryShortContextRetrieval) { run_decode(kSmol, 0, 160, 0, 0, 1, 0, 21); }
TEST(CudaDecode, EveryShortContextSplit64) { run_decode(kSmol, 0, 160, 0, 0, 1, 64, 22); }
TEST(CudaDecode, EveryShortContextMixedD128) { run_decode(kLlama, 0, 120, 2, 4, 16, 64, 23); }
TEST(CudaDecode, EveryShortContextStreaming) { run_decode(kSmol, 0, 120, 1, 4, 32, 0, 24); }

// Every GQA group 1-8 at both head dims: a retrieval head (5 splits, the last partial, odd
// length over page boundaries) and a streaming head (ring wrap) in one launch.
TEST(CudaDecode, EveryGqaGroupBothHeadDims) {
  for (int d : {64, 128})
    for (int g = 1; g <= 8; ++g) run_decode(Shape{2 * g, 2, d}, 517, 2, 2, 4, 64, 128, 40 + g);
}
// One split over thousands of keys: each warp streams ~50 16-key blocks through its stages,
// over 12 pages (the tensor-core kernel's page look-ahead and stage reuse).
TEST(CudaDecode, PagedLongSingleSplit) {
  run_decode(kLlama, 3001, 1, 0, 0, 1, 4096, 50);
  run_decode(kSmol, 3001, 1, 0, 0, 1, 4096, 51);
}
// A ring of 1064 rows in one CTA: many blocks a warp, the last one partial, after the wrap.
TEST(CudaDecode, StreamingWideRing) { run_decode(kSmol, 2000, 2, 1, 64, 1000, 0, 52); }

}  // namespace
}  // namespace duo::cuda
