// The CUDA calibration's kernels (src/calibrate/cuda) against their CPU twins in
// src/calibrate (float) on random inputs. Inputs that the GPU reads as bf16 are rounded to bf16
// first and the CPU gets the same rounded values, so what is compared is the kernel's own error.
// Tolerances, with why:
//  - fp32 outputs of fp32 math (RMSNorm backward, final-row norm, delta, gate gradient): summation
//    order only, <= 2e-5 relative (gate gradient: 1e-5 of the sum of |terms|);
//  - bf16 outputs of fp32 math (SwiGLU backward, gate mixing, QKV gradient pack): one bf16 step
//    (2^-7 relative covers the rounding of two fp32 values that differ in the last bits);
//  - the input-gradient GEMM (bf16 operands, exact products, fp32 accumulation): 1e-4 relative;
//  - attention forward: fp32 O with P rounded to bf16 before P V (as the inference kernels):
//    relative RMS <= 5e-3, max |d| <= 1e-2 (O ~ 1); lse: the scores are exact products of bf16
//    values summed in fp32 on both sides: |d| <= 1e-4;
//  - attention backward: P^T and dS rounded to bf16 as MMA operands: relative RMS <= 1e-2 and
//    max |d| <= 3e-2 of the largest |want| per gradient.
// Every comparison prints what it measured, and a failure names the worst element.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cuda/gemm.h"
#include "calibrate/cuda/flash_attention_cuda.h"
#include "calibrate/cuda/grad_kernels.h"
#include "calibrate/dense_gemm.h"
#include "calibrate/flash_attention.h"
#include "calibrate/grad_ops.h"
#include "calibrate/logit_loss.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "cuda_test_util.h"

namespace duo::cuda::calib {
namespace {

using test::Dev;

constexpr double kBf16Step = 1.0 / 128;

std::vector<float> rounded(std::vector<float> v) {
  for (auto& x : v) x = test::round_bf16(x);
  return v;
}

ThreadPool& pool() {
  static ThreadPool p(4);
  return p;
}

// Relative RMS error and max |d| relative to max |want|, printed, each with an absolute floor of
// 1e-4 (a gradient that is exactly 0, e.g. dQ when every row sees one key, comes out at ~1e-6).
void expect_close_rms(const std::vector<float>& got, const std::vector<float>& want, double rel_rms, double rel_max,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const test::ErrorStats e = test::error_stats(got.data(), want.data(), want.size());
  double scale = 0, num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, (double)std::fabs(want[i]));
    const double d = std::isfinite(got[i]) ? (double)got[i] - want[i] : INFINITY;
    num += d * d, den += (double)want[i] * want[i];
  }
  const double n = (double)std::max<size_t>(want.size(), 1);
  const double rel = std::sqrt(num / std::max(den, n * 1e-8 / (rel_rms * rel_rms)));
  std::printf("  %-64s rel RMS %.2e, max |d| %.2e (%.2e of max |want| %.3g)\n", what.c_str(), e.rel_rms, e.max_abs,
              e.max_abs / std::max(scale, 1e-30), scale);
  EXPECT_LE(rel, rel_rms) << what;
  EXPECT_LE(e.max_abs, rel_max * scale + 1e-4)
      << what << ": worst at " << e.argmax << ": got " << got[e.argmax] << ", want " << want[e.argmax];
}

