// Gate mixing of the two attention outputs (one gate per KV head) and its backward, with the
// gate gradient reduced deterministically: a CTA takes a fixed chunk of rows and writes one
// partial sum per KV head (its warps' sums added in warp order), then one thread a KV head adds
// the chunks' partials in chunk order in double. No atomics: the same inputs give the same bits.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "backend/cuda/reduce.cuh"
#include "calibrate/cuda/grad_kernels.h"

namespace duo::cuda::calib {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kChunkRows = 16;  // rows a CTA of the backward (one partial sum a KV head)
constexpr int kMaxKvHeads = 64;

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

__global__ void __launch_bounds__(kThreads) gate_mix_backward_kernel(const float* full, const float* streaming,
                                                                     const float* gates, const float* d_o,
                                                                     bf16* d_full, bf16* d_stream, double* partials,
                                                                     int64_t n, int n_heads, int n_kv_heads,
                                                                     int head_dim) {
  __shared__ double acc[kWarps][kMaxKvHeads];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = lane; j < n_kv_heads; j += 32) acc[warp][j] = 0.0;
  __syncwarp();
  const int group = n_heads / n_kv_heads;
  const int64_t width = (int64_t)n_heads * head_dim;
  const int64_t t0 = (int64_t)blockIdx.x * kChunkRows;
  const int rows = (int)min(kChunkRows, n - t0);
  // Items (row, query head) go to the warps round robin, each warp in a fixed order.
  for (int it = warp; it < rows * n_heads; it += kWarps) {
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
    s = detail::warp_sum(s);
    if (lane == 0) acc[warp][h / group] += (double)s;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n_kv_heads; j += kThreads) {
    double tot = 0.0;
    for (int w = 0; w < kWarps; ++w) tot += acc[w][j];
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

void check_heads(int n_heads, int n_kv_heads, int head_dim, const char* op) {
  if (n_kv_heads <= 0 || n_kv_heads > kMaxKvHeads || n_heads % n_kv_heads != 0 || head_dim <= 0)
    throw std::invalid_argument(std::string(op) + ": needs 1..64 KV heads dividing the query heads");
}

}  // namespace

int64_t gate_partials_count(int64_t n, int n_kv_heads) { return (n + kChunkRows - 1) / kChunkRows * n_kv_heads; }

void gate_mix_forward(const float* full, const float* streaming, const float* gates, bf16* o, int64_t n, int n_heads,
                      int n_kv_heads, int head_dim, cudaStream_t stream) {
  if (n <= 0) return;
  check_heads(n_heads, n_kv_heads, head_dim, "gate_mix_forward");
  const int64_t width = (int64_t)n_heads * head_dim, count = n * width;
  const unsigned grid = (unsigned)std::max<int64_t>(1, std::min<int64_t>((count + kThreads - 1) / kThreads, 1 << 16));
  gate_mix_forward_kernel<<<grid, kThreads, 0, stream>>>(full, streaming, gates, o, count, width, head_dim,
                                                         n_heads / n_kv_heads);
  check_launch("gate_mix_forward");
}

void gate_mix_backward(const float* full, const float* streaming, const float* gates, const float* d_o, bf16* d_full,
                       bf16* d_stream, double* partials, double* d_gates, int64_t n, int n_heads, int n_kv_heads,
                       int head_dim, cudaStream_t stream) {
  if (n <= 0) return;
  check_heads(n_heads, n_kv_heads, head_dim, "gate_mix_backward");
  const int64_t chunks = (n + kChunkRows - 1) / kChunkRows;
  if (chunks > 0x7fffffff) throw std::invalid_argument("gate_mix_backward: too many rows");
  gate_mix_backward_kernel<<<(unsigned)chunks, kThreads, 0, stream>>>(full, streaming, gates, d_o, d_full, d_stream,
                                                                      partials, n, n_heads, n_kv_heads, head_dim);
  check_launch("gate_mix_backward");
  gate_reduce_kernel<<<1, kMaxKvHeads, 0, stream>>>(partials, chunks, n_kv_heads, d_gates);
  check_launch("gate_mix_backward (gate reduction)");
}

}  // namespace duo::cuda::calib
