// CPU emulation of the CUDA calibration's rounding (src/calibrate/cuda/cuda_gated_model.h), to
// size the tolerances of tests/cuda/calib_model_test.cpp without a GPU: the gated model's loss and
// gate gradient computed with the CPU calibration ops (src/calibrate) but rounded to bf16 where
// the CUDA backend rounds (weights, embeddings, normalised activations, q/k/v, the mixed
// attention output, the SwiGLU output, every gradient entering a GEMM, the attention output
// gradients), compared with the plain float GatedModel on the same samples. Not emulated: the
// attention kernels' internal rounding of P and dS (measured separately by
// tests/calibrate/flash_cuda_emulation_test.cpp: ~1e-3 relative) and summation orders.
//   duo_calib_bf16_emulation                 the tiny random models of calib_model_test
//   duo_calib_bf16_emulation MODEL.gguf [n]  a real model on n random tokens (default 300)
// Without rounding the emulation must reproduce GatedModel<float> (printed as a self-check).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "calibrate/dense_gemm.h"
#include "calibrate/flash_attention.h"
#include "calibrate/gated_model.h"
#include "calibrate/grad_ops.h"
#include "calibrate/loss.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "model/model.h"

using namespace duo;

namespace {

float rb(float x) { return bf16_to_f32(f32_to_bf16(x)); }

struct Emulation {
  FrozenWeights<float>& w;
  ThreadPool& pool;
  StreamingWindow win;
  bool round;
  std::vector<DenseLayer<float>> layers;
  RopeTable<float> rope;
  // tape of one layer
  int64_t n = 0;
  std::vector<float> xn, q, k, v, of, os, lf, ls, x2, gu_g, gu_u;

  Emulation(FrozenWeights<float>& w_, ThreadPool& p, StreamingWindow wi, bool r) : w(w_), pool(p), win(wi), round(r) {
    for (int l = 0; l < w.config().n_layers; ++l) {
      DenseLayer<float> d = w.layer(l);
      for (auto* m : {&d.wq, &d.wk, &d.wv, &d.wo, &d.w_gate, &d.w_up, &d.w_down}) rv(*m);
      layers.push_back(std::move(d));
    }
  }
  void rv(std::vector<float>& x) {
    if (round)
      for (auto& e : x) e = rb(e);
  }
  void rv(float* x, int64_t m) {
    if (round)
      for (int64_t i = 0; i < m; ++i) x[i] = rb(x[i]);
  }
  const ModelConfig& c() const { return w.config(); }

  void linear(const std::vector<float>& x, int64_t rows, int64_t cols, const std::vector<float>& W,
              std::vector<float>& y) {
    y.assign((size_t)(n * rows), 0.0f);
    gemm<float>(x.data(), cols, W.data(), cols, true, y.data(), rows, n, rows, cols, false, pool);
  }
  // dx (n x cols) (+)= dy (n x rows) W; dy is rounded first (the GPU's GEMM operand).
  void linear_bwd(std::vector<float> dy, int64_t rows, int64_t cols, const std::vector<float>& W,
                  std::vector<float>& dx, bool acc) {
    rv(dy);
    if (!acc) dx.assign((size_t)(n * cols), 0.0f);
    gemm<float>(dy.data(), rows, W.data(), cols, false, dx.data(), cols, n, cols, rows, acc, pool);
  }

