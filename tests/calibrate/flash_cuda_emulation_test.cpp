// The CUDA calibration's attention kernels (src/calibrate/cuda/flash_*_kernel*.cuh) run on the CPU
// under an emulation of the device primitives they use (cuda_emulation.h: fibers for threads,
// ldmatrix / mma.sync / shuffles / cp.async with their PTX semantics, shared memory poisoned with
// NaN, global buffers followed by an inaccessible page), against the CPU flash attention of
// src/calibrate. This checks the kernels' index, fragment, masking and pipelining logic without
// a GPU; the GPU run of tests/cuda/calib_ops_test.cpp checks the same on the hardware.
// Tolerances are those of the GPU test (the emulated MMA sums bf16 products in fp32 as the GPU
// does, in another order): O rel RMS 5e-3, max |d| 1e-2 of max |O|; gradients rel RMS 1e-2,
// max |d| 3e-2 of the largest; lse 1e-4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "calibrate/flash_attention.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
// The emulation first, then the kernels compiled against it (it redefines the CUDA keywords).
// clang-format off
#include "cuda_emulation.h"
#include "calibrate/cuda/flash_backward_kernels.cuh"
#include "calibrate/cuda/flash_forward_kernel.cuh"
// clang-format on

namespace duo {
namespace {

namespace fe = duo::cuda::calib::kernels_emulated;
namespace emu = duo::cuda::emu;
using cuda::bf16;

struct Case {
  int64_t n;
  int H, HKV, D;
  AttentionMask mask;
  std::string name() const {
    const std::string m = mask.kind == AttentionMask::Kind::Causal
                              ? "causal"
                              : "lambda(" + std::to_string(mask.sink) + "," + std::to_string(mask.recent) + ")";
    return "n " + std::to_string(n) + " H " + std::to_string(H) + "/" + std::to_string(HKV) + " d " +
           std::to_string(D) + " " + m;
  }
};

// Single token; blocks of 128 queries and 64 keys, partial last blocks; sinks and windows
// smaller and larger than a tile; only the diagonal; GQA groups of 1, 2, 3.
const Case kCases[] = {
    {1, 2, 1, 64, AttentionMask::causal()},        {130, 4, 2, 64, AttentionMask::causal()},
    {130, 3, 3, 64, AttentionMask::streaming(4, 16)}, {200, 6, 2, 128, AttentionMask::streaming(100, 70)},
    {150, 2, 1, 128, AttentionMask::causal()},     {70, 2, 2, 64, AttentionMask::streaming(0, 1)},
};

ThreadPool& pool() {
  static ThreadPool p(2);
  return p;
}

float rb(float x) { return bf16_to_f32(f32_to_bf16(x)); }

std::vector<float> randn(std::mt19937& rng, size_t n, float sd) {
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = rb(nd(rng));
  return v;
}
std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = __float2bfloat16(v[i]);
  return b;
}

// Relative RMS error and max |d| relative to max |want|, each with an absolute floor of 1e-4 (a
// gradient that is exactly 0, e.g. dQ when every row sees one key, comes out at ~1e-6).
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel_rms, double rel_max,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  double num = 0, den = 0, mx = 0, scale = 0;
  size_t worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::isfinite(got[i]) ? (double)got[i] - want[i] : INFINITY;
    num += d * d, den += (double)want[i] * want[i];
    if (std::fabs(d) > mx || !std::isfinite(d)) mx = std::fabs(d), worst = i;
    scale = std::max(scale, (double)std::fabs(want[i]));
  }
  const double n = (double)std::max<size_t>(want.size(), 1);
  const double rel = std::sqrt(num / std::max(den, n * 1e-8 / (rel_rms * rel_rms)));
  std::printf("  %-60s rel RMS %.2e, max |d| %.2e (max |want| %.3g)\n", what.c_str(), rel, mx, scale);
  EXPECT_LE(rel, rel_rms) << what;
  EXPECT_LE(mx, rel_max * scale + 1e-4) << what << ": worst at " << worst << ": got " << got[worst] << ", want "
                                        << want[worst];
}

struct Data {
  std::vector<float> q, k, v, d_o;
};
Data make_data(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  return {randn(rng, (size_t)(c.n * c.H * c.D), 1.5f), randn(rng, (size_t)(c.n * c.HKV * c.D), 1.5f),
          randn(rng, (size_t)(c.n * c.HKV * c.D), 1.0f), randn(rng, (size_t)(c.n * c.H * c.D), 1.0f)};
}

int64_t lse_ld(int64_t n) { return (n + 63) / 64 * 64; }

// Dispatch on the mask type and head_dim, as the launchers do.
template <class F>
void with_mask(const Case& c, F&& f) {
  if (c.mask.kind == AttentionMask::Kind::Causal)
    f(CausalMask<int64_t>{});
  else
    f(StreamingMask<int64_t>{c.mask.window()});
}

