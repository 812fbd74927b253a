// Batched decode (continuous batching) against the single-sequence kernels and the CPU:
//  - decode_attention_batch: several sequences, each with its own cache (bf16, q8 or q4 pages,
//    pages shuffled), plan (all retrieval, all streaming, mixed), sink / recent window and
//    length (1 .. 20000 keys), in one launch. Every item's output is compared with
//    decode_attention run on that item alone: equal within 2e-2 * max |alone| (the split
//    counts differ, so the fp32 partials merge in another order; the outputs are bf16), and
//    bitwise equal where both run the same splits (items that fix split_tokens, or have no
//    retrieval head). Both are compared with attention_ref over the CPU cache of the same type
//    fed the same rows: max |gpu - ref| <= 2e-2 and relative RMS <= 1e-2 (attention_test.cu's
//    and kv_quant_test.cpp's tolerance). Outputs and workspaces are poisoned with NaN first.
//  - qkv_bias_rope with row_pos: bitwise equal to one call a row at that row's position.
//  - kv_append_batch: leaves every cache bitwise equal to kv_append(n = 1) per item.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cuda/attention.cuh"
#include "backend/cuda/kernels.h"
#include "cuda_test_util.h"
#include "backend/cpu/kv_cache.h"
#include "kv/kv_quant.h"

namespace duo::cuda {
namespace {

using test::Dev;

constexpr double kMaxAbs = 2e-2, kMaxRel = 1e-2;  // vs the CPU reference
constexpr double kVsAlone = 2e-2;                 // batch vs alone, relative to max |alone|

struct Shape {
  int heads, n_kv, d;
};

// A sequence's plan and length. pattern: 0 all retrieval, 1 all streaming, 2 odd heads
// streaming, 3 head 0 streaming only. split_tokens: passed to both kernels (0: automatic).
struct SeqSpec {
  int len, pattern, sink, recent;
  int split_tokens = 0;
};

std::vector<uint8_t> kinds_for(int n_kv, int pattern) {
  std::vector<uint8_t> k(n_kv);
  for (int h = 0; h < n_kv; ++h) k[h] = pattern == 1 || (pattern == 2 && h % 2) || (pattern == 3 && h == 0);
  return k;
}

template <class T>
std::unique_ptr<Dev<T>> dev(size_t n) {
  return std::make_unique<Dev<T>>(n);
}

bool quantized(KvType t) { return t == KvType::Q8 || t == KvType::Q4; }

// One sequence: its K/V rows (bf16-rounded), a query, and its one-layer cache on the device built
// by the production kernels (kv_quantize + kv_append of the first `len` positions as one chunk),
// with room for `capacity` positions. Quantized caches keep retrieval heads in q8 / q4 pages.
struct Seq {
  Shape s;
  KvType type;
  SeqSpec spec;
  std::vector<uint8_t> kinds;
  int R = 0;  // retrieval heads
  std::vector<float> k, v, q;
  std::unique_ptr<Dev<int32_t>> table, slot;
  std::unique_ptr<Dev<uint8_t>> dkinds, kq, vq;
  std::unique_ptr<Dev<bf16>> kp, vp, kring, vring, ksink, vsink, kres, vres, dq;
  LayerKv view;