  // x_out = layer l of x_in (gates null: full attention only); keeps the tape.
  void forward_layer(int l, const std::vector<float>& x_in, std::vector<float>& x_out, const float* gates) {
    const ModelConfig& cf = c();
    const int64_t E = cf.n_embd, D = cf.head_dim, H = cf.n_heads, HKV = cf.n_kv_heads, Q = H * D, KV = HKV * D,
                  F = cf.n_ff;
    const DenseLayer<float>& L = layers[l];
    xn.assign((size_t)(n * E), 0.0f);
    rmsnorm_forward<float>(x_in.data(), L.attn_norm.data(), xn.data(), n, E, cf.norm_eps, pool);
    rv(xn);
    linear(xn, Q, E, L.wq, q);
    linear(xn, KV, E, L.wk, k);
    linear(xn, KV, E, L.wv, v);
    if (!L.bq.empty()) {
      add_bias_rows<float>(q.data(), L.bq.data(), n, Q, pool);
      add_bias_rows<float>(k.data(), L.bk.data(), n, KV, pool);
      add_bias_rows<float>(v.data(), L.bv.data(), n, KV, pool);
    }
    rope_apply<float>(q.data(), n, Q, (int)H, (int)D, rope, cf.rope_style, false, pool);
    rope_apply<float>(k.data(), n, KV, (int)HKV, (int)D, rope, cf.rope_style, false, pool);
    rv(q), rv(k), rv(v);
    const AttentionDims dims{n, (int)H, (int)HKV, (int)D};
    of.assign((size_t)(n * Q), 0.0f), lf.assign((size_t)(n * H), 0.0f);
    flash_attention_forward<float>(q.data(), k.data(), v.data(), of.data(), lf.data(), dims, AttentionMask::causal(),
                                   pool);
    std::vector<float> o = of;
    if (gates) {
      os.assign((size_t)(n * Q), 0.0f), ls.assign((size_t)(n * H), 0.0f);
      flash_attention_forward<float>(q.data(), k.data(), v.data(), os.data(), ls.data(), dims,
                                     AttentionMask::streaming(win.sink, win.recent), pool);
      gate_mix_forward<float>(of.data(), os.data(), gates, o.data(), n, (int)H, (int)HKV, (int)D, pool);
    }
    rv(o);
    linear(o, E, Q, L.wo, x2);
    add_inplace_rows<float>(x2.data(), x_in.data(), n * E, pool);
    rmsnorm_forward<float>(x2.data(), L.ffn_norm.data(), xn.data(), n, E, cf.norm_eps, pool);
    rv(xn);
    linear(xn, F, E, L.w_gate, gu_g);
    linear(xn, F, E, L.w_up, gu_u);
    std::vector<float> h((size_t)(n * F));
    swiglu_forward<float>(gu_g.data(), gu_u.data(), h.data(), n * F, pool);
    rv(h);
    linear(h, E, F, L.w_down, x_out);
    add_inplace_rows<float>(x_out.data(), x2.data(), n * E, pool);
  }

  void backward_layer(int l, const std::vector<float>& x_in, const float* gates, std::vector<float>& dx,
                      double* d_gates) {
    const ModelConfig& cf = c();
    const int64_t E = cf.n_embd, D = cf.head_dim, H = cf.n_heads, HKV = cf.n_kv_heads, Q = H * D, KV = HKV * D,
                  F = cf.n_ff;
    const DenseLayer<float>& L = layers[l];
    std::vector<float> dh, dg((size_t)(n * F)), du((size_t)(n * F)), dxn;
    linear_bwd(dx, E, F, L.w_down, dh, false);
    swiglu_backward<float>(gu_g.data(), gu_u.data(), dh.data(), dg.data(), du.data(), n * F, pool);
    linear_bwd(dg, F, E, L.w_gate, dxn, false);
    linear_bwd(du, F, E, L.w_up, dxn, true);
    rmsnorm_backward<float>(x2.data(), L.ffn_norm.data(), dxn.data(), dx.data(), n, E, cf.norm_eps, true, pool);
    std::vector<float> d_o, d_full((size_t)(n * Q)), d_stream((size_t)(n * Q));
    linear_bwd(dx, E, Q, L.wo, d_o, false);
    gate_mix_backward<float>(of.data(), os.data(), gates, d_o.data(), d_full.data(), d_stream.data(), d_gates, n,
                             (int)H, (int)HKV, (int)D, pool);
    rv(d_full), rv(d_stream);
    const AttentionDims dims{n, (int)H, (int)HKV, (int)D};
    std::vector<float> dq((size_t)(n * Q)), dk((size_t)(n * KV)), dv((size_t)(n * KV));
    flash_attention_backward<float>(q.data(), k.data(), v.data(), of.data(), lf.data(), d_full.data(), dq.data(),
                                    dk.data(), dv.data(), false, dims, AttentionMask::causal(), pool);
    flash_attention_backward<float>(q.data(), k.data(), v.data(), os.data(), ls.data(), d_stream.data(), dq.data(),
                                    dk.data(), dv.data(), true, dims, AttentionMask::streaming(win.sink, win.recent),
                                    pool);
    rope_apply<float>(dq.data(), n, Q, (int)H, (int)D, rope, cf.rope_style, true, pool);
    rope_apply<float>(dk.data(), n, KV, (int)HKV, (int)D, rope, cf.rope_style, true, pool);
    linear_bwd(dq, Q, E, L.wq, dxn, false);
    linear_bwd(dk, KV, E, L.wk, dxn, true);
    linear_bwd(dv, KV, E, L.wv, dxn, true);
    rmsnorm_backward<float>(x_in.data(), L.attn_norm.data(), dxn.data(), dx.data(), n, E, cf.norm_eps, true, pool);
  }