// ------------------------------------------------------------------------------- GEMM
TEST(CalibCudaOps, InputGradientGemmIsDyTimesW) {
  std::mt19937 rng(1);
  const int64_t rows = 96, cols = 80, n = 37, lddy = rows + 8, lddx = cols + 4;  // padded rows: lds honoured
  const auto W = test::randn_bf16(rng, (size_t)(rows * cols));
  const auto dY = test::randn_bf16(rng, (size_t)(n * lddy));
  const auto dX0 = test::randn(rng, (size_t)(n * lddx));
  Dev<bf16> dw(test::to_bf16(W)), ddy(test::to_bf16(dY));
  for (bool acc : {false, true}) {
    Dev<float> ddx(dX0);
    Gemm gemm(0);
    gemm.linear_input_grad(dw.get(), rows, cols, ddy.get(), lddy, n, ddx.get(), lddx, acc);
    std::vector<float> want = dX0;
    gemm_ref<float>(dY.data(), lddy, W.data(), cols, false, want.data(), lddx, n, cols, rows, acc);
    std::vector<float> got = ddx.download();
    // The padding columns stay untouched.
    for (int64_t t = 0; t < n; ++t)
      for (int64_t c = cols; c < lddx; ++c) ASSERT_EQ(got[t * lddx + c], dX0[t * lddx + c]) << "padding overwritten";
    EXPECT_ALL_CLOSE(got, want, 1e-4, 1e-3, acc ? "dX += dY W" : "dX = dY W");
  }
}

// ------------------------------------------------------------------------------- RMSNorm
TEST(CalibCudaOps, RmsNormBackwardMatchesCpu) {
  std::mt19937 rng(2);
  for (int dim : {576, 1536, 100}) {
    const int64_t n = 9;
    const auto x = test::randn(rng, (size_t)(n * dim), 3.0f);
    const auto w = test::randn(rng, (size_t)dim, 0.2f, 1.0f);
    const auto dy = test::randn(rng, (size_t)(n * dim));
    const auto dx0 = test::randn(rng, (size_t)(n * dim));
    Dev<float> d_x(x), d_w(w), d_dy(dy);
    for (bool acc : {false, true}) {
      Dev<float> d_dx(dx0);
      rmsnorm_backward(d_x.get(), d_w.get(), d_dy.get(), d_dx.get(), n, dim, 1e-5f, acc, nullptr, 0);
      std::vector<float> want = dx0;
      duo::rmsnorm_backward<float>(x.data(), w.data(), dy.data(), want.data(), n, dim, 1e-5, acc, pool());
      EXPECT_ALL_CLOSE(d_dx.download(), want, 2e-5, 1e-5, "rmsnorm backward dim " + std::to_string(dim));
    }
  }
}

TEST(CalibCudaOps, FinalNormAtRowsForwardAndBackward) {
  std::mt19937 rng(3);
  const int64_t n = 40, dim = 576;
  const std::vector<int32_t> rows = {3, 39, 17, 0};
  const auto x = test::randn(rng, (size_t)(n * dim), 2.0f);
  const auto w = test::randn(rng, (size_t)dim, 0.2f, 1.0f);
  const auto dy = test::randn(rng, rows.size() * dim);
  Dev<float> d_x(x), d_w(w), d_dy(dy), d_out(rows.size() * dim), d_dx(n * dim);
  Dev<int32_t> d_rows(rows);
  rmsnorm_rows_f32(d_x.get(), d_rows.get(), d_w.get(), d_out.get(), (int64_t)rows.size(), dim, 1e-5f, 0);
  rmsnorm_backward(d_x.get(), d_w.get(), d_dy.get(), d_dx.get(), (int64_t)rows.size(), dim, 1e-5f, true, d_rows.get(),
                   0);
  std::vector<float> want_out(rows.size() * dim), want_dx((size_t)(n * dim), 0.0f);
  for (size_t r = 0; r < rows.size(); ++r) {
    duo::rmsnorm_forward<float>(&x[rows[r] * dim], w.data(), &want_out[r * dim], 1, dim, 1e-5, pool());
    duo::rmsnorm_backward<float>(&x[rows[r] * dim], w.data(), &dy[r * dim], &want_dx[rows[r] * dim], 1, dim, 1e-5, true,
                                 pool());
  }
  EXPECT_ALL_CLOSE(d_out.download(), want_out, 2e-5, 1e-6, "final norm at rows");
  EXPECT_ALL_CLOSE(d_dx.download(), want_dx, 2e-5, 1e-6, "final norm backward into rows (others stay 0)");
}