  Seq(Shape s_, KvType type_, SeqSpec spec_, uint32_t seed, int capacity = 0)
      : s(s_), type(type_), spec(spec_), kinds(kinds_for(s_.n_kv, spec_.pattern)) {
    const int n_kv = s.n_kv, d = s.d, len = spec.len;
    const bool quant = quantized(type);
    for (uint8_t kd : kinds) R += kd == 0;
    std::mt19937 rng(seed);
    k = test::randn_bf16(rng, (size_t)len * n_kv * d);
    v = test::randn_bf16(rng, (size_t)len * n_kv * d);
    for (size_t i = 0; i < k.size(); i += 7) k[i] = test::round_bf16(k[i] * 5.0f);  // outlier channels
    set_query(rng);
    const int max_pages = (std::max(len, capacity) + kPageTokens - 1) / kPageTokens;
    const int pool = (quant ? R : n_kv) * max_pages;
    std::vector<int32_t> perm(std::max(pool, 1)), tab((size_t)n_kv * max_pages, 0), slots(n_kv, 0);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int h = 0, next = 0, r = 0; h < n_kv; ++h) {
      if (kinds[h]) continue;
      slots[h] = r++;
      for (int p = 0; p < max_pages; ++p) tab[(size_t)h * max_pages + p] = perm[next++];
    }
    table = std::make_unique<Dev<int32_t>>(tab);
    slot = std::make_unique<Dev<int32_t>>(slots);
    dkinds = std::make_unique<Dev<uint8_t>>(kinds);
    const size_t ring = (size_t)n_kv * (spec.sink + spec.recent) * d;
    kring = dev<bf16>(ring), vring = dev<bf16>(ring);
    view.page_table = table->get(), view.max_pages = max_pages;
    view.k_ring = kring->get(), view.v_ring = vring->get(), view.kinds = dkinds->get();
    view.mode = R == n_kv ? HeadMode::AllRetrieval : R == 0 ? HeadMode::AllStreaming : HeadMode::Mixed;
    view.sink = spec.sink, view.recent = spec.recent;
    view.type = quant ? type : KvType::BF16;
    if (quant) {
      const kvq::QuantLayout L{d, quant_bits(type)};
      view.sink16 = kvq::sink16(spec.sink);
      kq = dev<uint8_t>((size_t)pool * L.page_bytes()), vq = dev<uint8_t>((size_t)pool * L.page_bytes());
      ksink = dev<bf16>((size_t)R * view.sink16 * d), vsink = dev<bf16>((size_t)R * view.sink16 * d);
      kres = dev<bf16>((size_t)R * kvq::kGroup * d), vres = dev<bf16>((size_t)R * kvq::kGroup * d);
      view.kq_pages = kq->get(), view.vq_pages = vq->get(), view.page_bytes = L.page_bytes();
      view.k_sink = ksink->get(), view.v_sink = vsink->get(), view.k_resid = kres->get(), view.v_resid = vres->get();
      view.slot_of = slot->get();
    } else {
      kp = dev<bf16>((size_t)pool * kPageTokens * d), vp = dev<bf16>((size_t)pool * kPageTokens * d);
      view.k_pages = kp->get(), view.v_pages = vp->get();
    }
    if (len > 0) {
      Dev<bf16> dk(test::to_bf16(k)), dv(test::to_bf16(v));
      const int64_t row = (int64_t)n_kv * d;
      kv_quantize(dk.get(), dv.get(), row, len, 0, n_kv, d, R, view, 0);  // (a no-op for bf16)
      kv_append(dk.get(), dv.get(), row, len, 0, n_kv, d, view, 0);
      DUO_CUDA_TRY(cudaDeviceSynchronize());
    }
  }

  void set_query(std::mt19937& rng) {
    q = test::randn_bf16(rng, (size_t)s.heads * s.d, 1.5f);
    if (!dq) dq = dev<bf16>(q.size());
    dq->upload(test::to_bf16(q));
  }

  DecodeArgs args(bf16* out, const bf16* query = nullptr) const {
    DecodeArgs a;
    a.q = query ? query : dq->get(), a.out = out, a.n_past = spec.len;
    a.n_heads = s.heads, a.n_kv_heads = s.n_kv, a.head_dim = s.d;
    a.cache = view;
    a.split_tokens = spec.split_tokens;
    a.retrieval_kv_heads = R;
    return a;
  }