  void final_rows(const std::vector<float>& x, const std::vector<int64_t>& rows, std::vector<float>& out) {
    const int64_t E = c().n_embd;
    out.assign(rows.size() * E, 0.0f);
    for (size_t r = 0; r < rows.size(); ++r)
      rmsnorm_forward<float>(&x[rows[r] * E], w.output_norm().data(), &out[r * E], 1, E, c().norm_eps, pool);
  }

  LossValue loss_and_grad(const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows,
                          const std::vector<double>& gates_d, double lambda, std::vector<double>& grad,
                          std::vector<float>* h_mix_out = nullptr) {
    const ModelConfig& cf = c();
    int64_t last = 0;
    for (int64_t r : rows) last = std::max(last, r);
    n = last + 1;
    const int64_t E = cf.n_embd, HKV = cf.n_kv_heads;
    if (rope.n < n) rope.build(0, n, w.rope_inv_freq());
    std::vector<float> x0((size_t)(n * E));
    w.embed(tokens.data(), n, x0.data());
    rv(x0);
    const std::vector<float> gates(gates_d.begin(), gates_d.end());
    std::vector<float> a = x0, b;
    for (int l = 0; l < cf.n_layers; ++l) forward_layer(l, a, b, nullptr), a.swap(b);
    std::vector<float> h_full, h_mix;
    final_rows(a, rows, h_full);
    std::vector<std::vector<float>> ckpt(1, x0);
    for (int l = 0; l < cf.n_layers; ++l) {
      std::vector<float> out;
      forward_layer(l, ckpt.back(), out, gates.data() + l * HKV);
      ckpt.push_back(std::move(out));
    }
    final_rows(ckpt.back(), rows, h_mix);
    if (h_mix_out) *h_mix_out = h_mix;
    const int64_t R = (int64_t)rows.size();
    std::vector<float> d_mix((size_t)(R * E));
    LossValue v;
    v.distill = distill_loss<float>(h_full.data(), h_mix.data(), R, E, d_mix.data());
    grad.assign(gates_d.size(), 0.0);
    std::vector<float> dx((size_t)(n * E), 0.0f);
    for (size_t r = 0; r < rows.size(); ++r)
      rmsnorm_backward<float>(&ckpt.back()[rows[r] * E], w.output_norm().data(), &d_mix[r * E], &dx[rows[r] * E], 1, E,
                              cf.norm_eps, true, pool);
    for (int l = cf.n_layers - 1; l >= 0; --l) {
      std::vector<float> scratch;
      forward_layer(l, ckpt[l], scratch, gates.data() + l * HKV);
      backward_layer(l, ckpt[l], gates.data() + l * HKV, dx, grad.data() + l * HKV);
    }
    v.reg = gate_l1_mean(gates_d, lambda, grad);
    v.total = v.distill + lambda * v.reg;
    return v;
  }
};

ModelConfig tiny(RopeStyle style, bool bias, int head_dim) {
  ModelConfig c;
  c.arch = style == RopeStyle::Neox ? "qwen2" : "llama";
  c.name = "tiny";
  c.n_layers = 2, c.n_embd = 128, c.n_ff = 192, c.n_heads = 4, c.n_kv_heads = 2;
  c.head_dim = head_dim, c.n_rot = head_dim, c.n_vocab = 64, c.n_ctx_train = 4096;
  c.rope_theta = style == RopeStyle::Neox ? 1e6f : 10000.0f;
  c.norm_eps = 1e-5f, c.rope_style = style, c.qkv_bias = bias;
  return c;
}

void compare(Model& model, const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows,
             const std::vector<double>& gates, StreamingWindow win, const char* what) {
  ThreadPool pool(2);
  FrozenWeights<float> fw(model, size_t(1) << 34, pool);
  GatedModel<float> gm(fw, win, pool);
  std::vector<double> g_ref, g_plain, g_emu;
  const LossValue v_ref = calibration_loss_and_grad<float>(gm, tokens, rows, gates, 0.05, g_ref);
  std::vector<float> h_ref((size_t)(rows.size() * model.config().n_embd)), h_emu;
  const std::vector<float> x0 = gm.embed(tokens);
  gm.forward_gated(x0.data(), (int64_t)tokens.size(), std::vector<float>(gates.begin(), gates.end()), rows,
                   h_ref.data());
  Emulation plain(fw, pool, win, false), emu(fw, pool, win, true);
  const LossValue v_plain = plain.loss_and_grad(tokens, rows, gates, 0.05, g_plain);
  const LossValue v_emu = emu.loss_and_grad(tokens, rows, gates, 0.05, g_emu, &h_emu);
  auto grad_err = [&](const std::vector<double>& g, double& rel, double& mx, double& cosine) {
    double num = 0, den = 0, dot = 0, gg = 0, scale = 0;
    mx = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      num += (g[i] - g_ref[i]) * (g[i] - g_ref[i]), den += g_ref[i] * g_ref[i];
      dot += g[i] * g_ref[i], gg += g[i] * g[i];
      mx = std::max(mx, std::fabs(g[i] - g_ref[i])), scale = std::max(scale, std::fabs(g_ref[i]));
    }
    rel = std::sqrt(num / den), mx /= scale, cosine = dot / std::sqrt(den * gg);
  };
  double rel, mx, cs;
  grad_err(g_plain, rel, mx, cs);
  std::printf("%-34s self-check (no rounding): distill rel %.1e, grad rel L2 %.1e\n", what,
              std::fabs(v_plain.distill - v_ref.distill) / v_ref.distill, rel);
  grad_err(g_emu, rel, mx, cs);
  double hn = 0, hd = 0;
  for (size_t i = 0; i < h_ref.size(); ++i)
    hn += (h_emu[i] - h_ref[i]) * (h_emu[i] - h_ref[i]), hd += h_ref[i] * h_ref[i];
  std::printf(
      "%-34s bf16 rounding: distill %.6g vs %.6g (rel %.2e) | grad rel L2 %.2e, max %.2e of max, cos %.6f | "
      "hidden rel RMS %.2e\n",
      what, v_emu.distill, v_ref.distill, std::fabs(v_emu.distill - v_ref.distill) / v_ref.distill, rel, mx, cs,
      std::sqrt(hn / hd));
}