// ------------------------------------------------------------------------------- element-wise
TEST(CalibCudaOps, SwiGluBackwardMatchesCpu) {
  std::mt19937 rng(4);
  const int64_t n = 13, F = 300;
  auto gu = test::randn(rng, (size_t)(n * 2 * F), 3.0f);
  gu[0] = -120.0f, gu[1] = 95.0f, gu[2] = 0.0f;  // saturated sigmoid, zero
  const auto dh = test::randn(rng, (size_t)(n * F));
  Dev<float> d_gu(gu), d_dh(dh);
  Dev<bf16> d_dgu((size_t)(n * 2 * F));
  swiglu_backward(d_gu.get(), d_dh.get(), d_dgu.get(), n, (int)F, 0);
  std::vector<float> g((size_t)(n * F)), u((size_t)(n * F)), dg(g.size()), du(g.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < F; ++i) g[t * F + i] = gu[t * 2 * F + i], u[t * F + i] = gu[t * 2 * F + F + i];
  duo::swiglu_backward<float>(g.data(), u.data(), dh.data(), dg.data(), du.data(), n * F, pool());
  std::vector<float> want((size_t)(n * 2 * F));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < F; ++i) want[t * 2 * F + i] = dg[t * F + i], want[t * 2 * F + F + i] = du[t * F + i];
  EXPECT_ALL_CLOSE(test::to_float(d_dgu.download()), want, kBf16Step, 1e-6, "swiglu backward");
}

TEST(CalibCudaOps, ToBf16RoundsToNearestEven) {
  std::mt19937 rng(5);
  const auto x = test::randn(rng, 10007, 100.0f);
  Dev<float> d_x(x);
  Dev<bf16> d_y(x.size());
  to_bf16(d_x.get(), d_y.get(), (int64_t)x.size(), 0);
  EXPECT_EQ(test::to_float(d_y.download()), rounded(x));
}

// The logit KL on the GPU (duo calibrate --loss kl) against the host twin, at Qwen's vocabulary
// size: per-row KL in double to 1e-9 relative (summation order), the gradient to one bf16 step.
TEST(CalibCudaOps, LogitKlMatchesCpu) {
  std::mt19937 rng(8);
  const int64_t R = 6, V = 151936;
  auto z = test::randn(rng, (size_t)(2 * R * V), 3.0f);
  for (size_t i = (size_t)(R * V); i < z.size(); ++i) z[i] *= 0.02f;  // z_mix - z_full: small
  Dev<float> d_z(z);
  Dev<double> d_kl((size_t)R);
  Dev<bf16> d_d((size_t)(R * V));
  logit_kl_grad(d_z.get(), R, V, d_kl.get(), d_d.get(), 0);
  std::vector<float> zf(z.begin(), z.begin() + R * V), zm((size_t)(R * V)), want_d((size_t)(R * V));
  for (size_t i = 0; i < zm.size(); ++i) zm[i] = zf[i] + z[(size_t)(R * V) + i];
  const double want = duo::logit_kl<float>(zf.data(), zm.data(), R, V, want_d.data(), &pool());
  const auto kl = d_kl.download();
  double got = 0;
  for (double k : kl) got += k;
  got /= (double)R;
  std::printf("  logit KL: GPU %.12e, CPU %.12e\n", got, want);
  EXPECT_GT(want, 1e-4);
  EXPECT_NEAR(got, want, 1e-9 * want);
  EXPECT_ALL_CLOSE(test::to_float(d_d.download()), want_d, kBf16Step, 1e-12, "d KL / d z_mix");
  EXPECT_THROW(logit_kl_grad(d_z.get(), 0, V, d_kl.get(), d_d.get(), 0), Error);
}

// ------------------------------------------------------------------------------- gate mixing
struct MixShape {
  int64_t n;
  int H, HKV, D;
};

