// CUDA attention kernels vs the CPU reference (attention_ref, double accumulation). Inputs are
// drawn at random, rounded to bf16, and the same rounded values feed the reference. Outputs
// are poisoned with NaN before each launch so an unwritten element fails.
// Tolerance: bf16 output (~3 significant digits) with P rounded to bf16 before P*V:
// max |gpu - ref| <= 2e-2 and ||gpu - ref|| / ||ref|| <= 1e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cuda/attention.cuh"

namespace duo::cuda {
namespace {

constexpr double kMaxAbs = 2e-2, kMaxRel = 1e-2;

#define CK(x) check_cuda((x), #x)

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
  void add(float got, float ref) {
    if (!std::isfinite(got)) {
      max_abs = INFINITY;
      return;
    }
    max_abs = std::max(max_abs, (double)std::fabs(got - ref));
    num += (double)(got - ref) * (got - ref), den += (double)ref * ref;
  }
  double rel() const { return std::sqrt(num / std::max(den, 1e-30)); }
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
  for (size_t i = 0; i < ref.size(); ++i) e.add(__bfloat162float(got[i]), ref[i]);
  return e;
}

// Pre-fill a sequence of `len` tokens in the given chunks (each chunk attends to the cache
// plus itself, then is appended), checking every chunk's output against the reference.
void run_prefill(const Shape& s, const std::vector<int>& chunks, int pattern, int sink, int recent, uint32_t seed) {
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
    prefill_attention(a, 0);
    kv_append(a.k, a.v, a.kv_stride, n, pos0, s.kv_heads, s.d, cache.view, 0);
    CK(cudaDeviceSynchronize());
    std::vector<bf16> got(n * qrow);
    CK(cudaMemcpy(got.data(), a.out, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    std::vector<float> q(qf.begin() + pos0 * qrow, qf.begin() + (pos0 + n) * qrow), ref;
    reference(s, q, kf, vf, pos0, n, kinds, sink, recent, ref);
    const Err e = compare(got, ref);
    std::printf("  prefill %d/%d d=%d kinds=%d sink=%d recent=%d chunk [%d,%d): max_abs %.3g rel %.3g\n", s.heads,
                s.kv_heads, s.d, pattern, sink, recent, pos0, pos0 + n, e.max_abs, e.rel());
    EXPECT_LE(e.max_abs, kMaxAbs) << "chunk at " << pos0;
    EXPECT_LE(e.rel(), kMaxRel) << "chunk at " << pos0;
    pos0 += n;
  }
}

// Fill the cache with `len0` tokens, then decode `steps` tokens (append, then attend).
void run_decode(const Shape& s, int len0, int steps, int pattern, int sink, int recent, int split_tokens,
                uint32_t seed) {
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
  const int max_splits = (len + 63) / 64 + 1;
  DevBuf<unsigned char> ws(decode_workspace_bytes(s.heads, s.d, max_splits));
  for (int t = 0; t < steps; ++t) {
    const int pos = len0 + t;
    kv_append(dk.p + pos * kvrow, dv.p + pos * kvrow, kvrow, 1, pos, s.kv_heads, s.d, cache.view, 0);
    CK(cudaMemset(dout.p, 0xff, qrow * sizeof(bf16)));
    DecodeArgs a;
    a.q = dq.p + pos * qrow, a.out = dout.p, a.n_past = pos + 1;
    a.n_heads = s.heads, a.n_kv_heads = s.kv_heads, a.head_dim = s.d;
    a.cache = cache.view;
    a.workspace = ws.p, a.workspace_bytes = ws.n, a.split_tokens = split_tokens;
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

TEST(CudaPrefill, CausalGqa32x8D128) { run_prefill(kLlama, {333}, 0, 0, 1, 1); }
TEST(CudaPrefill, CausalMhaD128) { run_prefill(kMha, {200}, 0, 0, 1, 2); }
TEST(CudaPrefill, CausalSmol9x3D64) { run_prefill(kSmol, {517}, 0, 0, 1, 3); }
TEST(CudaPrefill, LambdaGqaSmallWindow) { run_prefill(kLlama, {333}, 1, 4, 40, 4); }
TEST(CudaPrefill, LambdaSmolWindowWiderThanTile) { run_prefill(kSmol, {517}, 1, 3, 100, 5); }
TEST(CudaPrefill, LambdaNoSink) { run_prefill(kMha, {300}, 1, 0, 17, 6); }
TEST(CudaPrefill, ChunkedRetrievalOverPages) { run_prefill(kLlama, {250, 300, 150}, 0, 0, 1, 7); }
TEST(CudaPrefill, ChunkedMixedHeadsRingWrap) { run_prefill(kLlama, {250, 250, 200}, 2, 5, 70, 8); }
TEST(CudaPrefill, ChunkedMixedSmol) { run_prefill(kSmol, {130, 1, 300, 77}, 2, 4, 90, 9); }
TEST(CudaPrefill, ChunkedStreamingMha) { run_prefill(kMha, {100, 200, 129}, 1, 8, 33, 10); }

TEST(CudaDecode, PagedGqaPartialPageManySplits) { run_decode(kLlama, 1337, 3, 0, 0, 1, 256, 11); }
TEST(CudaDecode, PagedGqaAutoSplit) { run_decode(kLlama, 1500, 2, 0, 0, 1, 0, 12); }
TEST(CudaDecode, MixedGqaRingWrap) { run_decode(kLlama, 1337, 3, 2, 4, 64, 320, 13); }
TEST(CudaDecode, MixedSmol) { run_decode(kSmol, 700, 3, 2, 4, 50, 128, 14); }
TEST(CudaDecode, MhaSingleSplit) { run_decode(kMha, 300, 2, 0, 0, 1, 4096, 15); }
TEST(CudaDecode, StreamingShortContext) { run_decode(kLlama, 20, 3, 1, 4, 64, 0, 16); }
TEST(CudaDecode, StreamingLongRingWrap) { run_decode(kSmol, 1000, 2, 1, 16, 100, 0, 17); }

}  // namespace
}  // namespace duo::cuda
