// Device code of logit_kl.cu (the `--loss kl` softmaxes, KL and its gradient on the GPU), built for
// the GPU and for the CPU emulation test (device_env.cuh). One CTA a row; the row's reductions go
// through shared memory in a fixed tree order (no shuffles, no atomics), so a row's KL has the same
// bits on every run. Sums and exponentials in double, as the host twin (calibrate/logit_loss.h).
#pragma once
#include <cmath>
#include <cstdint>

#include "calibrate/cuda/device_env.cuh"

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

namespace kl {
constexpr int kThreads = 256;  // a power of two (the tree reductions halve it)
}  // namespace kl

// The CTA's maximum / sum of one value a thread, returned to every thread. red: kThreads slots.
__device__ __forceinline__ float cta_max(float v, float* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kl::kThreads / 2; s > 0; s /= 2) {
    if ((int)threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();  // red is written again by the next reduction
  return r;
}
__device__ __forceinline__ double cta_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kl::kThreads / 2; s > 0; s /= 2) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const double r = red[0];
  __syncthreads();
  return r;
}

// Row r (blockIdx.x) of z_full = z[r] and z_mix = z[r] + z[rows + r] (float sum, as the host adds
// them): kl_rows[r] = KL(softmax(z_full) || softmax(z_mix)), and
// d_mix[r] = bf16((softmax(z_mix) - softmax(z_full)) * inv_rows).
// KL = sum p (z_full - z_mix) - lse_full + lse_mix, with p = exp(z_full - max) / sum.
__global__ void __launch_bounds__(kl::kThreads)
    logit_kl_kernel(const float* z, int64_t rows, int64_t vocab, double inv_rows, double* kl_rows, bf16* d_mix) {
  __shared__ float red_f[kl::kThreads];
  __shared__ double red_d[kl::kThreads];
  const int64_t r = blockIdx.x;
  const float* zf = z + r * vocab;
  const float* zd = z + (rows + r) * vocab;
  float mf = -INFINITY, mm = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += kl::kThreads) {
    mf = fmaxf(mf, zf[i]);
    mm = fmaxf(mm, zf[i] + zd[i]);
  }
  mf = cta_max(mf, red_f);
  mm = cta_max(mm, red_f);
  double sf = 0.0, sm = 0.0, cross = 0.0;
  for (int64_t i = threadIdx.x; i < vocab; i += kl::kThreads) {
    const float a = zf[i], b = a + zd[i];
    const double e = exp((double)a - (double)mf);
    sf += e;
    sm += exp((double)b - (double)mm);
    cross += e * ((double)a - (double)b);
  }
  sf = cta_sum(sf, red_d);
  sm = cta_sum(sm, red_d);
  cross = cta_sum(cross, red_d);
  const double lf = (double)mf + log(sf), lm = (double)mm + log(sm);
  if (threadIdx.x == 0) kl_rows[r] = cross / sf - lf + lm;
  bf16* d = d_mix + r * vocab;
  for (int64_t i = threadIdx.x; i < vocab; i += kl::kThreads) {
    const float a = zf[i], b = a + zd[i];
    const double p = exp((double)a - lf), q = exp((double)b - lm);
    d[i] = __float2bfloat16((float)((q - p) * inv_rows));
  }
}

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