TEST(CalibCudaOps, GateMixForwardAndBackwardMatchCpu) {
  std::mt19937 rng(6);
  for (const MixShape s : {MixShape{300, 12, 2, 128}, MixShape{77, 9, 3, 64}, MixShape{16, 4, 4, 64}}) {
    const std::string tag = "n " + std::to_string(s.n) + " H " + std::to_string(s.H) + " HKV " + std::to_string(s.HKV);
    const size_t count = (size_t)(s.n * s.H * s.D);
    const auto full = test::randn(rng, count), stream = test::randn(rng, count), d_o = test::randn(rng, count, 0.1f);
    std::vector<float> gates(s.HKV);
    for (int j = 0; j < s.HKV; ++j) gates[j] = j == 0 ? 0.0f : j == 1 ? 1.0f : 0.1f + 0.8f * (float)j / s.HKV;
    Dev<float> d_full(full), d_stream(stream), d_gates(gates), d_do(d_o);
    // forward
    Dev<bf16> d_mix(count);
    gate_mix_forward(d_full.get(), d_stream.get(), d_gates.get(), d_mix.get(), s.n, s.H, s.HKV, s.D, 0);
    std::vector<float> want(count);
    duo::gate_mix_forward<float>(full.data(), stream.data(), gates.data(), want.data(), s.n, s.H, s.HKV, s.D, pool());
    EXPECT_ALL_CLOSE(test::to_float(d_mix.download()), want, kBf16Step, 1e-6, "gate mix forward " + tag);
    gate_mix_forward(d_full.get(), d_stream.get(), nullptr, d_mix.get(), s.n, s.H, s.HKV, s.D, 0);
    EXPECT_EQ(test::to_float(d_mix.download()), rounded(full)) << "gate mix without gates is bf16(full)";
    // backward, accumulating into non-zero gate gradients
    Dev<bf16> d_dfull(count), d_dstream(count);
    Dev<double> d_part((size_t)gate_partials_count(s.n, s.HKV));
    std::vector<double> dg0(s.HKV);
    for (int j = 0; j < s.HKV; ++j) dg0[j] = 0.25 * (j + 1);
    Dev<double> d_dg(dg0);
    gate_mix_backward(d_full.get(), d_stream.get(), d_gates.get(), d_do.get(), d_dfull.get(), d_dstream.get(),
                      d_part.get(), d_dg.get(), s.n, s.H, s.HKV, s.D, 0);
    std::vector<float> wf(count), ws(count);
    std::vector<double> wg = dg0;
    duo::gate_mix_backward<float>(full.data(), stream.data(), gates.data(), d_o.data(), wf.data(), ws.data(), wg.data(),
                                  s.n, s.H, s.HKV, s.D, pool());
    EXPECT_ALL_CLOSE(test::to_float(d_dfull.download()), wf, kBf16Step, 1e-7, "d full " + tag);
    EXPECT_ALL_CLOSE(test::to_float(d_dstream.download()), ws, kBf16Step, 1e-7, "d stream " + tag);
    const std::vector<double> got = d_dg.download();
    const int G = s.H / s.HKV;
    for (int j = 0; j < s.HKV; ++j) {
      double mag = 0;  // sum of |terms|: the scale of fp32 summation-order differences
      for (int64_t t = 0; t < s.n; ++t)
        for (int h = j * G; h < (j + 1) * G; ++h)
          for (int d = 0; d < s.D; ++d) {
            const size_t i = (size_t)((t * s.H + h) * s.D + d);
            mag += std::fabs((double)d_o[i] * ((double)full[i] - stream[i]));
          }
      EXPECT_NEAR(got[j], wg[j], 1e-5 * mag) << "d gate " << j << " " << tag;
    }
  }
}

