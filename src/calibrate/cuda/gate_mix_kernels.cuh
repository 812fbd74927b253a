// Device code of gate_mix.cu (gate mixing forward / backward, the gate-gradient reduction), built
// for the GPU and for the CPU emulation test (device_env.cuh).
#pragma once
#include <cstdint>

#include "calibrate/cuda/device_env.cuh"

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

namespace mix {
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kChunkRows = 16;  // rows a CTA of the backward (one partial sum a KV head)
constexpr int kMaxKvHeads = 64;
}  // namespace mix

__global__ void gate_mix_forward_kernel(const float* full, const float* streaming, const float* gates, bf16* o,
                                        int64_t count, int64_t width, int head_dim, int group) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
    if (!gates) {
      o[i] = __float2bfloat16(full[i]);
      continue;
    }
    const float a = gates[(int)((i % width) / head_dim) / group];
    o[i] = __float2bfloat16(a * full[i] + (1.0f - a) * streaming[i]);
  }
}

__global__ void __launch_bounds__(mix::kThreads)
    gate_mix_backward_kernel(const float* full, const float* streaming, const float* gates, const float* d_o,
                             bf16* d_full, bf16* d_stream, double* partials, int64_t n, int n_heads, int n_kv_heads,
                             int head_dim) {
  __shared__ double acc[mix::kWarps][mix::kMaxKvHeads];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = lane; j < n_kv_heads; j += 32) acc[warp][j] = 0.0;
  __syncwarp();
  const int group = n_heads / n_kv_heads;
  const int64_t width = (int64_t)n_heads * head_dim;
  const int64_t t0 = (int64_t)blockIdx.x * mix::kChunkRows;
  const int rows = (int)min(mix::kChunkRows, n - t0);
  // Items (row, query head) go to the warps round robin, each warp in a fixed order.
  for (int it = warp; it < rows * n_heads; it += mix::kWarps) {
    const int64_t t = t0 + it / n_heads;
    const int h = it % n_heads;
    const float a = gates[h / group];
    const int64_t off = t * width + (int64_t)h * head_dim;
    float s = 0.0f;
    for (int d = lane; d < head_dim; d += 32) {
      const float g = d_o[off + d];
      s += g * (full[off + d] - streaming[off + d]);
      d_full[off + d] = __float2bfloat16(a * g);
      d_stream[off + d] = __float2bfloat16((1.0f - a) * g);
    }
    s = dt::warp_sum(s);
    if (lane == 0) acc[warp][h / group] += (double)s;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n_kv_heads; j += mix::kThreads) {
    double tot = 0.0;
    for (int w = 0; w < mix::kWarps; ++w) tot += acc[w][j];
    partials[(int64_t)blockIdx.x * n_kv_heads + j] = tot;
  }
}

__global__ void gate_reduce_kernel(const double* partials, int64_t chunks, int n_kv_heads, double* d_gates) {
  const int j = threadIdx.x;
  if (j >= n_kv_heads) return;
  double tot = 0.0;
  for (int64_t c = 0; c < chunks; ++c) tot += partials[c * n_kv_heads + j];
  d_gates[j] += tot;
}

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
