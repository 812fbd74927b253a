// Model weights resident on the GPU: bf16 matrices (GEMM operands), fp32 norms and biases
// (the per-head q/k norm weights of qwen3 and gemma3, gemma3's sandwich norms among them).
// The projections that read the same input are fused into one matrix so a layer runs three
// GEMMs on its input side: Wq|Wk|Wv ([Q + 2 KV] rows) and Wgate|Wup ([2 F] rows).
// Weights come either from a loaded Model (GGUF rows dequantized on the host a chunk at a
// time with the reference dequantizers, rounded to bf16, uploaded; never the whole model as
// f32 on the host) or from a seed, generated on the GPU for full-size synthetic shapes.
//
// Why bf16 and not f16 operands: f16 has 3 more mantissa bits but overflows at 65504, and real
// models carry activation outliers (SwiGLU outputs in the thousands) into the GEMMs; bf16 has
// fp32's range. bench/bf16_emulation.cpp measures what bf16 costs on the test models (relative
// logit error ~1e-2, see docs/cuda-backend.md "Numerics and test tolerances"), which the tests accept; no f16 mode for now.
//
// WeightFormat::Int8 (--gpu-weights int8): the four projections of every layer and an untied LM
// head are stored int8 weight-only, per output row: scale = max |W[r]| / 127, q = round(W / scale)
// (from the GGUF rows dequantized to f32 on the host; synthetic weights are drawn as int8 on the
// GPU). Half the bytes of bf16: the decode step reads ~half as much. The embedding table (only
// rows are read) and a tied LM head stay bf16. Every int8 matrix's width must be a multiple of 16.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/gemm.h"
#include "engine/backend.h"
#include "model/config.h"

namespace duo {
class Model;
}

namespace duo::cuda {

struct GpuLayerWeights {
  const float* attn_norm = nullptr;  // [E]
  const float* ffn_norm = nullptr;   // [E]
  GpuMatrix wqkv;                    // [(H + 2 HKV) D][E]
  const float* bqkv = nullptr;       // [(H + 2 HKV) D], or nullptr without QKV bias
  const float* q_norm = nullptr;     // [D] per-head RMS norm of Q (qwen3), or nullptr
  const float* k_norm = nullptr;     // [D] per-head RMS norm of K (qwen3), or nullptr
  // gemma3's sandwich norms ([E] each, or nullptr): of the attention output and of the
  // feed-forward output, before each is added to the residual stream.
  const float* post_attn_norm = nullptr;
  const float* post_ffn_norm = nullptr;
  GpuMatrix wo;                      // [E][H D], input columns in the KV cache's head order
  GpuMatrix wgu;                     // [2F][E]: gate rows, then up rows
  GpuMatrix wdown;                   // [E][F]
};

class GpuWeights {
 public:
  // Uploads a model's weights (after Model::reorder_heads, if any: the reordered Wq/Wk/Wv
  // rows are taken as they are and Wo's input columns are permuted to match, so the GPU
  // forward needs no reordering step).
  static std::unique_ptr<GpuWeights> upload(const Model& m, WeightFormat format = WeightFormat::Bf16);
  // Seeded uniform weights of variance 1/fan_in, norms ~1, biases ~0.1: generated on the GPU.
  static std::unique_ptr<GpuWeights> synthetic(const ModelConfig& cfg, uint64_t seed,
                                               WeightFormat format = WeightFormat::Bf16);

  const ModelConfig& config() const { return cfg_; }
  WeightFormat format() const { return format_; }
  const bf16* tok_embd() const { return tok_embd_; }  // [vocab][E]
  const GpuMatrix& output() const { return output_; }  // [vocab][E] (the bf16 tok_embd when tied)
  const float* output_norm() const { return output_norm_; }
  const float* inv_freq() const { return inv_freq_; }  // [D / 2] RoPE inverse frequencies
  // Those layer l's RoPE takes: gemma3's local layers have their own base (Model::rope_inv_freq_local).
  const float* inv_freq(int l) const { return cfg_.is_local(l) ? inv_freq_local_ : inv_freq_; }
  const GpuLayerWeights& layer(int l) const { return layers_[l]; }
  size_t bytes() const { return arena_.bytes(); }

 private:
  GpuWeights() = default;
  void allocate(const ModelConfig& cfg, WeightFormat format);

  ModelConfig cfg_;
  WeightFormat format_ = WeightFormat::Bf16;
  DeviceBuffer arena_;
  const bf16* tok_embd_ = nullptr;
  GpuMatrix output_;
  const float* output_norm_ = nullptr;
  const float* inv_freq_ = nullptr;
  const float* inv_freq_local_ = nullptr;  // [D / 2] when the model has local layers
  std::vector<GpuLayerWeights> layers_;
};

}  // namespace duo::cuda