  // attention_ref over the CPU cache of the same type holding the same rows, for query `query`
  // (default: q) at position len - 1.
  std::vector<float> reference(const std::vector<float>* query = nullptr) const {
    const int n_kv = s.n_kv, d = s.d, len = spec.len;
    HeadPlan plan = HeadPlan::uniform(1, n_kv, HeadKind::Retrieval, StreamingWindow{spec.sink, spec.recent});
    for (int h = 0; h < n_kv; ++h)
      if (kinds[h]) plan.kinds[0][h] = HeadKind::Streaming;
    plan.kv_type = quantized(type) ? type : KvType::BF16;
    KvCache cpu(1, n_kv, d, plan);
    for (int h = 0; h < n_kv; ++h) cpu.head(0, h).append(k.data() + h * d, v.data() + h * d, len, (int64_t)n_kv * d, 0);
    cpu.advance(len);
    std::vector<std::vector<KvSegment>> segs(n_kv);
    for (int h = 0; h < n_kv; ++h) cpu.head(0, h).segments(len, segs[h]);
    std::vector<float> out((size_t)s.heads * d, 0.0f);
    AttentionArgs a;
    a.q = query ? query->data() : q.data(), a.out = out.data(), a.n = 1, a.pos0 = len - 1;
    a.n_heads = s.heads, a.n_kv_heads = n_kv, a.head_dim = d;
    a.segments = &segs, a.kinds = &plan.kinds[0], a.window = plan.window;
    attention_ref(a);
    return out;
  }
};

std::vector<std::unique_ptr<Seq>> make_seqs(const Shape& s, KvType type, const std::vector<SeqSpec>& specs,
                                            uint32_t seed) {
  std::vector<std::unique_ptr<Seq>> seqs;
  for (size_t i = 0; i < specs.size(); ++i) seqs.push_back(std::make_unique<Seq>(s, type, specs[i], seed + 101 * i));
  return seqs;
}

// Device buffers of a batched launch, sized by the size functions for these items.
struct BatchBuffers {
  std::unique_ptr<Dev<uint8_t>> ws, params;
  DecodeBatch b;
  explicit BatchBuffers(const std::vector<DecodeArgs>& items) {
    const size_t wsb = decode_batch_workspace_bytes(items.data(), (int)items.size());
    const size_t pb = decode_batch_params_bytes((int)items.size());
    ws = dev<uint8_t>(wsb), params = dev<uint8_t>(pb);
    DUO_CUDA_TRY(cudaMemset(ws->get(), 0xff, ws->size()));  // NaN poison: partials must be written before read
    b.items = items.data(), b.n = (int)items.size();
    b.workspace = wsb ? ws->get() : nullptr, b.workspace_bytes = wsb;
    b.params = params->get(), b.params_bytes = pb;
  }
};

// decode_attention of one item alone (own NaN-poisoned workspace for up to 2048 splits).
std::vector<float> run_alone(const DecodeArgs& item) {
  const size_t qrow = (size_t)item.n_heads * item.head_dim;
  Dev<bf16> out(qrow);
  Dev<uint8_t> ws(decode_workspace_bytes(item.n_heads, item.head_dim, 2048));
  DUO_CUDA_TRY(cudaMemset(out.get(), 0xff, qrow * sizeof(bf16)));
  DUO_CUDA_TRY(cudaMemset(ws.get(), 0xff, ws.size()));
  DecodeArgs a = item;
  a.out = out.get(), a.workspace = ws.get(), a.workspace_bytes = ws.size();
  decode_attention(a, 0);
  return test::to_float(out.download());
}

// Checks one item's batched output against its output alone and the CPU reference.
void check_item(const char* what, int i, const Seq& seq, const std::vector<float>& got, const std::vector<float>& alone,
                const std::vector<float>& ref, bool bitwise) {
  float amax = 0.0f;
  for (float x : alone) amax = std::max(amax, std::fabs(x));
  const auto vs_alone = test::error_stats(got.data(), alone.data(), got.size());
  const auto vs_ref = test::error_stats(got.data(), ref.data(), got.size());
  const auto alone_ref = test::error_stats(alone.data(), ref.data(), got.size());
  std::printf("  %s item %d: len %d kinds %d sink %d recent %d R %d: vs alone max %.3g (max|out| %.3g)%s, "
              "vs ref max %.3g rel %.3g (alone: %.3g, %.3g)\n",
              what, i, seq.spec.len, seq.spec.pattern, seq.spec.sink, seq.spec.recent, seq.R, vs_alone.max_abs, amax,
              bitwise ? " bitwise" : "", vs_ref.max_abs, vs_ref.rel_rms, alone_ref.max_abs, alone_ref.rel_rms);
  const size_t w = vs_alone.argmax;
  if (bitwise) {
    EXPECT_EQ(vs_alone.max_abs, 0.0) << what << " item " << i << ": same splits, same kernel: must be bitwise equal; "
                                     << "head " << w / seq.s.d << " dim " << w % seq.s.d << " got " << got[w]
                                     << " alone " << alone[w];
  } else {
    EXPECT_LE(vs_alone.max_abs, kVsAlone * amax) << what << " item " << i << ": head " << w / seq.s.d << " dim "
                                                 << w % seq.s.d << " got " << got[w] << " alone " << alone[w];
  }
  EXPECT_LE(vs_ref.max_abs, kMaxAbs) << what << " item " << i << " vs reference";
  EXPECT_LE(vs_ref.rel_rms, kMaxRel) << what << " item " << i << " vs reference";
  EXPECT_LE(alone_ref.max_abs, kMaxAbs) << what << " item " << i << " alone vs reference";
}

// Whether the batch must reproduce item i's output alone bit for bit: the same kernel with the
// same splits (fixed split_tokens, or no retrieval head and no quantized kernel in the batch).
bool same_splits(const std::vector<std::unique_ptr<Seq>>& seqs, size_t i) {
  bool quant_kernel = false;
  for (const auto& s : seqs) quant_kernel |= quantized(s->type) && s->R > 0;
  const Seq& s = *seqs[i];
  return (s.spec.split_tokens > 0 && s.R > 0) || (s.R == 0 && !quant_kernel);
}

void run_batch(const Shape& shape, KvType type, const std::vector<SeqSpec>& specs, uint32_t seed) {
  const auto seqs = make_seqs(shape, type, specs, seed);
  const size_t qrow = (size_t)shape.heads * shape.d;
  std::vector<std::unique_ptr<Dev<bf16>>> outs;
  std::vector<DecodeArgs> items;
  for (const auto& s : seqs) {
    outs.push_back(dev<bf16>(qrow));
    DUO_CUDA_TRY(cudaMemset(outs.back()->get(), 0xff, qrow * sizeof(bf16)));
    items.push_back(s->args(outs.back()->get()));
  }
  BatchBuffers bb(items);
  decode_attention_batch(bb.b, 0);
  DUO_CUDA_TRY(cudaDeviceSynchronize());
  const std::string what = std::string(to_string(type)) + " " + std::to_string(shape.heads) + "/" +
                           std::to_string(shape.n_kv) + " d" + std::to_string(shape.d);
  std::printf("  %s: %zu items, workspace %zu bytes\n", what.c_str(), items.size(), bb.b.workspace_bytes);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto got = test::to_float(outs[i]->download());
    check_item(what.c_str(), (int)i, *seqs[i], got, run_alone(items[i]), seqs[i]->reference(), same_splits(seqs, i));
  }
}