// ------------------------------------------------------------------------------- QKV gradient pack
TEST(CalibCudaOps, QkvGradPackSumsGroupsAndInvertsRope) {
  std::mt19937 rng(7);
  struct Case {
    int64_t n;
    int H, HKV, D;
    RopeStyle style;
    float theta;
  };
  for (const Case c : {Case{70, 8, 2, 64, RopeStyle::Interleaved, 10000.0f},
                       Case{45, 12, 2, 128, RopeStyle::Neox, 1e6f}, Case{2100, 4, 4, 64, RopeStyle::Neox, 10000.0f}}) {
    const std::string tag = std::string(c.style == RopeStyle::Neox ? "neox" : "interleaved") + " n " +
                            std::to_string(c.n) + " H " + std::to_string(c.H) + "/" + std::to_string(c.HKV);
    const int64_t Q = (int64_t)c.H * c.D, KV = (int64_t)c.HKV * c.D, QKV = Q + 2 * KV;
    const auto dq = test::randn(rng, (size_t)(c.n * Q)), dk = test::randn(rng, (size_t)(c.n * Q)),
               dv = test::randn(rng, (size_t)(c.n * Q));
    std::vector<float> inv(c.D / 2);
    for (int i = 0; i < c.D / 2; ++i) inv[i] = (float)std::pow((double)c.theta, -2.0 * i / c.D);
    Dev<float> d_dq(dq), d_dk(dk), d_dv(dv), d_inv(inv);
    Dev<bf16> d_out((size_t)(c.n * QKV));
    QkvGradArgs a;
    a.dq = d_dq.get(), a.dk_part = d_dk.get(), a.dv_part = d_dv.get(), a.inv_freq = d_inv.get();
    a.dqkv = d_out.get(), a.n = c.n, a.n_heads = c.H, a.n_kv_heads = c.HKV, a.head_dim = c.D;
    a.neox = c.style == RopeStyle::Neox;
    qkv_grad_pack(a, 0);
    // CPU: group sums, then the inverse rotation of calibrate/grad_ops (rope_apply(..., true)).
    const int G = c.H / c.HKV;
    std::vector<float> wq = dq, wk((size_t)(c.n * KV), 0.0f), wv((size_t)(c.n * KV), 0.0f);
    for (int64_t t = 0; t < c.n; ++t)
      for (int j = 0; j < c.HKV; ++j)
        for (int g = 0; g < G; ++g)
          for (int d = 0; d < c.D; ++d) {
            wk[t * KV + j * c.D + d] += dk[t * Q + (j * G + g) * c.D + d];
            wv[t * KV + j * c.D + d] += dv[t * Q + (j * G + g) * c.D + d];
          }
    RopeTable<float> table;
    table.build(0, c.n, inv);
    duo::rope_apply<float>(wq.data(), c.n, Q, c.H, c.D, table, c.style, true, pool());
    duo::rope_apply<float>(wk.data(), c.n, KV, c.HKV, c.D, table, c.style, true, pool());
    std::vector<float> want((size_t)(c.n * QKV));
    for (int64_t t = 0; t < c.n; ++t) {
      std::copy_n(&wq[t * Q], Q, &want[t * QKV]);
      std::copy_n(&wk[t * KV], KV, &want[t * QKV + Q]);
      std::copy_n(&wv[t * KV], KV, &want[t * QKV + Q + KV]);
    }
    EXPECT_ALL_CLOSE(test::to_float(d_out.download()), want, kBf16Step, 1e-5, "qkv gradient pack " + tag);
  }
}

// ------------------------------------------------------------------------------- attention
struct AttnCase {
  int64_t n;
  int H, HKV, D;
  AttentionMask mask;
  std::string name() const {
    std::string m = mask.kind == AttentionMask::Kind::Causal
                        ? "causal"
                        : "lambda(" + std::to_string(mask.sink) + "," + std::to_string(mask.recent) + ")";
    return "n " + std::to_string(n) + " H " + std::to_string(H) + "/" + std::to_string(HKV) + " d " +
           std::to_string(D) + " " + m;
  }
};

// Sinks and recent windows smaller and larger than the 64-key tiles and the 128-query blocks,
// GQA groups of 1, 3, 4 and 6, lengths that are not multiples of a block, a single token.
std::vector<AttnCase> attention_cases() {
  return {
      {1, 4, 2, 64, AttentionMask::causal()},           {37, 4, 2, 64, AttentionMask::causal()},
      {300, 8, 2, 64, AttentionMask::causal()},         {300, 8, 2, 64, AttentionMask::streaming(4, 16)},
      {300, 9, 3, 64, AttentionMask::streaming(100, 70)},  {257, 12, 2, 128, AttentionMask::causal()},
      {257, 12, 2, 128, AttentionMask::streaming(4, 40)},  {600, 12, 2, 128, AttentionMask::streaming(128, 256)},
      {200, 4, 4, 128, AttentionMask::streaming(0, 1)},  // only the diagonal
      {1000, 6, 1, 64, AttentionMask::streaming(64, 130)},
  };
}

