// The llama-family forward on the GPU, top to bottom in gpu_model.cpp (the twin of
// Model::forward_chunk): fp32 residual stream, bf16 GEMM operands on cuBLAS, the attention
// kernels of attention.cuh over a GpuKvCache. Everything of a forward is queued on one
// stream; the host waits only where it needs a result (logits or a picked token).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/device_memory.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gpu_kv_cache.h"
#include "backend/cuda/gpu_weights.h"
#include "sample/sampler.h"

namespace duo::cuda {

class GpuModel {
 public:
  explicit GpuModel(std::unique_ptr<GpuWeights> weights);
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  const ModelConfig& config() const { return w_->config(); }
  const GpuWeights& weights() const { return *w_; }
  cudaStream_t stream() const { return stream_; }

  std::unique_ptr<GpuKvCache> new_cache(const HeadPlan& plan, int64_t max_tokens) const;

  // Runs n tokens (host ids) at positions kv.n_past() ... in chunks of at most `chunk`.
  // logits (host): n_vocab floats of the last token, or n x n_vocab with all_logits.
  void forward(GpuKvCache& kv, const int32_t* tokens, int64_t n, int64_t chunk, float* logits, bool all_logits);
  // Runs n tokens and picks the next one on the GPU from the last token's logits (argmax at
  // temperature <= 0, else sample_token with the uniform number u); copies back one int32.
  int32_t forward_pick(GpuKvCache& kv, const int32_t* tokens, int64_t n, int64_t chunk, const SamplerConfig& s,
                       double u);

  // Benchmarks: time the attention kernels of every layer with CUDA events (prefill_attention
  // or decode_attention, not kv_append), accumulated until reset.
  void set_attention_timing(bool on) { timing_ = on; }
  double attention_ms() const { return attn_ms_; }
  void reset_attention_timing() { attn_ms_ = 0.0; }
  // Frees the activation buffers (they grow to the largest chunk seen).
  void release_scratch();

 private:
  // One chunk of n tokens whose ids are at tokens_d (device); afterwards the logits of the
  // last `logits_rows` tokens (0, 1 or n) are in logits_.
  void run_chunk(GpuKvCache& kv, const int32_t* tokens_d, int n, int logits_rows);
  const int32_t* upload_tokens(const GpuKvCache& kv, const int32_t* tokens, int64_t n);

  std::unique_ptr<GpuWeights> w_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  // Activations of a chunk (grow-only).
  ScratchBuffer tokens_{"token ids"}, x_{"the residual stream"}, xn_{"normalised activations"},
      qkv_{"QKV projections"}, q_{"queries"}, k_{"keys"}, v_{"values"}, att_{"attention output"},
      o_{"projection output"}, gu_{"gate/up projections"}, h_{"SwiGLU output"}, logits_{"logits"},
      decode_ws_{"the split-KV decode workspace"}, picked_{"the picked token"};
  bool timing_ = false;
  double attn_ms_ = 0.0;
  std::vector<cudaEvent_t> events_;  // [2 * layer]: before and after the layer's attention
};

}  // namespace duo::cuda