const Shape kMha2D64{2, 2, 64}, kGqa2D128{8, 4, 128}, kGqa4D128{12, 3, 128}, kGqa8D64{16, 2, 64};
const Shape kMha4D128{4, 4, 128}, kGqa2D64{8, 4, 64};

TEST(CudaDecodeBatch, Bf16Gqa4D128MixedPlans) {
  run_batch(kGqa4D128, KvType::BF16,
            {{1, 0, 64, 256}, {300, 2, 4, 64}, {4097, 1, 16, 100}, {20000, 0, 64, 256}, {777, 3, 0, 33}}, 1);
}
TEST(CudaDecodeBatch, Bf16Mha2D64) {
  run_batch(kMha2D64, KvType::BF16, {{20000, 2, 64, 256}, {1, 1, 4, 16}, {300, 0, 64, 256}, {4097, 3, 8, 1000}}, 2);
}
TEST(CudaDecodeBatch, Bf16Gqa2D128) {
  run_batch(kGqa2D128, KvType::BF16, {{4097, 2, 64, 256}, {300, 0, 64, 256}, {1, 2, 4, 8}, {65, 1, 64, 256}}, 3);
}
TEST(CudaDecodeBatch, Bf16Gqa8D64PageEdges) {
  run_batch(kGqa8D64, KvType::BF16,
            {{20000, 3, 4, 64}, {4097, 0, 64, 256}, {300, 1, 4, 50}, {1, 0, 64, 256}, {256, 0, 0, 1}, {257, 2, 16, 32}},
            4);
}
TEST(CudaDecodeBatch, Q8Gqa4D128MixedPlans) {
  run_batch(kGqa4D128, KvType::Q8,
            {{1, 0, 64, 256}, {300, 2, 4, 64}, {4097, 1, 16, 100}, {20000, 0, 64, 256}, {130, 3, 100, 64}}, 5);
}
TEST(CudaDecodeBatch, Q4Gqa8D64MixedPlans) {
  run_batch(kGqa8D64, KvType::Q4,
            {{20000, 2, 64, 256}, {64, 0, 0, 1}, {4097, 0, 64, 256}, {1, 1, 4, 16}, {300, 3, 0, 40}}, 6);
}
TEST(CudaDecodeBatch, Q4Mha4D128) {
  run_batch(kMha4D128, KvType::Q4, {{4097, 0, 64, 256}, {300, 2, 100, 64}, {1, 0, 64, 256}, {20000, 3, 4, 64}}, 7);
}
TEST(CudaDecodeBatch, Q8Gqa2D64) {
  run_batch(kGqa2D64, KvType::Q8, {{20000, 0, 64, 256}, {300, 3, 64, 256}, {4097, 2, 0, 128}, {2, 0, 64, 256}}, 8);
}
// Items that fix their split size run the same splits as alone: bit-identical outputs (the
// shared kernel body reads its parameters from the batch array instead of its arguments).
TEST(CudaDecodeBatch, FixedSplitsBitwiseBf16) {
  run_batch(kGqa4D128, KvType::BF16,
            {{1337, 0, 64, 256, 256}, {20000, 2, 4, 64, 4096}, {300, 0, 64, 256, 64}, {5000, 3, 8, 128, 0}}, 9);
}
TEST(CudaDecodeBatch, FixedSplitsBitwiseQ4) {
  run_batch(kGqa8D64, KvType::Q4, {{1337, 0, 64, 256, 320}, {20000, 2, 4, 64, 4096}, {300, 0, 64, 256, 64}}, 10);
}
// Every GQA group 1-8 at both head dims, bf16 pages and rings (the tensor-core bf16 kernel).
TEST(CudaDecodeBatch, Bf16EveryGroup) {
  for (int d : {64, 128})
    for (int g = 1; g <= 8; ++g)
      run_batch(Shape{2 * g, 2, d}, KvType::BF16, {{1337, 2, 4, 64}, {300, 0, 64, 256}, {1, 2, 4, 8}, {70, 1, 4, 16}},
                20 + g);
}
// No retrieval heads anywhere: one CTA a streaming head, no merge, no workspace.
TEST(CudaDecodeBatch, AllStreaming) {
  run_batch(kGqa2D128, KvType::BF16, {{20000, 1, 64, 256}, {1, 1, 4, 16}, {300, 1, 0, 100}}, 11);
  run_batch(kGqa2D128, KvType::Q4, {{4097, 1, 64, 256}, {70, 1, 4, 16}}, 12);  // rings only: the bf16 kernel
}
// Many short items of random lengths and plans, and one long one: many grid rows, most items
// with one split, the long one with most of the wave.
TEST(CudaDecodeBatch, ManyItems) {
  std::mt19937 rng(13);
  std::vector<SeqSpec> specs;
  for (int i = 0; i < 47; ++i)
    specs.push_back({1 + (int)(rng() % 700), (int)(rng() % 4), (int)(rng() % 3) * 8, 16 + (int)(rng() % 200)});
  specs.push_back({30000, 0, 64, 256});
  run_batch(kGqa4D128, KvType::BF16, specs, 14);
}