template <int D, class Mask>
void run_forward(const fe::FwdParams& p, const Mask& mask) {
  const uint3 grid{(unsigned)p.n_heads, (unsigned)((p.n + fe::fwd::kBM - 1) / fe::fwd::kBM), 1};
  emu::launch(grid, fe::fwd::kThreads, fe::fwd_smem_bytes<D>(), [&] { fe::flash_fwd_kernel<D, Mask>(p, mask); });
}

template <int D, class Mask>
void run_backward(const fe::BwdParams& p, const float* o, float* delta, const Mask& mask) {
  const int64_t items = p.n * p.n_heads;  // delta: one warp a (row, head), 8 warps a CTA
  emu::launch(uint3{(unsigned)((items + 7) / 8), 1, 1}, 256, 0,
              [&] { fe::delta_kernel<>(p.d_o, o, delta, p.n, p.n_heads, D, p.lse_ld); });
  const uint3 grid{(unsigned)p.n_heads, (unsigned)((p.n + fe::bwd::kB - 1) / fe::bwd::kB), 1};
  emu::launch(grid, fe::bwd::kThreads, fe::bwd_smem_bytes<D>(), [&] { fe::flash_bwd_dkdv_kernel<D, Mask>(p, mask); });
  emu::launch(grid, fe::bwd::kThreads, fe::bwd_smem_bytes<D>(), [&] { fe::flash_bwd_dq_kernel<D, Mask>(p, mask); });
}

// [h][ld] -> [h][n] and back.
std::vector<float> unpad(const std::vector<float>& x, int H, int64_t n, int64_t ld) {
  std::vector<float> out((size_t)(H * n));
  for (int h = 0; h < H; ++h) std::copy_n(&x[h * ld], n, &out[h * n]);
  return out;
}
std::vector<float> pad(const std::vector<float>& x, int H, int64_t n, int64_t ld) {
  std::vector<float> out((size_t)(H * ld), 0.0f);
  for (int h = 0; h < H; ++h) std::copy_n(&x[h * n], n, &out[h * ld]);
  return out;
}

TEST(CalibCudaEmulation, AttentionForwardMatchesCpu) {
  uint32_t seed = 1;
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name());
    const Data d = make_data(c, seed++);
    emu::GuardedBuffer<bf16> q(to_bf16(d.q)), k(to_bf16(d.k)), v(to_bf16(d.v));
    emu::GuardedBuffer<float> o(d.q.size()), lse((size_t)(c.H * lse_ld(c.n)));
    const fe::FwdParams p{q.get(), k.get(), v.get(), o.get(), lse.get(), c.n, lse_ld(c.n), c.H, c.HKV};
    with_mask(c, [&](auto mask) {
      if (c.D == 64)
        run_forward<64>(p, mask);
      else
        run_forward<128>(p, mask);
    });
    std::vector<float> want_o(d.q.size()), want_lse((size_t)(c.H * c.n));
    flash_attention_forward<float>(d.q.data(), d.k.data(), d.v.data(), want_o.data(), want_lse.data(),
                                   {c.n, c.H, c.HKV, c.D}, c.mask, pool());
    expect_close(o.copy(), want_o, 5e-3, 1e-2, "emulated forward O " + c.name());
    const std::vector<float> got_lse = unpad(lse.copy(), c.H, c.n, lse_ld(c.n));
    for (size_t i = 0; i < got_lse.size(); ++i)
      ASSERT_NEAR(got_lse[i], want_lse[i], 1e-4 + 1e-5 * std::fabs(want_lse[i])) << "lse " << i;
  }
}

// Sums per-query-head K/V gradients over each group.
std::vector<float> group_sum(const std::vector<float>& part, const Case& c) {
  const int G = c.H / c.HKV;
  std::vector<float> out((size_t)(c.n * c.HKV * c.D), 0.0f);
  for (int64_t t = 0; t < c.n; ++t)
    for (int h = 0; h < c.H; ++h)
      for (int e = 0; e < c.D; ++e)
        out[(size_t)((t * c.HKV + h / G) * c.D + e)] += part[(size_t)((t * c.H + h) * c.D + e)];
  return out;
}

