// The device seam: a per-device model object that runs the forward pass over per-sequence
// state (that sequence's KV cache on the device). The Engine, the CLI and the benchmarks talk
// to this interface, so the same code runs on the CPU or on CUDA (`--device cpu|cuda`):
//  - CPU: wraps Model + KvCache (src/engine/cpu_backend.cpp), exactly the CPU engine;
//  - CUDA: bf16 weights resident on the GPU, cuBLAS GEMMs, the attention kernels of
//    src/backend/cuda and a GPU KV cache (src/backend/cuda/cuda_backend.cpp), compiled in
//    when the build has DUO_CUDA=ON (macro DUO_HAVE_CUDA).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "kv/head_policy.h"
#include "model/config.h"

namespace duo {

class Model;
class Sampler;
class ThreadPool;

enum class Device { Cpu, Cuda };
Device parse_device(const std::string& s);  // "cpu" | "cuda"
const char* to_string(Device d);
// Whether this build has the CUDA backend compiled in.
bool cuda_compiled();

// How the CUDA backend keeps the weight matrices (--gpu-weights): bf16, or int8 weight-only with
// an fp32 scale a row (half the bytes; decode GEMVs read int8 directly, pre-fill dequantizes
// tiles to bf16 for cuBLAS). Norms, biases and the embedding table stay as they are.
enum class WeightFormat { Bf16, Int8 };
WeightFormat parse_weight_format(const std::string& s);  // "bf16" | "int8"
const char* to_string(WeightFormat f);

// One sequence's KV cache on a device, shaped by a HeadPlan.
class SequenceState {
 public:
  virtual ~SequenceState() = default;
  virtual int64_t n_past() const = 0;
  virtual const HeadPlan& plan() const = 0;
  // Bytes of keys and values the heads hold, in total and by head kind (the CPU cache counts
  // float32 rows, the CUDA cache bf16 rows; both count whole pages for retrieval heads).
  virtual size_t kv_bytes() const = 0;
  virtual size_t kv_bytes(HeadKind kind) const = 0;
  virtual void clear() = 0;
};

class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  virtual Device device() const = 0;
  // What runs the model, for logs (e.g. "cpu, 8 threads" or the GPU's name).
  virtual std::string description() const = 0;
  virtual const ModelConfig& config() const = 0;

  // A sequence for this model. max_tokens bounds its length (the CUDA cache reserves address
  // space and page tables for it; memory still grows page by page).
  virtual std::unique_ptr<SequenceState> new_sequence(const HeadPlan& plan, int64_t max_tokens) = 0;

  // Runs `n` tokens at positions state.n_past() ... and appends them to the state, in
  // pre-fill chunks of at most `chunk` tokens. logits (host memory): when non-null receives
  // n_vocab floats for the last token, or n x n_vocab when all_logits.
  virtual void forward(SequenceState& state, const int32_t* tokens, int64_t n, float* logits, int64_t chunk,
                       bool all_logits = false) = 0;

  // Runs `n` tokens like forward() and picks the next token from the last one's logits with
  // `sampler` (argmax at temperature 0). The CUDA backend picks on the device and copies back
  // only the token id.
  virtual int32_t forward_pick(SequenceState& state, const int32_t* tokens, int64_t n, int64_t chunk,
                               Sampler& sampler) = 0;
};

// The CPU engine (the model and the pool must outlive the backend).
std::unique_ptr<ModelBackend> make_cpu_backend(Model& model, ThreadPool& pool);

// CUDA backend with the weights of a loaded model (after any head reordering), converted to
// bf16 on the GPU. Fails with a clear message when this build has no CUDA or no GPU is found.
std::unique_ptr<ModelBackend> make_cuda_backend(const Model& model, WeightFormat weights = WeightFormat::Bf16);
// CUDA backend of a model shape with seeded random bf16 weights generated on the GPU (speed
// and memory measurements of full-size shapes without their weights).
std::unique_ptr<ModelBackend> make_cuda_synthetic_backend(const ModelConfig& cfg, uint64_t seed,
                                                           WeightFormat weights = WeightFormat::Bf16);

}  // namespace duo