// 70 launches back to back, no synchronisation between them, each with its own queries and
// outputs: the host-side parameter staging must not be overwritten while a copy waits.
TEST(CudaDecodeBatch, BackToBackLaunchesKeepTheirParameters) {
  const Shape shape = kGqa2D128;
  const auto seqs = make_seqs(shape, KvType::BF16, {{5000, 0, 64, 256}, {200, 2, 4, 64}, {1, 0, 64, 256}}, 15);
  const int calls = 70, n = (int)seqs.size();
  const size_t qrow = (size_t)shape.heads * shape.d;
  std::mt19937 rng(16);
  std::vector<std::vector<float>> qs(calls * n);
  std::vector<bf16> qall;
  for (auto& q : qs) {
    q = test::randn_bf16(rng, qrow, 1.5f);
    const auto b = test::to_bf16(q);
    qall.insert(qall.end(), b.begin(), b.end());
  }
  Dev<bf16> dq(qall), dout((size_t)calls * n * qrow);
  DUO_CUDA_TRY(cudaMemset(dout.get(), 0xff, dout.size() * sizeof(bf16)));
  std::vector<std::vector<DecodeArgs>> items(calls);
  std::vector<std::unique_ptr<BatchBuffers>> bufs;
  for (int c = 0; c < calls; ++c) {
    for (int i = 0; i < n; ++i)
      items[c].push_back(seqs[i]->args(dout.get() + ((size_t)c * n + i) * qrow, dq.get() + ((size_t)c * n + i) * qrow));
    bufs.push_back(std::make_unique<BatchBuffers>(items[c]));
  }
  DUO_CUDA_TRY(cudaDeviceSynchronize());
  for (int c = 0; c < calls; ++c) decode_attention_batch(bufs[c]->b, 0);
  const auto got = test::to_float(dout.download());
  for (int c = 0; c < calls; c += 23)  // a few against everything; the rest against alone only
    for (int i = 0; i < n; ++i) {
      std::vector<float> g(got.begin() + ((size_t)c * n + i) * qrow, got.begin() + ((size_t)c * n + i + 1) * qrow);
      check_item("back-to-back", c * n + i, *seqs[i], g, run_alone(items[c][i]), seqs[i]->reference(&qs[c * n + i]),
                 false);
    }
  for (int c = 0; c < calls; ++c)
    for (int i = 0; i < n; ++i) {
      const auto alone = run_alone(items[c][i]);
      float amax = 0.0f;
      for (float x : alone) amax = std::max(amax, std::fabs(x));
      const auto e = test::error_stats(got.data() + ((size_t)c * n + i) * qrow, alone.data(), qrow);
      EXPECT_LE(e.max_abs, kVsAlone * amax) << "call " << c << " item " << i;
    }
}