struct AttnData {
  std::vector<float> q, k, v, d_o;  // bf16-rounded values
};

AttnData attention_data(const AttnCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  AttnData a;
  a.q = test::randn_bf16(rng, (size_t)(c.n * c.H * c.D), 1.5f);
  a.k = test::randn_bf16(rng, (size_t)(c.n * c.HKV * c.D), 1.5f);
  a.v = test::randn_bf16(rng, (size_t)(c.n * c.HKV * c.D));
  a.d_o = test::randn_bf16(rng, (size_t)(c.n * c.H * c.D));
  return a;
}

FlashArgs flash_args(const AttnCase& c, const Dev<bf16>& q, const Dev<bf16>& k, const Dev<bf16>& v) {
  FlashArgs a;
  a.q = q.get(), a.k = k.get(), a.v = v.get(), a.n = c.n;
  a.n_heads = c.H, a.n_kv_heads = c.HKV, a.head_dim = c.D, a.mask = c.mask;
  a.lse_ld = flash_lse_ld(c.n);
  return a;
}

// [h][lse_ld] (GPU) -> [h][n] (CPU).
std::vector<float> unpad_lse(const std::vector<float>& lse, int H, int64_t n, int64_t ld) {
  std::vector<float> out((size_t)(H * n));
  for (int h = 0; h < H; ++h) std::copy_n(&lse[h * ld], n, &out[h * n]);
  return out;
}

TEST(CalibCudaAttention, ForwardMatchesCpu) {
  uint32_t seed = 100;
  for (const AttnCase& c : attention_cases()) {
    SCOPED_TRACE(c.name());
    const AttnData d = attention_data(c, seed++);
    Dev<bf16> dq(test::to_bf16(d.q)), dk(test::to_bf16(d.k)), dv(test::to_bf16(d.v));
    const FlashArgs a = flash_args(c, dq, dk, dv);
    std::vector<float> nan_o(d.q.size(), NAN);
    Dev<float> d_o(nan_o), d_lse((size_t)(c.H * a.lse_ld));  // NaN-poisoned: an unwritten element fails
    flash_forward(a, d_o.get(), d_lse.get(), 0);
    std::vector<float> want_o(d.q.size()), want_lse((size_t)(c.H * c.n));
    const AttentionDims dims{c.n, c.H, c.HKV, c.D};
    flash_attention_forward<float>(d.q.data(), d.k.data(), d.v.data(), want_o.data(), want_lse.data(), dims, c.mask,
                                   pool());
    expect_close_rms(d_o.download(), want_o, 5e-3, 1e-2, "forward O " + c.name());
    EXPECT_ALL_CLOSE(unpad_lse(d_lse.download(), c.H, c.n, a.lse_ld), want_lse, 1e-5, 1e-4, "lse " + c.name());
  }
}

// Per-query-head K/V gradients summed over each group: the KV heads' gradients.
std::vector<float> group_sum(const std::vector<float>& part, const AttnCase& c) {
  const int G = c.H / c.HKV;
  std::vector<float> out((size_t)(c.n * c.HKV * c.D), 0.0f);
  for (int64_t t = 0; t < c.n; ++t)
    for (int h = 0; h < c.H; ++h)
      for (int e = 0; e < c.D; ++e)
        out[(size_t)((t * c.HKV + h / G) * c.D + e)] += part[(size_t)((t * c.H + h) * c.D + e)];
  return out;
}