TEST(CalibCudaEmulation, AttentionBackwardMatchesCpu) {
  uint32_t seed = 50;
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name());
    const Data d = make_data(c, seed++);
    const AttentionDims dims{c.n, c.H, c.HKV, c.D};
    std::vector<float> o(d.q.size()), lse((size_t)(c.H * c.n));
    flash_attention_forward<float>(d.q.data(), d.k.data(), d.v.data(), o.data(), lse.data(), dims, c.mask, pool());
    std::vector<float> wdq(d.q.size()), wdk(d.k.size()), wdv(d.v.size());
    flash_attention_backward<float>(d.q.data(), d.k.data(), d.v.data(), o.data(), lse.data(), d.d_o.data(), wdq.data(),
                                    wdk.data(), wdv.data(), false, dims, c.mask, pool());
    const int64_t ld = lse_ld(c.n);
    emu::GuardedBuffer<bf16> q(to_bf16(d.q)), k(to_bf16(d.k)), v(to_bf16(d.v)), d_o(to_bf16(d.d_o));
    emu::GuardedBuffer<float> go(o), glse(pad(lse, c.H, c.n, ld)), delta((size_t)(c.H * ld)), dq(d.q.size()),
        dk(d.q.size()), dv(d.q.size());
    const fe::BwdParams p{
        q.get(),  k.get(), v.get(), d_o.get(), glse.get(), delta.get(), dq.get(), dk.get(),
        dv.get(), c.n,     ld,      c.H,       c.HKV,      ~0ull,       false,    1.0f / std::sqrt((float)c.D)};
    with_mask(c, [&](auto mask) {
      if (c.D == 64)
        run_backward<64>(p, go.get(), delta.get(), mask);
      else
        run_backward<128>(p, go.get(), delta.get(), mask);
    });
    expect_close(dq.copy(), wdq, 1e-2, 3e-2, "emulated dQ " + c.name());
    expect_close(group_sum(dk.copy(), c), wdk, 1e-2, 3e-2, "emulated dK " + c.name());
    expect_close(group_sum(dv.copy(), c), wdv, 1e-2, 3e-2, "emulated dV " + c.name());
  }
}

// Causal written with KV head 1 skipped (zeros), then Λ accumulated with KV head 0 skipped
// (left as it is): the CPU gets those heads' dO zeroed in the matching branch.
TEST(CalibCudaEmulation, AttentionBackwardAccumulatesAndSkipsHeads) {
  const Case causal{130, 4, 2, 64, AttentionMask::causal()}, lambda{130, 4, 2, 64, AttentionMask::streaming(8, 24)};
  const Data d = make_data(causal, 99);
  const AttentionDims dims{causal.n, causal.H, causal.HKV, causal.D};
  std::vector<float> of(d.q.size()), os(d.q.size()), lf((size_t)(causal.H * causal.n)), ls(lf.size());
  flash_attention_forward<float>(d.q.data(), d.k.data(), d.v.data(), of.data(), lf.data(), dims, causal.mask, pool());
  flash_attention_forward<float>(d.q.data(), d.k.data(), d.v.data(), os.data(), ls.data(), dims, lambda.mask, pool());
  std::vector<float> dof = d.d_o, dos = d.d_o;
  const int G = causal.H / causal.HKV;
  for (int64_t t = 0; t < causal.n; ++t)
    for (int h = 0; h < causal.H; ++h)
      for (int e = 0; e < causal.D; ++e) {
        const size_t i = (size_t)((t * causal.H + h) * causal.D + e);
        if (h / G == 1) dof[i] = 0.0f;
        if (h / G == 0) dos[i] = 0.0f;
      }
  std::vector<float> wdq(d.q.size()), wdk(d.k.size()), wdv(d.v.size());
  flash_attention_backward<float>(d.q.data(), d.k.data(), d.v.data(), of.data(), lf.data(), dof.data(), wdq.data(),
                                  wdk.data(), wdv.data(), false, dims, causal.mask, pool());
  flash_attention_backward<float>(d.q.data(), d.k.data(), d.v.data(), os.data(), ls.data(), dos.data(), wdq.data(),
                                  wdk.data(), wdv.data(), true, dims, lambda.mask, pool());
  const int64_t ld = lse_ld(causal.n);
  emu::GuardedBuffer<bf16> q(to_bf16(d.q)), k(to_bf16(d.k)), v(to_bf16(d.v)), gdof(to_bf16(dof)), gdos(to_bf16(dos));
  emu::GuardedBuffer<float> gof(of), gos(os), glf(pad(lf, causal.H, causal.n, ld)),
      gls(pad(ls, causal.H, causal.n, ld)), delta((size_t)(causal.H * ld)), dq(d.q.size()), dk(d.q.size()),
      dv(d.q.size());
  const float scale = 1.0f / std::sqrt(64.0f);
  const fe::BwdParams pf{q.get(),  k.get(),  v.get(), gdof.get(), glf.get(),  delta.get(), dq.get(), dk.get(),
                         dv.get(), causal.n, ld,      causal.H,   causal.HKV, 0b01,        false,    scale};
  run_backward<64>(pf, gof.get(), delta.get(), CausalMask<int64_t>{});
  const fe::BwdParams ps{q.get(),  k.get(),  v.get(), gdos.get(), gls.get(),  delta.get(), dq.get(), dk.get(),
                         dv.get(), causal.n, ld,      causal.H,   causal.HKV, 0b10,        true,     scale};
  run_backward<64>(ps, gos.get(), delta.get(), StreamingMask<int64_t>{{8, 24}});
  expect_close(dq.copy(), wdq, 1e-2, 3e-2, "emulated dQ causal + lambda, skipped heads");
  expect_close(group_sum(dk.copy(), causal), wdk, 1e-2, 3e-2, "emulated dK causal + lambda, skipped heads");
  expect_close(group_sum(dv.copy(), causal), wdv, 1e-2, 3e-2, "emulated dV causal + lambda, skipped heads");
}

}  // namespace
}  // namespace duo
