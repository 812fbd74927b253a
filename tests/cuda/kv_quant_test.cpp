// Quantized GPU KV cache (--kv-type q8 / q4) against the CPU cache of the same type, fed the same
// bf16 rows in the same chunks:
//  - Layout*: kv_quantize + kv_append (pre-fill form) and the decode form (token written to the
//    residual, group quantized on the device position) leave, for every position the CPU cache
//    holds, exactly the CPU's bytes: quantized groups (codes and params, both kv_quant.h),
//    bf16 sink and residual rows, streaming rings. Byte accounting equals the CPU's.
//  - Decode* / Prefill*: decode_attention and prefill_attention over the quantized cache against
//    attention_ref over the CPU cache (which dequantizes the same bytes to the same values):
//    max |gpu - ref| <= 2e-2 (decode: 3e-2, see kDecodeMaxAbs) and relative RMS <= 1e-2.
// Failures name the layer, head, position and what differs (codes, K params, V params, rows).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/cpu/attention.h"
#include "backend/cuda/gpu_kv_cache.h"
#include "backend/cuda/kernels.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "backend/cpu/kv_cache.h"
#include "kv/kv_quant.h"

namespace duo::cuda {
namespace {

using test::Dev;

ModelConfig cache_config(int layers, int kv_heads, int heads, int d) {
  ModelConfig c;
  c.n_layers = layers, c.n_kv_heads = kv_heads, c.n_heads = heads, c.head_dim = d;
  return c;
}

template <class T>
std::vector<T> download(const void* p, size_t n) {
  std::vector<T> h(n);
  if (n) DUO_CUDA_TRY(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

int retrieval_in(const HeadPlan& plan, int l) {
  int r = 0;
  for (HeadKind k : plan.kinds[l]) r += k == HeadKind::Retrieval;
  return r;
}

// Every position the CPU cache holds must be in the GPU cache with the same bytes.
void expect_same_contents(const GpuKvCache& gpu, const KvCache& cpu, const HeadPlan& plan, int d) {
  DUO_CUDA_TRY(cudaDeviceSynchronize());
  const int layers = (int)plan.kinds.size(), n_kv = (int)plan.kinds[0].size();
  const int bits = quant_bits(gpu.type());
  const kvq::QuantLayout L{d, bits};
  const int64_t n_past = cpu.n_past();
  const int64_t pages_per_head = (n_past + kPageTokens - 1) / kPageTokens;
  int total_r = 0;
  for (int l = 0; l < layers; ++l) total_r += retrieval_in(plan, l);
  const size_t pool = (size_t)(total_r * pages_per_head) * (size_t)L.page_bytes();
  const auto kpool = download<uint8_t>(gpu.layer(0).kq_pages, pool), vpool = download<uint8_t>(gpu.layer(0).vq_pages, pool);
  for (int l = 0; l < layers; ++l) {
    const LayerKv& v = gpu.layer(l);
    const int R = retrieval_in(plan, l);
    const auto table = download<int32_t>(v.page_table, (size_t)n_kv * v.max_pages);
    const auto slots = download<int32_t>(v.slot_of, (size_t)n_kv);
    const auto ksink = download<uint16_t>(v.k_sink, (size_t)R * v.sink16 * d);
    const auto vsink = download<uint16_t>(v.v_sink, (size_t)R * v.sink16 * d);
    const auto kres = download<uint16_t>(v.k_resid, (size_t)R * kvq::kGroup * d);
    const auto vres = download<uint16_t>(v.v_resid, (size_t)R * kvq::kGroup * d);
    const size_t ring = v.k_ring ? (size_t)n_kv * (v.sink + v.recent) * d : 0;
    const auto kring = download<uint16_t>(v.k_ring, ring), vring = download<uint16_t>(v.v_ring, ring);
    int r = 0;
    for (int h = 0; h < n_kv; ++h) {
      const bool streaming = plan.kinds[l][h] == HeadKind::Streaming;
      if (!streaming) {
        ASSERT_EQ(slots[h], r) << "layer " << l << " head " << h << ": retrieval slot";
        ++r;
      }
      std::vector<KvSegment> segs;
      cpu.head(l, h).segments(n_past, segs);
      for (const KvSegment& s : segs) {
        SCOPED_TRACE(::testing::Message() << "layer " << l << " head " << h << " segment at " << s.pos0);
        if (is_quantized(s.type)) {
          const int32_t page = table[(size_t)h * v.max_pages + s.pos0 / kPageTokens];
          ASSERT_GE(page, 0);
          ASSERT_LE((size_t)(page + 1) * L.page_bytes(), pool) << "page " << page << " outside the used pool";
          const uint8_t* gk = kpool.data() + (size_t)page * L.page_bytes();
          const uint8_t* gv = vpool.data() + (size_t)page * L.page_bytes();
          const auto* ck = static_cast<const uint8_t*>(s.kx);
          const auto* cv = static_cast<const uint8_t*>(s.vx);
          const int t0 = s.group * kvq::kGroup;
          const size_t codes = (size_t)kvq::kGroup * L.row_bytes();
          for (size_t b = 0; b < codes; ++b) {
            ASSERT_EQ(gk[L.codes(t0) + b], ck[L.codes(t0) + b]) << "K codes, position " << s.pos0 + b / L.row_bytes();
            ASSERT_EQ(gv[L.codes(t0) + b], cv[L.codes(t0) + b]) << "V codes, position " << s.pos0 + b / L.row_bytes();
          }
          ASSERT_EQ(std::memcmp(gk + L.k_params(s.group, 0), ck + L.k_params(s.group, 0), (size_t)4 * d), 0)
              << "K params (scale, min per channel) differ";
          ASSERT_EQ(std::memcmp(gv + L.v_params(t0, 0), cv + L.v_params(t0, 0), (size_t)4 * kvq::kGroup * (d / 64)), 0)
              << "V params (scale, min per position and channel group) differ";
          continue;
        }
        ASSERT_EQ(s.type, KvType::BF16);
        for (int64_t rr = 0; rr < s.n; ++rr) {
          const int64_t p = s.pos0 + rr;
          const uint16_t *gk, *gv;
          if (streaming) {
            const int64_t row = p < v.sink ? p : v.sink + (p - v.sink) % v.recent;
            const size_t off = ((size_t)h * (v.sink + v.recent) + row) * d;
            gk = &kring[off], gv = &vring[off];
          } else if (p < v.sink16) {
            const size_t off = ((size_t)slots[h] * v.sink16 + p) * d;
            gk = &ksink[off], gv = &vsink[off];
          } else {
            const size_t off = ((size_t)slots[h] * kvq::kGroup + p % kvq::kGroup) * d;
            gk = &kres[off], gv = &vres[off];
          }
          const uint16_t* ckr = static_cast<const uint16_t*>(s.kx) + rr * s.stride;
          const uint16_t* cvr = static_cast<const uint16_t*>(s.vx) + rr * s.stride;
          for (int c = 0; c < d; ++c) {
            ASSERT_EQ(gk[c], ckr[c]) << (streaming ? "ring" : p < v.sink16 ? "sink" : "residual") << " K row, position "
                                     << p << " dim " << c;
            ASSERT_EQ(gv[c], cvr[c]) << "V row, position " << p << " dim " << c;
          }
        }
      }
    }
  }
  EXPECT_EQ(gpu.bytes(HeadKind::Retrieval), cpu.bytes(HeadKind::Retrieval));
  EXPECT_EQ(gpu.bytes(HeadKind::Streaming), cpu.bytes(HeadKind::Streaming));
}

// The same random bf16 rows into both caches. Chunks > 0: pre-fill form (kv_quantize then
// kv_append). A chunk of -1: one decode token in the graph form (position in device memory,
// kv_append then kv_quantize with no chunk rows).
struct Caches {
  ModelConfig cfg;
  HeadPlan plan;
  std::unique_ptr<GpuKvCache> gpu;
  std::unique_ptr<KvCache> cpu;
  std::mt19937 rng;
  std::vector<std::vector<float>> k, v;  // [layer]: every appended row, bf16-rounded ([pos][n_kv][d])
  Dev<int32_t> pos_d{1};

  Caches(int layers, int n_kv, int heads, int d, HeadPlan p, int64_t capacity, uint32_t seed)
      : cfg(cache_config(layers, n_kv, heads, d)), plan(std::move(p)), rng(seed), k(layers), v(layers) {
    gpu = std::make_unique<GpuKvCache>(cfg, plan, capacity, nullptr);
    cpu = std::make_unique<KvCache>(layers, n_kv, d, plan);
  }
  void append(int chunk) {
    const bool device_form = chunk < 0;
    const int n = device_form ? 1 : chunk;
    const int d = cfg.head_dim, n_kv = cfg.n_kv_heads;
    const int64_t row = (int64_t)n_kv * d, pos0 = gpu->n_past();
    gpu->reserve(pos0 + n);
    if (device_form) pos_d.upload(std::vector<int32_t>{(int32_t)pos0});
    for (int l = 0; l < cfg.n_layers; ++l) {
      auto kr = test::randn_bf16(rng, (size_t)(n * row)), vr = test::randn_bf16(rng, (size_t)(n * row));
      for (size_t i = 0; i < kr.size(); i += 5) kr[i] = test::round_bf16(kr[i] * 6.0f);  // outlier channels
      Dev<bf16> dk(test::to_bf16(kr)), dv(test::to_bf16(vr));
      const LayerKv& view = gpu->layer(l);
      const int R = gpu->retrieval_heads(l);
      if (device_form) {
        kv_append(dk.get(), dv.get(), row, 1, -7, n_kv, d, view, 0, pos_d.get());
        kv_quantize(nullptr, nullptr, 0, 1, -7, n_kv, d, R, view, 0, pos_d.get());
      } else {
        kv_quantize(dk.get(), dv.get(), row, n, (int)pos0, n_kv, d, R, view, 0);
        kv_append(dk.get(), dv.get(), row, n, (int)pos0, n_kv, d, view, 0);
      }
      DUO_CUDA_TRY(cudaDeviceSynchronize());
      for (int h = 0; h < n_kv; ++h) cpu->head(l, h).append(kr.data() + h * d, vr.data() + h * d, n, row, pos0);
      k[l].insert(k[l].end(), kr.begin(), kr.end());
      v[l].insert(v[l].end(), vr.begin(), vr.end());
    }
    gpu->advance(n);
    cpu->advance(n);
  }
};

HeadPlan mixed_plan(int layers, int n_kv, StreamingWindow w, KvType type) {
  HeadPlan plan = HeadPlan::uniform(layers, n_kv, HeadKind::Retrieval, w);
  plan.kv_type = type;
  if (layers > 1)
    for (int h = 0; h < n_kv; h += 2) plan.kinds[0][h] = HeadKind::Streaming;  // layer 0 mixed, head 0 streaming
  if (layers > 2) plan.kinds[2] = std::vector<HeadKind>(n_kv, HeadKind::Streaming);
  return plan;
}

void run_layout(KvType type, int d, StreamingWindow w, const std::vector<int>& chunks, uint32_t seed) {
  const int layers = 3, n_kv = 4;
  int total = 0;
  for (int c : chunks) total += c < 0 ? 1 : c;
  Caches cs(layers, n_kv, n_kv, d, mixed_plan(layers, n_kv, w, type), total + 5, seed);
  for (int c : chunks) {
    cs.append(c);
    SCOPED_TRACE(std::string(to_string(type)) + " d " + std::to_string(d) + " after " +
                 std::to_string(cs.gpu->n_past()) + " positions");
    expect_same_contents(*cs.gpu, *cs.cpu, cs.plan, d);
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_EQ(GpuKvCache::bytes_for(cs.cfg, cs.plan, cs.gpu->n_past()), cs.gpu->bytes());
  }
}

TEST(CudaKvQuant, LayoutQ4ChunksCompleteGroupsEveryWay) {
  // 63 + 1: a group completed by a one-token chunk; 200: groups completed inside the chunk from
  // residual rows and chunk rows; 64 at an aligned start: a group wholly from the chunk.
  run_layout(KvType::Q4, 128, {64, 256}, {63, 1, 200, 64, 3, 300, 2}, 1);
}
TEST(CudaKvQuant, LayoutQ8D64SmallSinkRingWraps) { run_layout(KvType::Q8, 64, {4, 40}, {100, 1, 300, 37, 256}, 2); }
TEST(CudaKvQuant, LayoutNoSink) { run_layout(KvType::Q4, 64, {0, 33}, {65, 127, 64, 1}, 3); }
TEST(CudaKvQuant, LayoutDecodeFormAcrossGroupsAndPages) {
  // 190 positions, then 140 tokens one by one with the position on the device: groups complete
  // at 255 (a page end) and 319, quantized by the decode-form kernel from the residual alone.
  std::vector<int> chunks = {190};
  for (int i = 0; i < 140; ++i) chunks.push_back(-1);
  run_layout(KvType::Q4, 128, {100, 64}, chunks, 4);  // sink 100: two bf16 sink groups
}

TEST(CudaKvQuant, BytesMatchCpuFormulas) {
  const ModelConfig c = cache_config(4, 8, 32, 128);
  for (KvType t : {KvType::Default, KvType::BF16, KvType::Q8, KvType::Q4}) {
    HeadPlan plan = mixed_plan(4, 8, {64, 256}, t);
    plan.kv_type = t;
    HeadPlan cpu_plan = plan;
    cpu_plan.kv_type = t == KvType::Default ? KvType::BF16 : t;
    for (int64_t n : {0, 1, 255, 256, 100000})
      EXPECT_EQ(GpuKvCache::bytes_for(c, plan, n), KvCache::bytes_for(cpu_plan, 128, n)) << to_string(t) << " " << n;
  }
  // Llama-3-8B shape, all retrieval, 1M tokens: q4 pages are 4.5 bits an element.
  HeadPlan full = HeadPlan::uniform(32, 8, HeadKind::Retrieval);
  full.kv_type = KvType::Q4;
  const double q4 = (double)GpuKvCache::bytes_for(c, full, 1 << 20);
  full.kv_type = KvType::BF16;
  const double b16 = (double)GpuKvCache::bytes_for(c, full, 1 << 20);
  EXPECT_NEAR(b16 / q4, 16.0 / 4.5, 0.01);
  HeadPlan f32 = full;
  f32.kv_type = KvType::F32;
  EXPECT_THROW(GpuKvCache(c, f32, 100, nullptr), Error);
  f32.kv_type = KvType::F16;
  EXPECT_THROW(GpuKvCache(c, f32, 100, nullptr), Error);
}

// ---------------------------------------------------------------------------------------------
// Attention over the quantized cache vs attention_ref over the CPU cache of the same type.

constexpr double kMaxAbs = 2e-2, kMaxRel = 1e-2;
// The quantized decode kernel multiplies bf16 probabilities (scaled by each key's value scale)
// with the codes on the tensor cores, as the pre-fill kernels multiply bf16 probabilities with
// bf16 values: its worst element over these cases is ~0.021 (relative RMS <= 0.0065), where the
// CUDA-core kernel it replaced, with fp32 probabilities, stayed under 0.008.
constexpr double kDecodeMaxAbs = 3e-2;

struct Err {
  double max_abs = 0, num = 0, den = 0;
  size_t worst = 0;
  void add(size_t i, float got, float ref) {
    const double e = std::isfinite(got) ? std::fabs((double)got - ref) : INFINITY;
    if (e > max_abs) max_abs = e, worst = i;
    if (std::isfinite(got)) num += e * e;
    den += (double)ref * ref;
  }
  double rel() const { return std::sqrt(num / std::max(den, 1e-30)); }
};

// Queries at positions [pos0, pos0 + n) over the CPU cache's first n_cached positions plus, when
// given, the chunk's own rows at [pos0, pos0 + n) (pre-fill: n_cached = pos0; decode: the cache
// already holds the query's own position, n_cached = pos0 + 1, no chunk).
void reference(const KvCache& cpu, const HeadPlan& plan, const std::vector<float>& q, int heads, int n_kv, int d,
               int64_t n_cached, int64_t pos0, int n, const float* chunk_k, const float* chunk_v,
               std::vector<float>& out) {
  std::vector<std::vector<KvSegment>> segs(n_kv);
  std::vector<HeadKind> kinds(n_kv);
  for (int h = 0; h < n_kv; ++h) {
    cpu.head(0, h).segments(n_cached, segs[h]);
    if (chunk_k) segs[h].push_back({chunk_k + h * d, chunk_v + h * d, pos0, n, (int64_t)n_kv * d});
    kinds[h] = plan.kinds[0][h];
  }
  out.assign((size_t)n * heads * d, 0.0f);
  AttentionArgs a;
  a.q = q.data(), a.out = out.data(), a.n = n, a.pos0 = pos0;
  a.n_heads = heads, a.n_kv_heads = n_kv, a.head_dim = d;
  a.segments = &segs, a.kinds = &kinds, a.window = plan.window;
  attention_ref(a);
}

struct AttnCase {
  int heads, n_kv, d;
  KvType type;
  int kinds;  // 0 all retrieval, 1 all streaming, 2 alternating (head 0 retrieval)
  StreamingWindow w;
};

HeadPlan one_layer_plan(const AttnCase& c) {
  HeadPlan plan = HeadPlan::uniform(1, c.n_kv, HeadKind::Retrieval, c.w);
  plan.kv_type = c.type;
  for (int h = 0; h < c.n_kv; ++h)
    if (c.kinds == 1 || (c.kinds == 2 && h % 2)) plan.kinds[0][h] = HeadKind::Streaming;
  return plan;
}

// Fill len0 positions (in chunks of 200), then decode `steps` tokens: append (device form or
// host position), quantize, attend over [0, pos + 1).
void run_decode(const AttnCase& c, int len0, int steps, int split_tokens, bool device_pos, uint32_t seed) {
  Caches cs(1, c.n_kv, c.heads, c.d, one_layer_plan(c), len0 + steps + 1, seed);
  for (int p = 0; p < len0;) {
    const int n = std::min(200, len0 - p);
    cs.append(n);
    p += n;
  }
  const int R = cs.gpu->retrieval_heads(0);
  const size_t qrow = (size_t)c.heads * c.d;
  Dev<bf16> dq(qrow), dout(qrow);
  Dev<uint8_t> ws(decode_workspace_bytes(c.heads, c.d, 2048));
  for (int t = 0; t < steps; ++t) {
    const int pos = len0 + t;
    if (device_pos)
      cs.append(-1);
    else
      cs.append(1);
    const auto q = test::randn_bf16(cs.rng, qrow, 1.5f);
    dq.upload(test::to_bf16(q));
    DUO_CUDA_TRY(cudaMemset(dout.get(), 0xff, qrow * sizeof(bf16)));  // NaN poison
    DUO_CUDA_TRY(cudaMemset(ws.get(), 0xff, ws.size()));
    DecodeArgs a;
    a.q = dq.get(), a.out = dout.get();
    a.n_past = device_pos ? len0 + steps + 1 : pos + 1;  // device form: n_past only bounds the splits
    if (device_pos) a.pos_d = cs.pos_d.get();
    a.n_heads = c.heads, a.n_kv_heads = c.n_kv, a.head_dim = c.d;
    a.cache = cs.gpu->layer(0);
    a.workspace = ws.get(), a.workspace_bytes = ws.size(), a.split_tokens = split_tokens;
    a.retrieval_kv_heads = R;
    decode_attention(a, 0);
    const auto got = test::to_float(dout.download());
    std::vector<float> ref;
    reference(*cs.cpu, cs.plan, q, c.heads, c.n_kv, c.d, pos + 1, pos, 1, nullptr, nullptr, ref);
    Err e;
    for (size_t i = 0; i < ref.size(); ++i) e.add(i, got[i], ref[i]);
    std::printf("  decode %s %d/%d d %d kinds %d sink %d pos %d splits %d: max_abs %.3g rel %.3g\n", to_string(c.type),
                c.heads, c.n_kv, c.d, c.kinds, c.w.sink, pos, decode_splits(a), e.max_abs, e.rel());
    ASSERT_LE(e.max_abs, kDecodeMaxAbs) << "pos " << pos << ", worst at head " << e.worst / c.d << " dim " << e.worst % c.d
                                  << ": got " << got[e.worst] << " want " << ref[e.worst];
    ASSERT_LE(e.rel(), kMaxRel) << "pos " << pos;
  }
}

const AttnCase kLlamaQ4{32, 8, 128, KvType::Q4, 0, {64, 256}};
const AttnCase kLlamaQ8Mixed{32, 8, 128, KvType::Q8, 2, {4, 64}};
const AttnCase kSmolQ4Mixed{9, 3, 64, KvType::Q4, 2, {4, 50}};
const AttnCase kQwenQ8{12, 2, 128, KvType::Q8, 0, {0, 256}};
const AttnCase kGqa8Q4{16, 2, 128, KvType::Q4, 2, {100, 64}};

TEST(CudaDecodeQuant, RetrievalQ4HostSplits) { run_decode(kLlamaQ4, 1337, 3, 256, false, 11); }
TEST(CudaDecodeQuant, RetrievalQ4AutoSplits) { run_decode(kLlamaQ4, 1500, 2, 0, false, 12); }
TEST(CudaDecodeQuant, MixedQ8RingWrap) { run_decode(kLlamaQ8Mixed, 1337, 3, 320, false, 13); }
TEST(CudaDecodeQuant, SmolQ4Mixed) { run_decode(kSmolQ4Mixed, 700, 3, 128, false, 14); }
TEST(CudaDecodeQuant, QwenQ8NoSinkOneSplit) { run_decode(kQwenQ8, 300, 2, 4096, false, 15); }
TEST(CudaDecodeQuant, Gqa8Q4TwoSinkGroups) { run_decode(kGqa8Q4, 900, 2, 0, false, 16); }
// Every short context, the position on the device (graph form): sink rows only, then groups
// completing one after another, the residual growing from empty, splits of 64.
TEST(CudaDecodeQuant, DevicePosEveryShortContextQ4) { run_decode(kSmolQ4Mixed, 0, 200, 0, true, 17); }
TEST(CudaDecodeQuant, EveryShortContextQ8Split64) {
  run_decode({12, 2, 128, KvType::Q8, 0, {0, 64}}, 0, 150, 64, false, 18);
}
// Every GQA group size the tensor-core kernel's 8 head columns take (1, 2, 5, 7 beside 3, 4, 6, 8 above).
TEST(CudaDecodeQuant, MhaQ4D64Mixed) { run_decode({8, 8, 64, KvType::Q4, 2, {4, 64}}, 777, 2, 0, false, 31); }
TEST(CudaDecodeQuant, Group2Q8) { run_decode({16, 8, 128, KvType::Q8, 0, {64, 128}}, 1029, 2, 0, false, 32); }
TEST(CudaDecodeQuant, Group5Q4MixedSmallSink) { run_decode({10, 2, 128, KvType::Q4, 2, {16, 64}}, 1111, 2, 192, false, 33); }
TEST(CudaDecodeQuant, Group7Q8D64NoSink) { run_decode({14, 2, 64, KvType::Q8, 0, {0, 64}}, 903, 2, 0, false, 34); }
TEST(CudaDecodeQuant, DevicePosAcrossPageQ4) { run_decode(kLlamaQ4, 240, 30, 0, true, 19); }

// Pre-fill in chunks over the quantized cache, each chunk against the reference on both paths:
// the mma kernel (dequantized tiles for complete groups, bf16 rows for the sink, the residual
// and the chunk) and the default bf16 scratch (prefill_attention_quant).
void run_prefill(const AttnCase& c, const std::vector<int>& chunks, uint32_t seed) {
  int len = 0;
  for (int n : chunks) len += n;
  Caches cs(1, c.n_kv, c.heads, c.d, one_layer_plan(c), len + 1, seed);
  const size_t qrow = (size_t)c.heads * c.d, kvrow = (size_t)c.n_kv * c.d;
  const int R = cs.gpu->retrieval_heads(0);
  for (int n : chunks) {
    const int pos0 = (int)cs.gpu->n_past();
    const auto q = test::randn_bf16(cs.rng, n * qrow, 1.5f);
    auto kr = test::randn_bf16(cs.rng, n * kvrow), vr = test::randn_bf16(cs.rng, n * kvrow);
    Dev<bf16> dq(test::to_bf16(q)), dk(test::to_bf16(kr)), dv(test::to_bf16(vr)), dout(n * qrow);
    cs.gpu->reserve(pos0 + n);
    PrefillArgs a;
    a.q = dq.get(), a.k = dk.get(), a.v = dv.get(), a.out = dout.get();
    a.q_stride = a.o_stride = (int64_t)qrow, a.kv_stride = (int64_t)kvrow;
    a.n = n, a.pos0 = pos0, a.n_heads = c.heads, a.n_kv_heads = c.n_kv, a.head_dim = c.d;
    a.cache = cs.gpu->layer(0);
    if (a.cache.mode == HeadMode::Mixed) a.retrieval_kv_heads = R;
    EXPECT_EQ(prefill_kernel_for(a), PrefillKernel::Mma) << "the quantized view pre-fills on the mma kernel";
    std::vector<float> ref;
    reference(*cs.cpu, cs.plan, q, c.heads, c.n_kv, c.d, pos0, pos0, n, kr.data(), vr.data(), ref);
    // Both paths over the same cache: the mma kernel reading the quantized pages, and the
    // default one (the past dequantized into a bf16 scratch, then the bf16 kernels: wgmma for
    // head dim 128 on a Hopper GPU).
    const size_t sbytes = prefill_quant_scratch_bytes(a);
    Dev<uint8_t> scratch(sbytes);
    if (c.kinds != 1) {  // a layer with retrieval heads
      EXPECT_EQ(prefill_quant_path_for(a, PrefillQuantPath::Bf16Scratch, sbytes), PrefillQuantPath::Bf16Scratch);
    }
    std::vector<float> outs[2];
    for (PrefillQuantPath path : {PrefillQuantPath::Mma, PrefillQuantPath::Bf16Scratch}) {
      DUO_CUDA_TRY(cudaMemset(dout.get(), 0xff, n * qrow * sizeof(bf16)));  // NaN poison
      DUO_CUDA_TRY(cudaMemset(scratch.get(), 0xff, scratch.size()));
      prefill_attention_quant(a, path, scratch.get(), sbytes, 0);
      const auto got = test::to_float(dout.download());
      Err e;
      for (size_t i = 0; i < ref.size(); ++i) e.add(i, got[i], ref[i]);
      std::printf("  prefill[%s] %s %d/%d d %d kinds %d sink %d chunk [%d, %d): max_abs %.3g rel %.3g\n",
                  prefill_quant_path_name(path), to_string(c.type), c.heads, c.n_kv, c.d, c.kinds, c.w.sink, pos0,
                  pos0 + n, e.max_abs, e.rel());
      const size_t w = e.worst;
      EXPECT_LE(e.max_abs, kMaxAbs) << prefill_quant_path_name(path) << ", chunk at " << pos0 << ", worst at token "
                                    << w / qrow << " head " << w / c.d % c.heads << " dim " << w % c.d;
      EXPECT_LE(e.rel(), kMaxRel) << prefill_quant_path_name(path) << ", chunk at " << pos0;
      outs[path == PrefillQuantPath::Bf16Scratch] = got;
    }
    // Head dim 64 runs the mma kernel on both paths (unless DUO_PREFILL_KERNEL forces another), over
    // the same bf16 values of K and V in the same tile order: the same bits.
    if (c.d == 64 && std::getenv("DUO_PREFILL_KERNEL") == nullptr) {
      for (size_t i = 0; i < outs[0].size(); ++i) {
        ASSERT_EQ(std::memcmp(&outs[0][i], &outs[1][i], sizeof(float)), 0)
            << "mma vs bf16 scratch, chunk at " << pos0 << " element " << i << ": " << outs[0][i] << " vs "
            << outs[1][i];
      }
    }
    // Store the chunk in both caches (the rows just used).
    const LayerKv& view = cs.gpu->layer(0);
    kv_quantize(dk.get(), dv.get(), kvrow, n, pos0, c.n_kv, c.d, R, view, 0);
    kv_append(dk.get(), dv.get(), kvrow, n, pos0, c.n_kv, c.d, view, 0);
    DUO_CUDA_TRY(cudaDeviceSynchronize());
    for (int h = 0; h < c.n_kv; ++h) cs.cpu->head(0, h).append(kr.data() + h * c.d, vr.data() + h * c.d, n, kvrow, pos0);
    cs.gpu->advance(n);
    cs.cpu->advance(n);
  }
}

TEST(CudaPrefillQuant, RetrievalQ4Chunked) { run_prefill(kLlamaQ4, {250, 300, 150, 64}, 21); }
TEST(CudaPrefillQuant, MixedQ8OddChunks) { run_prefill(kLlamaQ8Mixed, {37, 300, 5, 200}, 22); }
TEST(CudaPrefillQuant, SmolQ4Mixed) { run_prefill(kSmolQ4Mixed, {130, 1, 300, 77}, 23); }
TEST(CudaPrefillQuant, Gqa8Q4TwoSinkGroupsNoSinkQwen) {
  run_prefill(kGqa8Q4, {200, 170, 129}, 24);
  run_prefill(kQwenQ8, {63, 65, 128, 300}, 25);
}

TEST(CudaPrefillQuant, ForcedWgmmaIsRejected) {
  Caches cs(1, 2, 2, 128, one_layer_plan({2, 2, 128, KvType::Q4, 0, {64, 256}}), 16, 1);
  PrefillArgs a;
  a.n = 1, a.n_heads = a.n_kv_heads = 2, a.head_dim = 128;
  a.cache = cs.gpu->layer(0);
  a.kernel = PrefillKernel::Wgmma;
  EXPECT_THROW(prefill_kernel_for(a), Error);
  a.kernel = PrefillKernel::Auto;
  EXPECT_EQ(prefill_kernel_for(a), PrefillKernel::Mma);
  // The default path takes the bf16 kernels instead (prefill_quant_test checks its choice).
  if (std::getenv("DUO_PREFILL_QUANT") == nullptr) {
    EXPECT_EQ(prefill_quant_path_for(a, PrefillQuantPath::Auto, prefill_quant_scratch_bytes(a)),
              PrefillQuantPath::Bf16Scratch);
  }
}

}  // namespace
}  // namespace duo::cuda
