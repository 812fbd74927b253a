// Gate mixing of the two attention outputs (one gate per KV head) and its backward, with the
// gate gradient reduced deterministically: a CTA takes a fixed chunk of rows and writes one
// partial sum per KV head (its warps' sums added in warp order), then one thread a KV head adds
// the chunks' partials in chunk order in double. No atomics: the same inputs give the same bits.
#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "calibrate/cuda/gate_mix_kernels.cuh"
#include "calibrate/cuda/grad_kernels.h"

namespace duo::cuda::calib {
namespace {

using namespace DUO_CALIB_KERNELS;

void check_heads(int n_heads, int n_kv_heads, int head_dim, const char* op) {
  if (n_kv_heads <= 0 || n_kv_heads > mix::kMaxKvHeads || n_heads % n_kv_heads != 0 || head_dim <= 0)
    fail_arg(std::string(op) + ": needs 1..64 KV heads dividing the query heads");
}

}  // namespace

int64_t gate_partials_count(int64_t n, int n_kv_heads) { return (n + mix::kChunkRows - 1) / mix::kChunkRows * n_kv_heads; }

void gate_mix_forward(const float* full, const float* streaming, const float* gates, bf16* o, int64_t n, int n_heads,
                      int n_kv_heads, int head_dim, cudaStream_t stream) {
  if (n <= 0) return;
  check_heads(n_heads, n_kv_heads, head_dim, "gate_mix_forward");
  const int64_t width = (int64_t)n_heads * head_dim, count = n * width;
  const unsigned grid = (unsigned)std::max<int64_t>(1, std::min<int64_t>((count + mix::kThreads - 1) / mix::kThreads, 1 << 16));
  DUO_LAUNCH(gate_mix_forward_kernel, grid, mix::kThreads, 0, stream, full, streaming, gates, o, count, width, head_dim,
             n_heads / n_kv_heads);
  check_launch("gate_mix_forward");
}

void gate_mix_backward(const float* full, const float* streaming, const float* gates, const float* d_o, bf16* d_full,
                       bf16* d_stream, double* partials, double* d_gates, int64_t n, int n_heads, int n_kv_heads,
                       int head_dim, cudaStream_t stream) {
  if (n <= 0) return;
  check_heads(n_heads, n_kv_heads, head_dim, "gate_mix_backward");
  const int64_t chunks = (n + mix::kChunkRows - 1) / mix::kChunkRows;
  if (chunks > 0x7fffffff) fail_arg("gate_mix_backward: too many rows");
  DUO_LAUNCH(gate_mix_backward_kernel, (unsigned)chunks, mix::kThreads, 0, stream, full, streaming, gates, d_o, d_full,
             d_stream, partials, n, n_heads, n_kv_heads, head_dim);
  check_launch("gate_mix_backward");
  DUO_LAUNCH(gate_reduce_kernel, 1, mix::kMaxKvHeads, 0, stream, partials, chunks, n_kv_heads, d_gates);
  check_launch("gate_mix_backward (gate reduction)");
}

}  // namespace duo::cuda::calib
