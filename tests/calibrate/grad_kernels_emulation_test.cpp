// The CUDA calibration's non-attention kernels (src/calibrate/cuda/*_kernels.cuh: RMSNorm
// backward, final-row norm, SwiGLU backward, fp32 -> bf16, gate mixing and its gradient
// reduction, the QKV gradient pack with the RoPE backward) run on the CPU under the device
// emulation (cuda_emulation.h), with the launch shapes of their launchers, against the CPU
// twins in src/calibrate/grad_ops.h. tests/cuda/calib_ops_test.cpp runs the same comparisons
// on the GPU. Tolerances: fp32 results to summation order (2e-5 relative), bf16 results to one
// bf16 step (2^-7 relative), the gate gradient to 1e-5 of the sum of its terms' magnitudes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "calibrate/grad_ops.h"
#include "calibrate/logit_loss.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
// The emulation first, then the kernels compiled against it (it redefines the CUDA keywords).
// clang-format off
#include "cuda_emulation.h"
#include "calibrate/cuda/elementwise_grad_kernels.cuh"
#include "calibrate/cuda/gate_mix_kernels.cuh"
#include "calibrate/cuda/logit_kl_kernels.cuh"
#include "calibrate/cuda/norm_grad_kernels.cuh"
#include "calibrate/cuda/qkv_grad_kernels.cuh"
// clang-format on