TEST(CudaDecodeBatch, RejectsWhatItCannotRun) {
  const auto seqs = make_seqs(kGqa2D128, KvType::BF16, {{3000, 0, 64, 256}, {10, 2, 4, 64}}, 17);
  Dev<bf16> out(2 * 8 * 128);
  std::vector<DecodeArgs> items = {seqs[0]->args(out.get()), seqs[1]->args(out.get() + 8 * 128)};
  BatchBuffers bb(items);
  DecodeBatch b = bb.b;
  b.n = 0;
  EXPECT_NO_THROW(decode_attention_batch(b, 0));  // nothing to do
  b = bb.b;
  b.params_bytes -= 1;
  EXPECT_THROW(decode_attention_batch(b, 0), std::runtime_error);
  b = bb.b;
  ASSERT_GT(b.workspace_bytes, 0u) << "a 3000-key item should get splits";
  b.workspace_bytes -= 1;
  EXPECT_THROW(decode_attention_batch(b, 0), std::runtime_error);
  const auto rejects = [&](auto&& spoil, const char* what) {
    std::vector<DecodeArgs> bad = items;
    spoil(bad);
    DecodeBatch bb2 = bb.b;
    bb2.items = bad.data();
    EXPECT_THROW(decode_attention_batch(bb2, 0), std::runtime_error) << what;
  };
  rejects([](std::vector<DecodeArgs>& x) { x[1].head_dim = 64; }, "head dims differ");
  rejects([](std::vector<DecodeArgs>& x) { x[1].n_heads = 4; }, "group sizes differ");
  rejects([](std::vector<DecodeArgs>& x) { x[1].cache.type = KvType::Q8; }, "KV types differ");
  rejects([](std::vector<DecodeArgs>& x) { x[0].n_past = 0; }, "no host n_past");
  rejects([](std::vector<DecodeArgs>& x) { x[1].retrieval_kv_heads = 0; }, "Mixed heads without their count");
  DUO_CUDA_TRY(cudaDeviceSynchronize());
}