TEST(CalibCudaAttention, BackwardMatchesCpu) {
  uint32_t seed = 200;
  for (const AttnCase& c : attention_cases()) {
    SCOPED_TRACE(c.name());
    const AttnData d = attention_data(c, seed++);
    // The CPU forward's O and lse feed both backwards, so only the backward is compared here.
    const AttentionDims dims{c.n, c.H, c.HKV, c.D};
    std::vector<float> o(d.q.size()), lse((size_t)(c.H * c.n));
    flash_attention_forward<float>(d.q.data(), d.k.data(), d.v.data(), o.data(), lse.data(), dims, c.mask, pool());
    std::vector<float> wdq(d.q.size()), wdk(d.k.size()), wdv(d.v.size());
    flash_attention_backward<float>(d.q.data(), d.k.data(), d.v.data(), o.data(), lse.data(), d.d_o.data(), wdq.data(),
                                    wdk.data(), wdv.data(), false, dims, c.mask, pool());
    Dev<bf16> dq(test::to_bf16(d.q)), dk(test::to_bf16(d.k)), dv(test::to_bf16(d.v)), ddo(test::to_bf16(d.d_o));
    const FlashArgs a = flash_args(c, dq, dk, dv);
    std::vector<float> lse_pad((size_t)(c.H * a.lse_ld), 0.0f);
    for (int h = 0; h < c.H; ++h) std::copy_n(&lse[h * c.n], c.n, &lse_pad[h * a.lse_ld]);
    std::vector<float> nan(d.q.size(), NAN);
    Dev<float> d_o(o), d_lse(lse_pad), g_dq(nan), g_dk(nan), g_dv(nan), g_delta((size_t)(c.H * a.lse_ld));
    FlashGrads g;
    g.dq = g_dq.get(), g.dk_part = g_dk.get(), g.dv_part = g_dv.get(), g.delta = g_delta.get();
    flash_backward(a, d_o.get(), d_lse.get(), ddo.get(), g, 0);
    expect_close_rms(g_dq.download(), wdq, 1e-2, 3e-2, "dQ " + c.name());
    expect_close_rms(group_sum(g_dk.download(), c), wdk, 1e-2, 3e-2, "dK " + c.name());
    expect_close_rms(group_sum(g_dv.download(), c), wdv, 1e-2, 3e-2, "dV " + c.name());
    // delta = rowsum(dO * O), fp32 on both sides
    std::vector<float> want_delta((size_t)(c.H * c.n));
    for (int64_t i = 0; i < c.n; ++i)
      for (int h = 0; h < c.H; ++h) {
        double s = 0;
        for (int e = 0; e < c.D; ++e) s += (double)d.d_o[(i * c.H + h) * c.D + e] * o[(i * c.H + h) * c.D + e];
        want_delta[h * c.n + i] = (float)s;
      }
    EXPECT_ALL_CLOSE(unpad_lse(g_delta.download(), c.H, c.n, a.lse_ld), want_delta, 1e-5, 1e-5, "delta");
  }
}

