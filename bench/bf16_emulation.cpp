// CPU emulation of the CUDA forward's rounding, to size the tolerances of tests/cuda/forward_test
// without a GPU: the CPU forward with bf16-rounded weights, bf16 GEMM inputs, bf16 Q/K/V and
// attention output and an fp32 residual stream (what src/backend/cuda/gpu_model.cpp does; the
// GPU additionally rounds attention probabilities to bf16 and sums in other orders), compared
// with the plain CPU forward.
//   duo_bf16_emulation MODEL.gguf FIXTURE.json [steps]   real model: fixture prompts, then
//                                                         teacher-forced decode steps
//   duo_bf16_emulation tiny                               the random models of forward_test
//   duo_bf16_emulation hf DIR FIXTURE.json [KEY]          a tiny HF directory (tests/fixtures/hf), or a
//                                                         GGUF, against its transformers logits (the
//                                                         fixture's KEY, default "logits": gemma3's
//                                                         GGUF twin has "gguf_logits"), every position
// gemma3 (what gpu_model.cpp adds for it): embeddings times embd_scale in fp32, the local layers'
// RoPE table and window (the CPU cache's fixed-window heads), queries times the query scale after
// RoPE (then rounded), sandwich norms on the fp32 block outputs before each residual add, GeGLU
// rounded once to bf16, soft-capped logits.
// Environment: DUO_EMU_KV=bf16|q8|q4 gives both caches that --kv-type (the GPU quantizes its own
// bf16 K/V, the CPU its f32 K/V rounded to bf16: codes near a grid boundary can differ), and
// DUO_EMU_WEIGHTS=int8 emulates --gpu-weights int8 (per-row int8 weights, dequantized to bf16).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/cpu/attention.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/dequant.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "backend/cpu/kv_cache.h"
#include "duo/kv_type.h"
#include "backend/cpu/cpu_forward.h"
#include "model/model.h"
#include "duo/sampler.h"

using namespace duo;

static float rb(float x) { return bf16_to_f32(f32_to_bf16(x)); }
static void rbv(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = rb(x[i]);
}

struct W {
  std::vector<float> d;
  MatmulWeight v;
};
static bool emu_int8() {
  const char* e = std::getenv("DUO_EMU_WEIGHTS");
  return e && std::string(e) == "int8";
}
static KvType emu_kv() {
  const char* e = std::getenv("DUO_EMU_KV");
  return e ? parse_kv_type(e) : KvType::Default;
}
// int8 weight-only quantization of a row: scale = max|w| / 127, q = round(w / scale).
static void int8_row(float* x, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
  for (int64_t i = 0; i < n; ++i) x[i] = scale * std::nearbyint(x[i] / scale);
}
static W conv(const WeightView& w, bool int8 = emu_int8()) {
  W o;
  o.d.resize(w.rows * w.cols);
  for (int64_t r = 0; r < w.rows; ++r) dequantize_row(w.type, w.data + r * w.row_stride, &o.d[r * w.cols], w.cols);
  if (int8)
    for (int64_t r = 0; r < w.rows; ++r) int8_row(&o.d[r * w.cols], w.cols);
  rbv(o.d.data(), o.d.size());
  o.v.type = GgmlType::F32;
  o.v.data = (const uint8_t*)o.d.data();
  o.v.rows = w.rows;
  o.v.cols = w.cols;
  o.v.row_stride = 4 * w.cols;
  return o;
}