// ---------------------------------------------------------------------------------------------
// qkv_bias_rope with per-row positions vs one call a row.

void run_rope(int d, bool neox) {
  const int H = 8, HKV = 2, n = 6;
  const std::vector<int32_t> pos = {0, 1, 300, 4096, 20000, 7};
  const int64_t width = (int64_t)(H + 2 * HKV) * d, ld = width + 4;
  std::mt19937 rng(21 + d + neox);
  std::vector<float> inv(d / 2);
  for (int i = 0; i < d / 2; ++i) inv[i] = (float)std::pow(10000.0, -2.0 * i / d);
  Dev<float> qkv(test::randn(rng, (size_t)n * ld)), bias(test::randn(rng, (size_t)width, 0.3f)), dinv(inv);
  Dev<int32_t> dpos(pos), dpos0(std::vector<int32_t>{12345});
  const size_t qn = (size_t)n * H * d, kn = (size_t)n * HKV * d;
  Dev<bf16> q1(qn), k1(kn), v1(kn), q2(qn), k2(kn), v2(kn);
  for (const Dev<bf16>* x : {&q1, &k1, &v1, &q2, &k2, &v2})
    DUO_CUDA_TRY(cudaMemset(x->get(), 0xff, x->size() * sizeof(bf16)));  // NaN: unwritten elements differ
  QkvRopeArgs a;
  a.qkv = qkv.get(), a.ld = ld, a.bias = bias.get(), a.inv_freq = dinv.get();
  a.n_heads = H, a.n_kv_heads = HKV, a.head_dim = d, a.neox = neox;
  QkvRopeArgs batched = a;
  batched.n = n, batched.pos0 = -999, batched.pos_d = dpos0.get();  // both unused with row_pos
  batched.row_pos = dpos.get();
  batched.q = q1.get(), batched.k = k1.get(), batched.v = v1.get();
  qkv_bias_rope(batched, 0);
  for (int t = 0; t < n; ++t) {
    QkvRopeArgs one = a;
    one.qkv = qkv.get() + t * ld, one.n = 1, one.pos0 = pos[t];
    one.q = q2.get() + (size_t)t * H * d;
    one.k = k2.get() + (size_t)t * HKV * d, one.v = v2.get() + (size_t)t * HKV * d;
    qkv_bias_rope(one, 0);
  }
  const auto f = [](const Dev<bf16>& x) { return test::to_float(x.download()); };
  const auto eq = [&](const Dev<bf16>& x, const Dev<bf16>& y, const char* what) {
    const auto gx = f(x), gy = f(y);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < gx.size(); ++i)
      if (!(gx[i] == gy[i]) && bad++ == 0) first = i;  // NaN (unwritten) counts as different
    EXPECT_EQ(bad, 0u) << what << " d " << d << (neox ? " neox" : "") << ": first at " << first << ": " << gx[first]
                       << " vs " << gy[first];
  };
  DUO_CUDA_TRY(cudaDeviceSynchronize());
  eq(q1, q2, "q"), eq(k1, k2, "k"), eq(v1, v2, "v");
  batched.to_cache = true;
  EXPECT_THROW(qkv_bias_rope(batched, 0), std::runtime_error);
}

TEST(CudaBatchRope, RowPositionsMatchOneCallARow) {
  for (int d : {64, 128})
    for (bool neox : {false, true}) run_rope(d, neox);
}

// ---------------------------------------------------------------------------------------------
// kv_append_batch vs kv_append(n = 1) per item: the same caches built twice from the same seeds,
// one token appended to each, every buffer compared bit for bit.

// Every device buffer of a sequence's cache, by name, as bytes.
std::vector<std::pair<const char*, std::vector<uint8_t>>> snapshot(const Seq& q) {
  std::vector<std::pair<const char*, std::vector<uint8_t>>> out;
  const auto add = [&](const char* name, const auto& buf) {
    if (!buf) return;
    const auto h = buf->download();
    std::vector<uint8_t> bytes(h.size() * sizeof(h[0]));
    if (!bytes.empty()) std::memcpy(bytes.data(), h.data(), bytes.size());
    out.emplace_back(name, std::move(bytes));
  };
  add("K pages", q.kp), add("V pages", q.vp), add("K ring", q.kring), add("V ring", q.vring);
  add("K codes", q.kq), add("V codes", q.vq), add("K sink", q.ksink), add("V sink", q.vsink);
  add("K residual", q.kres), add("V residual", q.vres);
  return out;
}

