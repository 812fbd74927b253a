// The DuoAttention calibration model on one GPU: the CUDA twin of calibrate/gated_model.h,
// op for op and with the same memory schedule (per-layer activation checkpointing: the gated
// forward keeps each layer's input; the backward walks the layers from the last, re-runs that
// layer's forward to rebuild its tape, then back-propagates through it).
//
// Per layer (gated_model.h's op list, with where each op runs):
//   xn = rmsnorm(x)                                  backend rmsnorm (bf16 out)
//   qkv = xn Wqkv^T ; q, k, v = rope(qkv + b)         Gemm::linear (fp32 out), backend qkv_bias_rope (bf16)
//   of, lse_f = attn_causal ; os, lse_s = attn_Λ      flash_forward (fp32 O)
//   o = a of + (1 - a) os                            gate_mix_forward (bf16)
//   x2 = x + o Wo^T ; xn2 = rmsnorm(x2)              Gemm::linear + backend add_rmsnorm
//   gu = xn2 [Wg|Wu]^T ; x' = x2 + swiglu(gu) Wd^T   Gemm::linear, backend swiglu, Gemm::linear (accumulate)
// Backward (dx: the gradient of x', fp32, in place):
//   dh = dx Wd ; dgu = swiglu'(gu, dh) ; dxn2 = dgu [Wg|Wu]    Gemm::linear_input_grad, swiglu_backward
//   dx += rmsnorm'(x2, dxn2)                                   rmsnorm_backward (accumulate)
//   do = dx Wo ; d_full, d_stream, da = mix'(of, os, a, do)    gate_mix_backward (deterministic da)
//   dq, dk, dv = attn'_causal(d_full) + attn'_Λ(d_stream)      flash_backward (heads with a = 0 / a = 1 skipped)
//   dqkv = [rope^-1(dq) | rope^-1(sum_g dk) | sum_g dv]        qkv_grad_pack
//   dxn = dqkv Wqkv ; dx += rmsnorm'(x, dxn)                   Gemm::linear_input_grad, rmsnorm_backward
// and at the end H = rmsnorm(x_L) at the loss rows (fp32) and its backward into those rows.
//
// Precision: the residual stream, every GEMM output, the attention outputs and log-sum-exps,
// the tape, the gradients between ops and the loss are fp32; the gate gradient is reduced in
// double. GEMM operands (weights, normalised activations, gradients entering a GEMM) and the
// attention kernels' operands (q, k, v, dO) are bf16, as in the CUDA inference forward. With
// every gate at 1 the gated forward reproduces the full forward bit for bit (o = 1 * of + 0 * os).
// The re-run forward in the backward stops after the gate/up projection (the tape needs nothing
// later), which saves the down projection of every layer.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/device_memory.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gpu_weights.h"
#include "calibrate/loss.h"
#include "duo/head_plan.h"

namespace duo {
class Model;
}

namespace duo::cuda::calib {

// Milliseconds of each phase of the last loss evaluation (CUDA events on the stream).
struct PhaseTimes {
  double full_forward = 0, gated_forward = 0, backward = 0, total = 0;
};

class CudaGatedModel {
 public:
  // Uploads the model's weights as bf16 (stored head order: calibration needs it).
  CudaGatedModel(const Model& model, StreamingWindow window);
  CudaGatedModel(std::unique_ptr<GpuWeights> weights, StreamingWindow window);
  ~CudaGatedModel();
  CudaGatedModel(const CudaGatedModel&) = delete;
  CudaGatedModel& operator=(const CudaGatedModel&) = delete;

  const ModelConfig& config() const { return w_->config(); }
  int n_gates() const { return config().n_layers * config().n_kv_heads; }
  StreamingWindow window() const { return window_; }
  size_t weight_bytes() const { return w_->bytes(); }

  // The twins of GatedModel's passes, on token ids (the embedding runs on the GPU), with the
  // hidden states and their gradient in host memory (rows.size() x n_embd).
  void forward_full(const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows, std::vector<float>& out);
  void forward_gated(const std::vector<int32_t>& tokens, const std::vector<double>& gates,
                     const std::vector<int64_t>& rows, std::vector<float>& out);
  // Adds d loss / d gates to d_gates (n_gates values) for the last forward_gated.
  void backward_gated(const std::vector<float>& d_out, std::vector<double>& d_gates);

  // calibration_loss_and_grad on the GPU: loss of one sample, grad overwritten with dL/d gates.
  // target Logits: the KL of the answer rows' logits (calibrate/logit_loss.h); the LM head's
  // GEMMs, softmaxes and KL run on the GPU (logit_kl_grad); the rows' KLs are summed on the host.
  LossValue loss_and_grad(const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows,
                          const std::vector<double>& gates, double lambda, std::vector<double>& grad,
                          DistillTarget target = DistillTarget::Hidden);
  const PhaseTimes& last_times() const { return times_; }

  // Device bytes of activations for a sequence of n tokens (checkpoints, tape, gradients).
  size_t activation_bytes(int64_t n) const;
  // Synchronise after every op and name the op, layer and pass in any error (slow; for
  // localising a failure). Default: on when the environment sets DUO_CALIB_SYNC=1.
  void set_sync_checks(bool on) { sync_checks_ = on; }

 private:
  struct Bufs;  // device pointers of the current size
  void prepare(int64_t n);
  void upload_sample(const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows);
  void upload_gates(const std::vector<double>& gates);
  // x_out = layer l of x_in; gates_d: this layer's gates on the device, or null (full attention).
  // x_out null: stop once the tape is complete (the backward's re-run).
  void layer_forward(int l, const float* x_in, float* x_out, const float* gates_d);
  // dx: in d x_out, out d x_in; the tape holds layer l's forward of x_in with these gates.
  void layer_backward(int l, const float* x_in, const float* gates_host, float* dx, double* d_gates_d);
  void final_rows(const float* x, std::vector<float>& out);
  // The logit distillation of the current rows: returns the KL, writes d loss / d h_mix.
  double logits_distill(const std::vector<float>& h_full, const std::vector<float>& h_mix, std::vector<float>& d_mix);
  void op_done(const char* op);  // error check (and sync in sync-check mode) naming the op

  std::unique_ptr<GpuWeights> w_;
  StreamingWindow window_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  std::unique_ptr<Bufs> b_;
  float* gates_d_ = nullptr;     // n_gates floats (in the activation arena)
  double* d_gates_d_ = nullptr;  // n_gates doubles: the backward's gate gradient
  ScratchBuffer rows_{"loss rows"}, h_rows_{"hidden states at the loss rows"},
      d_rows_{"gradient of the hidden states at the loss rows"}, lm_x_{"LM head input rows"},
      lm_z_{"logits of the loss rows"}, lm_dz_{"logit gradient of the loss rows"},
      lm_dh_{"LM head input gradient"}, lm_kl_{"per-row KL of the loss rows"};
  std::vector<bf16> lm_host_x_;  // the LM head's input rows on the host, reused across steps
  int64_t n_cap_ = 0;           // tokens the buffers hold
  int64_t n_ = 0;               // tokens of the current sample (up to its last loss row)
  int64_t n_rows_ = 0;          // loss rows of the current sample
  std::vector<float> gates_f_;  // the last forward_gated's gates (float, as the CPU model)
  bool gated_ready_ = false;
  bool sync_checks_ = false;
  const char* phase_ = "";
  int layer_ = -1;
  PhaseTimes times_;
  cudaEvent_t ev_[5] = {};
};

}  // namespace duo::cuda::calib