struct Emu {
  Model& m;
  ThreadPool& pool;
  std::vector<W> wq, wk, wv, wo, wg, wu, wd;
  W emb, out;
  std::vector<float> invf, invf_local;
  Emu(Model& m_, ThreadPool& p) : m(m_), pool(p) {
    const auto& w = m.weights();
    emb = conv(w.tok_embd, false);  // the embedding table stays bf16 (only rows are read)
    out = m.config().tied_embeddings ? emb : conv(w.output);
    if (m.config().tied_embeddings) {
      out.v.data = (const uint8_t*)emb.d.data();
    }
    for (auto& L : w.layers) {
      wq.push_back(conv(L.wq));
      wk.push_back(conv(L.wk));
      wv.push_back(conv(L.wv));
      wo.push_back(conv(L.wo));
      wg.push_back(conv(L.w_gate));
      wu.push_back(conv(L.w_up));
      wd.push_back(conv(L.w_down));
    }
    invf = m.rope_inv_freq();
    invf_local = m.rope_inv_freq_local();
  }
  void forward(KvCache& cache, const int32_t* toks, int64_t n, float* logits) {
    const auto& c = m.config();
    const auto& w = m.weights();
    const int64_t E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads, Q = H * D, KV = HKV * D, F = c.n_ff;
    const int64_t pos0 = cache.n_past();
    std::vector<float> x(n * E), xn(n * E), q(n * Q), k(n * KV), v(n * KV), att(n * Q), o(n * std::max(E, F)), g(n * F),
        u(n * F);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < E; ++i) x[t * E + i] = emb.d[toks[t] * E + i] * c.embd_scale;
    std::vector<std::vector<KvSegment>> segs(HKV);
    std::vector<HeadKind> kinds(HKV);
    const float q_mul = c.query_scale > 0 ? (float)std::sqrt((double)D / c.query_scale) : 1.0f;
    for (int l = 0; l < c.n_layers; ++l) {
      const auto& L = w.layers[l];
      const bool local = c.is_local(l);
      const float* fr = local ? invf_local.data() : invf.data();
      for (int64_t t = 0; t < n; ++t) rmsnorm(&x[t * E], L.attn_norm.data(), &xn[t * E], E, c.norm_eps);
      rbv(xn.data(), n * E);
      matmul(wq[l].v, xn.data(), n, q.data(), pool);
      matmul(wk[l].v, xn.data(), n, k.data(), pool);
      matmul(wv[l].v, xn.data(), n, v.data(), pool);
      for (int64_t t = 0; t < n; ++t) {
        if (!L.bq.empty()) {
          add_inplace(&q[t * Q], L.bq.data(), Q);
          add_inplace(&k[t * KV], L.bk.data(), KV);
          add_inplace(&v[t * KV], L.bv.data(), KV);
        }
        if (!L.q_norm.empty()) {  // qwen3: per-head RMS norm in fp32 before RoPE (the GPU's rope kernel)
          for (int64_t h = 0; h < H; ++h) rmsnorm(&q[t * Q + h * D], L.q_norm.data(), &q[t * Q + h * D], D, c.norm_eps);
          for (int64_t h = 0; h < HKV; ++h)
            rmsnorm(&k[t * KV + h * D], L.k_norm.data(), &k[t * KV + h * D], D, c.norm_eps);
        }
        for (int64_t h = 0; h < H; ++h) rope(&q[t * Q + h * D], D, pos0 + t, fr, c.rope_style);
        for (int64_t h = 0; h < HKV; ++h) rope(&k[t * KV + h * D], D, pos0 + t, fr, c.rope_style);
        for (int64_t i = 0; i < Q; ++i) q[t * Q + i] *= q_mul;
      }
      rbv(q.data(), n * Q);
      rbv(k.data(), n * KV);
      rbv(v.data(), n * KV);
      for (int64_t h = 0; h < HKV; ++h) {
        auto& hc = cache.head(l, h);
        segs[h].clear();
        hc.segments(pos0, segs[h]);
        segs[h].push_back({&k[h * D], &v[h * D], pos0, n, KV});
        kinds[h] = hc.kind();
      }
      AttentionArgs a;
      a.q = q.data();
      a.out = att.data();
      a.n = n;
      a.pos0 = pos0;
      a.n_heads = H;
      a.n_kv_heads = HKV;
      a.head_dim = D;
      a.segments = &segs;
      a.kinds = &kinds;
      a.window = local ? StreamingWindow{0, c.local_window} : cache.plan().window;
      attention(a, pool);
      rbv(att.data(), n * Q);
      for (int64_t h = 0; h < HKV; ++h) cache.head(l, h).append(&k[h * D], &v[h * D], n, KV, pos0);
      matmul(wo[l].v, att.data(), n, o.data(), pool);
      for (int64_t t = 0; t < n; ++t) {
        if (!L.post_attn_norm.empty()) rmsnorm(&o[t * E], L.post_attn_norm.data(), &o[t * E], E, c.norm_eps);
        add_inplace(&x[t * E], &o[t * E], E);
        rmsnorm(&x[t * E], L.ffn_norm.data(), &xn[t * E], E, c.norm_eps);
      }
      rbv(xn.data(), n * E);
      matmul(wg[l].v, xn.data(), n, g.data(), pool);
      matmul(wu[l].v, xn.data(), n, u.data(), pool);
      for (int64_t t = 0; t < n; ++t) {
        if (c.gelu_mlp)
          geglu(&g[t * F], &u[t * F], &g[t * F], F);
        else
          swiglu(&g[t * F], &u[t * F], &g[t * F], F);
      }
      rbv(g.data(), n * F);
      matmul(wd[l].v, g.data(), n, o.data(), pool);
      for (int64_t t = 0; t < n; ++t) {
        if (!L.post_ffn_norm.empty()) rmsnorm(&o[t * E], L.post_ffn_norm.data(), &o[t * E], E, c.norm_eps);
        add_inplace(&x[t * E], &o[t * E], E);
      }
    }
    cache.advance(n);
    rmsnorm(&x[(n - 1) * E], w.output_norm.data(), xn.data(), E, c.norm_eps);
    rbv(xn.data(), E);
    matmul(out.v, xn.data(), 1, logits, pool);
    if (c.final_softcap > 0)
      for (int64_t i = 0; i < c.n_vocab; ++i) logits[i] = c.final_softcap * std::tanh(logits[i] / c.final_softcap);
  }
};