void run_append(const Shape& s, KvType type, const std::vector<SeqSpec>& specs, uint32_t seed) {
  const int n = (int)specs.size(), d = s.d;
  std::vector<std::unique_ptr<Seq>> a, b;  // the token's position is spec.len (the cache holds len)
  for (int i = 0; i < n; ++i) {
    a.push_back(std::make_unique<Seq>(s, type, specs[i], seed + 7 * i, specs[i].len + 1));
    b.push_back(std::make_unique<Seq>(s, type, specs[i], seed + 7 * i, specs[i].len + 1));
  }
  const int64_t stride = (int64_t)s.n_kv * d + 24;  // rows wider than the K/V heads
  std::mt19937 rng(seed);
  Dev<bf16> k(test::to_bf16(test::randn_bf16(rng, (size_t)n * stride)));
  Dev<bf16> v(test::to_bf16(test::randn_bf16(rng, (size_t)n * stride)));
  std::vector<int32_t> rows(n), pos(n);
  std::vector<LayerKv> views(n);
  for (int i = 0; i < n; ++i) rows[i] = n - 1 - i, pos[i] = specs[i].len, views[i] = b[i]->view;
  for (int i = 0; i < n; ++i)
    kv_append(k.get() + rows[i] * stride, v.get() + rows[i] * stride, stride, 1, pos[i], s.n_kv, d, a[i]->view, 0);
  Dev<int32_t> drows(rows), dpos(pos);
  Dev<LayerKv> dviews(views);
  kv_append_batch(k.get(), v.get(), stride, drows.get(), dviews.get(), dpos.get(), n, s.n_kv, d, 0);
  DUO_CUDA_TRY(cudaDeviceSynchronize());
  for (int i = 0; i < n; ++i) {
    const auto sa = snapshot(*a[i]), sb = snapshot(*b[i]);
    const auto untouched = snapshot(Seq(s, type, specs[i], seed + 7 * i, specs[i].len + 1));
    ASSERT_EQ(sa.size(), sb.size());
    bool changed = false;
    for (size_t j = 0; j < sa.size(); ++j) {
      const auto& x = sa[j].second;
      const auto& y = sb[j].second;
      ASSERT_EQ(x.size(), y.size());
      size_t bad = 0, first = 0;
      for (size_t e = 0; e < x.size(); ++e)
        if (x[e] != y[e] && bad++ == 0) first = e;
      EXPECT_EQ(bad, 0u) << "item " << i << " (position " << pos[i] << ") " << sa[j].first << ": " << bad
                         << " bytes differ, first at byte " << first;
      changed |= x != untouched[j].second;
    }
    EXPECT_TRUE(changed) << "item " << i << ": kv_append stored nothing (the test would prove nothing)";
  }
}

TEST(CudaBatchAppend, Bf16MatchesPerItemAppend) {
  // Positions: 0 (empty cache), a page's first row, a ring wrap, inside the sink, mixed heads.
  run_append({12, 3, 128}, KvType::BF16,
             {{0, 0, 64, 256}, {256, 0, 64, 256}, {300, 1, 4, 32}, {2, 1, 8, 16}, {1000, 2, 4, 64}, {511, 3, 0, 7}},
             31);
  run_append({16, 2, 64}, KvType::BF16, {{20000, 2, 64, 256}, {5, 0, 64, 256}}, 32);
}
TEST(CudaBatchAppend, Q4StoresWhatKvAppendStores) {
  // Sink rows, the residual (a group's first and last row), streaming rings; kv_quantize's part
  // (completing a group) is per item and not exercised here.
  run_append({8, 4, 128}, KvType::Q4, {{3, 0, 64, 256}, {64, 0, 64, 256}, {127, 2, 4, 32}, {700, 3, 0, 100}}, 33);
}

}  // namespace
}  // namespace duo::cuda