// The gated layer's use: causal backward written, Λ backward accumulated on top, with some KV
// heads skipped in each (their gradient is exactly zero: zeros written / nothing added).
TEST(CalibCudaAttention, BackwardAccumulatesAndSkipsInactiveHeads) {
  const AttnCase causal{300, 9, 3, 64, AttentionMask::causal()};
  const AttnCase lambda{300, 9, 3, 64, AttentionMask::streaming(16, 48)};
  const AttnData d = attention_data(causal, 300);
  const AttentionDims dims{causal.n, causal.H, causal.HKV, causal.D};
  std::vector<float> of(d.q.size()), os(d.q.size()), lf((size_t)(causal.H * causal.n)), ls(lf.size());
  flash_attention_forward<float>(d.q.data(), d.k.data(), d.v.data(), of.data(), lf.data(), dims, causal.mask, pool());
  flash_attention_forward<float>(d.q.data(), d.k.data(), d.v.data(), os.data(), ls.data(), dims, lambda.mask, pool());
  // KV head 0 active in both, head 1 only causal, head 2 only Λ: zero the skipped branches' dO
  // on the CPU side (that is what a gate of 0 or 1 does).
  const int G = causal.H / causal.HKV;
  std::vector<float> dof = d.d_o, dos = d.d_o;
  for (int64_t t = 0; t < causal.n; ++t)
    for (int h = 0; h < causal.H; ++h)
      for (int e = 0; e < causal.D; ++e) {
        const size_t i = (size_t)((t * causal.H + h) * causal.D + e);
        if (h / G == 2) dof[i] = 0.0f;
        if (h / G == 1) dos[i] = 0.0f;
      }
  std::vector<float> wdq(d.q.size()), wdk(d.k.size()), wdv(d.v.size());
  flash_attention_backward<float>(d.q.data(), d.k.data(), d.v.data(), of.data(), lf.data(), dof.data(), wdq.data(),
                                  wdk.data(), wdv.data(), false, dims, causal.mask, pool());
  flash_attention_backward<float>(d.q.data(), d.k.data(), d.v.data(), os.data(), ls.data(), dos.data(), wdq.data(),
                                  wdk.data(), wdv.data(), true, dims, lambda.mask, pool());

  Dev<bf16> dq(test::to_bf16(d.q)), dk(test::to_bf16(d.k)), dv(test::to_bf16(d.v));
  Dev<bf16> ddof(test::to_bf16(dof)), ddos(test::to_bf16(dos));
  FlashArgs a = flash_args(causal, dq, dk, dv);
  auto pad = [&](const std::vector<float>& l) {
    std::vector<float> p((size_t)(causal.H * a.lse_ld), 0.0f);
    for (int h = 0; h < causal.H; ++h) std::copy_n(&l[h * causal.n], causal.n, &p[h * a.lse_ld]);
    return p;
  };
  std::vector<float> nan(d.q.size(), NAN);
  Dev<float> d_of(of), d_os(os), d_lf(pad(lf)), d_ls(pad(ls)), g_dq(nan), g_dk(nan), g_dv(nan),
      g_delta((size_t)(causal.H * a.lse_ld));
  FlashGrads g;
  g.dq = g_dq.get(), g.dk_part = g_dk.get(), g.dv_part = g_dv.get(), g.delta = g_delta.get();
  a.active_kv = 0b011;  // causal: heads 0, 1 (head 2 written as zeros)
  flash_backward(a, d_of.get(), d_lf.get(), ddof.get(), g, 0);
  a.mask = lambda.mask;
  a.active_kv = 0b101;  // Λ: heads 0, 2 (head 1 left as it is)
  g.accumulate = true;
  flash_backward(a, d_os.get(), d_ls.get(), ddos.get(), g, 0);
  expect_close_rms(g_dq.download(), wdq, 1e-2, 3e-2, "dQ causal + Λ, skipped heads");
  expect_close_rms(group_sum(g_dk.download(), causal), wdk, 1e-2, 3e-2, "dK causal + Λ, skipped heads");
  expect_close_rms(group_sum(g_dv.download(), causal), wdv, 1e-2, 3e-2, "dV causal + Λ, skipped heads");
}

TEST(CalibCudaAttention, RejectsBadArguments) {
  Dev<bf16> q(64 * 4 * 64), k(64 * 2 * 64), v(64 * 2 * 64);
  Dev<float> o(64 * 4 * 64), lse(4 * 64);
  const AttnCase c{64, 4, 2, 64, AttentionMask::causal()};
  FlashArgs a = flash_args(c, q, k, v);
  a.head_dim = 96;
  EXPECT_THROW(flash_forward(a, o.get(), lse.get(), 0), Error);
  a = flash_args(c, q, k, v);
  a.lse_ld = 65;
  EXPECT_THROW(flash_forward(a, o.get(), lse.get(), 0), Error);
  a = flash_args(c, q, k, v);
  a.mask = AttentionMask::streaming(4, 0);
  EXPECT_THROW(flash_forward(a, o.get(), lse.get(), 0), Error);
  a = flash_args(c, q, k, v);
  a.n_kv_heads = 3;
  EXPECT_THROW(flash_forward(a, o.get(), lse.get(), 0), Error);
}

}  // namespace
}  // namespace duo::cuda::calib