namespace duo {
namespace {

namespace ke = duo::cuda::calib::kernels_emulated;
namespace emu = duo::cuda::emu;
using cuda::bf16;

constexpr double kBf16Step = 1.0 / 128;

ThreadPool& pool() {
  static ThreadPool p(2);
  return p;
}

std::vector<float> randn(std::mt19937& rng, size_t n, float sd, float mean = 0.0f) {
  std::normal_distribution<float> nd(mean, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}
std::vector<float> to_float(const std::vector<bf16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = __bfloat162float(v[i]);
  return f;
}

// |got - want| <= rel |want| + abs everywhere; names the worst element.
void expect_all_close(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = rel * std::fabs(want[i]) + abs;
    const double err = std::isfinite(got[i]) ? std::fabs((double)got[i] - want[i]) : INFINITY;
    bad += err > tol;
    if (err - tol > worst_excess) worst_excess = err - tol, worst = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << want.size() << " off; worst at " << worst << ": got "
                     << got[worst] << ", want " << want[worst];
}

TEST(CalibCudaEmulation, RmsNormBackwardAndFinalRows) {
  std::mt19937 rng(2);
  const int dim = 100;  // not a multiple of the 256 threads: partial warps of work
  const int64_t n = 5;
  const auto x = randn(rng, (size_t)(n * dim), 3.0f);
  const auto w = randn(rng, (size_t)dim, 0.2f, 1.0f);
  const auto dy = randn(rng, (size_t)(n * dim), 1.0f);
  const auto dx0 = randn(rng, (size_t)(n * dim), 1.0f);
  emu::GuardedBuffer<float> gx(x), gw(w), gdy(dy);
  for (bool acc : {false, true}) {
    emu::GuardedBuffer<float> gdx(dx0);
    emu::launch(uint3{(unsigned)n, 1, 1}, ke::norm::kThreads, 0, [&] {
      ke::rmsnorm_backward_kernel(gx.get(), gw.get(), gdy.get(), gdx.get(), dim, 1e-5f, acc, nullptr);
    });
    std::vector<float> want = dx0;
    rmsnorm_backward<float>(x.data(), w.data(), dy.data(), want.data(), n, dim, 1e-5, acc, pool());
    expect_all_close(gdx.copy(), want, 2e-5, 1e-5, acc ? "rmsnorm backward (accumulate)" : "rmsnorm backward");
  }
  // The final norm at rows {3, 0} and its backward into those rows.
  const std::vector<int32_t> rows = {3, 0};
  emu::GuardedBuffer<int32_t> grows(rows);
  emu::GuardedBuffer<float> out(rows.size() * dim), gdx(std::vector<float>((size_t)(n * dim), 0.0f));
  emu::launch(uint3{(unsigned)rows.size(), 1, 1}, ke::norm::kThreads, 0,
              [&] { ke::rmsnorm_rows_kernel(gx.get(), grows.get(), gw.get(), out.get(), dim, 1e-5f); });
  emu::launch(uint3{(unsigned)rows.size(), 1, 1}, ke::norm::kThreads, 0, [&] {
    ke::rmsnorm_backward_kernel(gx.get(), gw.get(), gdy.get(), gdx.get(), dim, 1e-5f, true, grows.get());
  });
  std::vector<float> want_out(rows.size() * dim), want_dx((size_t)(n * dim), 0.0f);
  for (size_t r = 0; r < rows.size(); ++r) {
    rmsnorm_forward<float>(&x[rows[r] * dim], w.data(), &want_out[r * dim], 1, dim, 1e-5, pool());
    rmsnorm_backward<float>(&x[rows[r] * dim], w.data(), &dy[r * dim], &want_dx[rows[r] * dim], 1, dim, 1e-5, true,
                            pool());
  }
  expect_all_close(out.copy(), want_out, 2e-5, 1e-6, "final norm at rows");
  expect_all_close(gdx.copy(), want_dx, 2e-5, 1e-6, "final norm backward into rows");
}

TEST(CalibCudaEmulation, SwiGluBackwardAndToBf16) {
  std::mt19937 rng(4);
  const int64_t n = 3, F = 70;
  auto gu = randn(rng, (size_t)(n * 2 * F), 3.0f);
  gu[0] = -120.0f, gu[1] = 95.0f;
  const auto dh = randn(rng, (size_t)(n * F), 1.0f);
  emu::GuardedBuffer<float> ggu(gu), gdh(dh);
  emu::GuardedBuffer<bf16> gdgu((size_t)(n * 2 * F));
  // Two CTAs of 32 threads: the grid-stride loop goes round several times.
  emu::launch(uint3{2, 1, 1}, 32, 0, [&] { ke::swiglu_backward_kernel(ggu.get(), gdh.get(), gdgu.get(), n, (int)F); });
  std::vector<float> g((size_t)(n * F)), u(g.size()), dg(g.size()), du(g.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < F; ++i) g[t * F + i] = gu[t * 2 * F + i], u[t * F + i] = gu[t * 2 * F + F + i];
  swiglu_backward<float>(g.data(), u.data(), dh.data(), dg.data(), du.data(), n * F, pool());
  std::vector<float> want((size_t)(n * 2 * F));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < F; ++i) want[t * 2 * F + i] = dg[t * F + i], want[t * 2 * F + F + i] = du[t * F + i];
  expect_all_close(to_float(gdgu.copy()), want, kBf16Step, 1e-6, "swiglu backward");

  emu::GuardedBuffer<bf16> y(gu.size());
  emu::launch(uint3{3, 1, 1}, 64, 0, [&] { ke::to_bf16_kernel(ggu.get(), y.get(), (int64_t)gu.size()); });
  const auto got = to_float(y.copy());
  for (size_t i = 0; i < gu.size(); ++i) ASSERT_EQ(got[i], bf16_to_f32(f32_to_bf16(gu[i]))) << i;
}

TEST(CalibCudaEmulation, GateMixForwardBackwardAndReduction) {
  std::mt19937 rng(6);
  const int64_t n = 37;  // chunks of 16 rows: 3, the last partial
  const int H = 6, HKV = 3, D = 64, G = H / HKV;
  const size_t count = (size_t)(n * H * D);
  const auto full = randn(rng, count, 1.0f), stream = randn(rng, count, 1.0f), d_o = randn(rng, count, 0.1f);
  const std::vector<float> gates = {0.0f, 1.0f, 0.3f};
  emu::GuardedBuffer<float> gf(full), gs(stream), gdo(d_o), gg(gates);
  emu::GuardedBuffer<bf16> mix(count);
  emu::launch(uint3{4, 1, 1}, 64, 0, [&] {
    ke::gate_mix_forward_kernel(gf.get(), gs.get(), gg.get(), mix.get(), (int64_t)count, (int64_t)H * D, D, G);
  });
  std::vector<float> want(count);
  gate_mix_forward<float>(full.data(), stream.data(), gates.data(), want.data(), n, H, HKV, D, pool());
  expect_all_close(to_float(mix.copy()), want, kBf16Step, 1e-6, "gate mix forward");

  const int64_t chunks = (n + ke::mix::kChunkRows - 1) / ke::mix::kChunkRows;
  emu::GuardedBuffer<bf16> dfull(count), dstream(count);
  emu::GuardedBuffer<double> part((size_t)(chunks * HKV)), dgates(std::vector<double>{0.5, -0.25, 1.0});
  emu::launch(uint3{(unsigned)chunks, 1, 1}, ke::mix::kThreads, 0, [&] {
    ke::gate_mix_backward_kernel(gf.get(), gs.get(), gg.get(), gdo.get(), dfull.get(), dstream.get(), part.get(), n, H,
                                 HKV, D);
  });
  emu::launch(uint3{1, 1, 1}, ke::mix::kMaxKvHeads, 0,
              [&] { ke::gate_reduce_kernel(part.get(), chunks, HKV, dgates.get()); });
  std::vector<float> wf(count), ws(count);
  std::vector<double> wg = {0.5, -0.25, 1.0};
  gate_mix_backward<float>(full.data(), stream.data(), gates.data(), d_o.data(), wf.data(), ws.data(), wg.data(), n, H,
                           HKV, D, pool());
  expect_all_close(to_float(dfull.copy()), wf, kBf16Step, 1e-7, "d full");
  expect_all_close(to_float(dstream.copy()), ws, kBf16Step, 1e-7, "d stream");
  const auto got = dgates.copy();
  for (int j = 0; j < HKV; ++j) {
    double mag = 0;
    for (int64_t t = 0; t < n; ++t)
      for (int h = j * G; h < (j + 1) * G; ++h)
        for (int d = 0; d < D; ++d) {
          const size_t i = (size_t)((t * H + h) * D + d);
          mag += std::fabs((double)d_o[i] * ((double)full[i] - stream[i]));
        }
    EXPECT_NEAR(got[j], wg[j], 1e-5 * mag) << "d gate " << j;
  }
}

TEST(CalibCudaEmulation, QkvGradPack) {
  std::mt19937 rng(7);
  for (const RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox}) {
    const int64_t n = 9;
    const int H = 6, HKV = 2, D = 64, G = H / HKV;
    const int64_t Q = (int64_t)H * D, KV = (int64_t)HKV * D, QKV = Q + 2 * KV;
    const auto dq = randn(rng, (size_t)(n * Q), 1.0f), dk = randn(rng, (size_t)(n * Q), 1.0f),
               dv = randn(rng, (size_t)(n * Q), 1.0f);
    std::vector<float> inv(D / 2);
    for (int i = 0; i < D / 2; ++i) inv[i] = (float)std::pow(10000.0, -2.0 * i / D);
    emu::GuardedBuffer<float> gdq(dq), gdk(dk), gdv(dv), ginv(inv);
    emu::GuardedBuffer<bf16> out((size_t)(n * QKV));
    cuda::calib::QkvGradArgs a;
    a.dq = gdq.get(), a.dk_part = gdk.get(), a.dv_part = gdv.get(), a.inv_freq = ginv.get(), a.dqkv = out.get();
    a.n = n, a.n_heads = H, a.n_kv_heads = HKV, a.head_dim = D, a.neox = style == RopeStyle::Neox;
    emu::launch(uint3{(unsigned)n, 1, 1}, ke::qkv::kThreads, 0, [&] { ke::qkv_grad_kernel(a); });
    std::vector<float> wq = dq, wk((size_t)(n * KV), 0.0f), wv((size_t)(n * KV), 0.0f);
    for (int64_t t = 0; t < n; ++t)
      for (int j = 0; j < HKV; ++j)
        for (int g = 0; g < G; ++g)
          for (int d = 0; d < D; ++d) {
            wk[t * KV + j * D + d] += dk[t * Q + (j * G + g) * D + d];
            wv[t * KV + j * D + d] += dv[t * Q + (j * G + g) * D + d];
          }
    RopeTable<float> table;
    table.build(0, n, inv);
    rope_apply<float>(wq.data(), n, Q, H, D, table, style, true, pool());
    rope_apply<float>(wk.data(), n, KV, HKV, D, table, style, true, pool());
    std::vector<float> want((size_t)(n * QKV));
    for (int64_t t = 0; t < n; ++t) {
      std::copy_n(&wq[t * Q], Q, &want[t * QKV]);
      std::copy_n(&wk[t * KV], KV, &want[t * QKV + Q]);
      std::copy_n(&wv[t * KV], KV, &want[t * QKV + Q + KV]);
    }
    expect_all_close(to_float(out.copy()), want, kBf16Step, 1e-5,
                     style == RopeStyle::Neox ? "qkv pack, neox" : "qkv pack, interleaved");
  }
}

// The logit KL kernel (one CTA a row) against the host twin logit_kl<float>: a vocabulary that is
// not a multiple of the 256 threads, rows of very different scale, one row with z_mix == z_full
// (KL exactly 0 on both sides up to rounding), and the per-row KLs summed in row order.
TEST(CalibCudaEmulation, LogitKlMatchesHostTwin) {
  std::mt19937 rng(9);
  const int64_t R = 4, V = 1000;
  std::vector<float> z = randn(rng, (size_t)(2 * R * V), 4.0f);
  for (int64_t i = 0; i < V; ++i) z[(size_t)(R * V + i)] *= 0.05f;                 // row 0: a small change
  for (int64_t i = 0; i < V; ++i) z[(size_t)((R + 1) * V + i)] = 0.0f;            // row 1: none
  for (int64_t i = 0; i < V; ++i) z[(size_t)(2 * V + i)] *= 10.0f;                // row 2: peaked
  emu::GuardedBuffer<float> gz(z);
  emu::GuardedBuffer<double> gkl((size_t)R);
  emu::GuardedBuffer<bf16> gd((size_t)(R * V));
  emu::launch(uint3{(unsigned)R, 1, 1}, ke::kl::kThreads, 0,
              [&] { ke::logit_kl_kernel(gz.get(), R, V, 1.0 / (double)R, gkl.get(), gd.get()); });
  std::vector<float> zf(z.begin(), z.begin() + R * V), zm((size_t)(R * V)), d((size_t)(R * V));
  for (size_t i = 0; i < zm.size(); ++i) zm[i] = zf[i] + z[(size_t)(R * V) + i];
  const double want = logit_kl<float>(zf.data(), zm.data(), R, V, d.data(), nullptr);
  const auto kl = gkl.copy();
  double got = 0;
  for (int64_t r = 0; r < R; ++r) {
    std::vector<float> dr((size_t)V);
    const double want_r = logit_kl<float>(zf.data() + r * V, zm.data() + r * V, 1, V, dr.data(), nullptr);
    EXPECT_NEAR(kl[(size_t)r], want_r, 1e-12 + 1e-9 * want_r) << "row " << r;
    got += kl[(size_t)r];
  }
  EXPECT_NEAR(kl[1], 0.0, 1e-12);
  EXPECT_GT(want, 1e-3);
  EXPECT_NEAR(got / (double)R, want, 1e-9 * want);
  expect_all_close(to_float(gd.copy()), d, kBf16Step, 1e-12, "d KL / d z_mix");
}

}  // namespace
}  // namespace duo