std::vector<int32_t> random_tokens(int64_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t((size_t)n);
  for (auto& x : t) x = (int32_t)(rng() % (uint64_t)vocab);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {  // the tiny models of tests/cuda/calib_model_test.cpp, same seeds
    const struct {
      RopeStyle s;
      bool b;
      int d;
      const char* name;
    } variants[] = {{RopeStyle::Interleaved, false, 64, "tiny interleaved, no bias, d 64"},
                    {RopeStyle::Interleaved, true, 128, "tiny interleaved, bias, d 128"},
                    {RopeStyle::Neox, false, 128, "tiny neox, no bias, d 128"},
                    {RopeStyle::Neox, true, 64, "tiny neox, bias, d 64"}};
    for (const auto& v : variants) {
      auto model = Model::synthetic(tiny(v.s, v.b, v.d), 21);
      std::mt19937_64 rng(23);
      std::uniform_real_distribution<double> ud(0.2, 0.9);
      std::vector<double> gates(4);
      for (auto& g : gates) g = ud(rng);
      compare(*model, random_tokens(200, 64, 22), {70, 101, 102, 150, 199}, gates, {4, 40}, v.name);
    }
    auto model = Model::synthetic(tiny(RopeStyle::Neox, true, 64), 31);
    compare(*model, random_tokens(200, 64, 32), {70, 101, 102, 150, 199}, {0.0, 1.0, 0.4, 0.0}, {4, 40},
            "tiny gates 0, 1, 0.4, 0");
    return 0;
  }
  auto model = Model::load(argv[1]);
  const int64_t n = argc > 2 ? std::atoll(argv[2]) : 300;
  const ModelConfig& c = model->config();
  std::vector<int64_t> rows = {n / 2};
  for (int64_t r = n - 20; r < n; ++r) rows.push_back(r);
  std::vector<double> gates((size_t)c.n_layers * c.n_kv_heads);
  std::mt19937_64 rng(72);
  std::uniform_real_distribution<double> ud(0.3, 1.0);
  for (auto& g : gates) g = ud(rng);
  compare(*model, random_tokens(n, c.n_vocab, 71), rows, gates, {16, 64}, c.name.c_str());
  return 0;
}