static double gap(const float* r, int V) {
  float a = -1e30f, b = -1e30f;
  for (int i = 0; i < V; ++i) {
    if (r[i] > a)
      b = a, a = r[i];
    else if (r[i] > b)
      b = r[i];
  }
  return a - b;
}

ModelConfig tiny(bool q) {
  ModelConfig c;
  c.arch = q ? "qwen2" : "llama";
  c.n_layers = 3;
  c.n_embd = 256;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.n_ff = 512;
  c.n_vocab = 512;
  c.n_ctx_train = 4096;
  c.rope_theta = q ? 1e6f : 10000.0f;
  c.rope_style = q ? RopeStyle::Neox : RopeStyle::Interleaved;
  c.qkv_bias = q;
  c.tied_embeddings = !q;
  return c;
}
int main_tiny() {
  ThreadPool pool(2);
  for (bool q : {false, true})
    for (uint64_t seed : {11, 12, 13}) {
      auto m = Model::synthetic(tiny(q), seed);
      CpuForward cpu(*m);
      Emu emu(*m, pool);
      const int V = 512;
      std::vector<int32_t> t(330);
      std::mt19937 rng(seed);
      for (auto& x : t) x = rng() % V;
      for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming}) {
        HeadPlan plan = HeadPlan::uniform(3, 2, kind, {4, 40});
        plan.kv_type = emu_kv();
        auto cc = cpu.new_cache(plan), ce = cpu.new_cache(plan);
        std::vector<float> lc(V), le(V);
        double worst = 0, wmax = 0, maxgap = 0;
        int dis = 0;
        for (int i = 0; i < 330; ++i) {
          cpu.forward(*cc, &t[i], 1, lc.data(), pool);
          emu.forward(*ce, &t[i], 1, le.data());
          double num = 0, den = 0, mx = 0;
          for (int j = 0; j < V; ++j) {
            double d = le[j] - lc[j];
            num += d * d;
            den += (double)lc[j] * lc[j];
            mx = std::max(mx, std::fabs(d));
          }
          worst = std::max(worst, std::sqrt(num / den));
          wmax = std::max(wmax, mx);
          if (Sampler::argmax(lc.data(), V) != Sampler::argmax(le.data(), V)) {
            ++dis;
            maxgap = std::max(maxgap, gap(lc.data(), V));
          }
        }
        double rms = 0;
        for (float x : lc) rms += x * x;
        rms = std::sqrt(rms / V);
        printf(
            "tiny %s seed %lu %s: worst rel_rms %.4f max_abs %.4f logit rms %.3f top1 disagreements %d (largest CPU "
            "gap among them %.3f)\n",
            q ? "qwen" : "llama", seed, kind == HeadKind::Retrieval ? "full" : "streaming", worst, wmax, rms, dis,
            maxgap);
      }
    }
  return 0;
}
// An HF fixture: the emulation and the plain CPU forward, one token at a time, against
// transformers' float32 logits of every prompt position (tests/cuda/hf_forward_test.cpp's bound).
int main_hf(const std::string& dir, const std::string& fixture, const std::string& key) {
  auto m = Model::load(dir);
  CpuForward cpu(*m);
  ThreadPool pool(2);
  Emu emu(*m, pool);
  const auto& c = m->config();
  const int V = c.n_vocab;
  const auto j = nlohmann::json::parse(std::ifstream(fixture));
  const auto ids = j["ids"].get<std::vector<int32_t>>();
  const HeadPlan plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval);
  auto cc = cpu.new_cache(plan), ce = cpu.new_cache(plan);
  std::vector<float> lc(V), le(V), ref(V);
  double worst_e = 0, worst_c = 0, max_e = 0, min_gap = 1e9, dis_gap = 0;
  int dis = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    cpu.forward(*cc, &ids[i], 1, lc.data(), pool);
    emu.forward(*ce, &ids[i], 1, le.data());
    for (int v = 0; v < V; ++v) ref[v] = j[key][i][v].get<float>();
    double ne = 0, nc = 0, den = 0;
    for (int v = 0; v < V; ++v) {
      ne += (double)(le[v] - ref[v]) * (le[v] - ref[v]), nc += (double)(lc[v] - ref[v]) * (lc[v] - ref[v]);
      den += (double)ref[v] * ref[v];
      max_e = std::max(max_e, (double)std::fabs(le[v] - ref[v]));
    }
    worst_e = std::max(worst_e, std::sqrt(ne / den)), worst_c = std::max(worst_c, std::sqrt(nc / den));
    min_gap = std::min(min_gap, gap(ref.data(), V));
    if (Sampler::argmax(le.data(), V) != Sampler::argmax(ref.data(), V)) ++dis, dis_gap = std::max(dis_gap, gap(ref.data(), V));
  }
  // Greedy, teacher-forced with transformers' tokens: the steps whose reference gap (the CPU's)
  // is >= 0.25 (tests/cuda/hf_forward_test.cpp checks the GPU's pick there), and whether the
  // emulation's top-1 agrees at them.
  const auto greedy = j["greedy"].get<std::vector<int32_t>>();
  size_t clear = 0, clear_same = 0;
  for (size_t i = 0; i < greedy.size(); ++i) {
    if (gap(lc.data(), V) >= 0.25) ++clear, clear_same += Sampler::argmax(le.data(), V) == greedy[i];
    cpu.forward(*cc, &greedy[i], 1, lc.data(), pool);
    emu.forward(*ce, &greedy[i], 1, le.data());
  }
  printf("%s: greedy (teacher-forced) gap >= 0.25 at %zu of %zu steps, emulation's top-1 agrees at %zu of them\n",
         c.name.c_str(), clear, greedy.size(), clear_same);
  printf("%s: %zu positions, worst rel_rms emulation %.4f (max |d| %.4f), CPU %.6f; top-1 disagreements %d (largest "
         "transformers gap among them %.3f), smallest gap %.3f\n",
         c.name.c_str(), ids.size(), worst_e, max_e, worst_c, dis, dis_gap, min_gap);
  return 0;
}

int main(int argc, char** argv) {
  if ((argc == 4 || argc == 5) && std::string(argv[1]) == "hf")
    return main_hf(argv[2], argv[3], argc == 5 ? argv[4] : "logits");
  if (argc == 2) return main_tiny();
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL.gguf FIXTURE.json [steps] | %s tiny | %s hf DIR FIXTURE.json [KEY]\n", argv[0],
            argv[0], argv[0]);
    return 2;
  }
  const std::string path = argv[1], fixture = argv[2];
  const int steps = argc > 3 ? atoi(argv[3]) : 64;
  auto m = Model::load(path);
  CpuForward cpu(*m);
  ThreadPool pool(2);
  Emu emu(*m, pool);
  const auto& c = m->config();
  const int V = c.n_vocab;
  auto j = nlohmann::json::parse(std::ifstream(fixture));
  for (auto& p : j["prompts"]) {
    auto ids = p["ids"].get<std::vector<int32_t>>();
    HeadPlan plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval);
    plan.kv_type = emu_kv();
    auto cc = cpu.new_cache(plan), ce = cpu.new_cache(plan);
    std::vector<float> lc(V), le(V);
    cpu.forward(*cc, ids.data(), ids.size(), lc.data(), pool);
    emu.forward(*ce, ids.data(), ids.size(), le.data());
    double num = 0, den = 0, mx = 0;
    for (int i = 0; i < V; ++i) {
      double d = le[i] - lc[i];
      num += d * d;
      den += (double)lc[i] * lc[i];
      mx = std::max(mx, std::fabs(d));
    }
    printf("%-45s n=%4zu rel_rms %.4f max_abs %.4f gap %.3f\n",
           p["description"].get<std::string>().substr(0, 45).c_str(), ids.size(), std::sqrt(num / den), mx,
           gap(lc.data(), V));
    // greedy both (free running), report agreement + min cpu gap + max |dlogit| along teacher-forced path
    int same = -1;
    double mingap = 1e9, worst = 0;
    int32_t nc = Sampler::argmax(lc.data(), V), ne = Sampler::argmax(le.data(), V);
    std::vector<double> gaps;
    for (int s = 0; s < steps; ++s) {
      gaps.push_back(gap(lc.data(), V));
      if (same < 0 && nc != ne) same = s;
      // teacher-force the CPU token into both
      cpu.forward(*cc, &nc, 1, lc.data(), pool);
      emu.forward(*ce, &nc, 1, le.data());
      double mxs = 0;
      for (int i = 0; i < V; ++i) mxs = std::max(mxs, (double)std::fabs(le[i] - lc[i]));
      worst = std::max(worst, mxs);
      nc = Sampler::argmax(lc.data(), V);
      ne = Sampler::argmax(le.data(), V);
    }
    for (double g : gaps) mingap = std::min(mingap, g);
    size_t must = 0;
    while (must < gaps.size() && gaps[must] >= 0.5) ++must;
    printf(
        "    teacher-forced %d steps: first top-1 disagreement at %d, CPU min gap %.3f, gap>=0.5 for %zu steps, max "
        "|dlogit| %.3f\n",
        steps, same, mingap, must, worst);
    fflush(stdout);
  }
}
