// The device seam: a per-device model object that runs the forward pass over per-sequence
// state (that sequence's KV cache on the device). The Engine, the CLI and the benchmarks talk
// to this interface, so the same code runs on the CPU or on CUDA (`--device cpu|cuda`):
//  - CPU: wraps CpuForward + KvCache (src/backend/cpu/cpu_backend.cpp), exactly the CPU engine;
//  - CUDA: bf16 weights resident on the GPU, cuBLAS GEMMs, the attention kernels of
//    src/backend/cuda and a GPU KV cache (src/backend/cuda/cuda_backend.cpp), compiled in
//    when the build has DUO_CUDA=ON (macro DUO_HAVE_CUDA).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "duo/device.h"
#include "duo/head_plan.h"
#include "model/config.h"

namespace duo {

class AttentionObserver;
class Model;
class CpuForward;
class Sampler;
class ThreadPool;

// Device and WeightFormat (public API options): duo/device.h.

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
  // Device memory the sequence holds now: its KV rows plus any tables and fixed buffers
  // (default: the KV rows alone, as a CPU cache holds).
  virtual size_t device_bytes() const { return kv_bytes(); }
  virtual void clear() = 0;
};

// The device as benchmarks describe it (fields a device does not have stay 0 / empty).
struct DeviceFacts {
  std::string name;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  size_t total_memory = 0;
  int driver_version = 0, runtime_version = 0;  // e.g. 13000
};

// Device memory now: free and total (as the driver says), and the most the backend held since
// reset_peak_memory().
struct DeviceMemory {
  size_t free_bytes = 0, total_bytes = 0, peak_bytes = 0;
};

// One sequence's share of a batched step (ModelBackend::step): `n` tokens appended to `seq` at
// positions seq->n_past() ...; a decode step has n = 1, a pre-fill chunk more (the caller cuts
// the prompt into chunks: an item is one forward pass of its sequence, never split further).
struct StepItem {
  SequenceState* seq = nullptr;
  const int32_t* tokens = nullptr;
  int64_t n = 0;
  // When set, the next token is picked from the item's last logits with this sampler (on the
  // device for CUDA: only the id comes back); unset, the item's pick is -1.
  Sampler* sampler = nullptr;
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

  // Continuous batching: one forward step over several sequences (distinct), each with its own
  // position, head plan, KV type and cache, pre-fill chunks and decode tokens mixed. What an
  // item computes does not depend on the other items (within rounding: shared matmuls may take
  // other kernels). picked (items.size() ints) receives each item's picked token or -1;
  // logits, when non-null, n_vocab floats per item for its last token, in item order.
  // Items are checked before anything runs (a bad token id, a sequence past its capacity or
  // of another backend throws duo::Error and changes no cache); a failure while running
  // leaves the caches of the step's sequences in an unknown state.
  virtual void step(const std::vector<StepItem>& items, int32_t* picked, float* logits = nullptr) = 0;

  // Bytes of keys and values a sequence of n positions holds under `plan` (what kv_bytes()
  // will say): the figure users see and budgets are stated in.
  virtual size_t kv_bytes_for(const HeadPlan& plan, int64_t n) const = 0;
  // Memory a sequence created for `capacity` tokens takes on this device at its largest (KV
  // rows in the device's format plus its tables and fixed buffers): what admission reserves so
  // that running sequences can never exhaust the device.
  virtual size_t sequence_bytes(const HeadPlan& plan, int64_t capacity) const = 0;
  // Memory this device can give to KV caches now (for a default serving budget): free device
  // memory less a margin for activations on CUDA (after giving back cached KV memory no
  // sequence uses); 0 when the backend does not know (CPU).
  virtual size_t free_kv_memory() { return 0; }

  // The device's shared KV page pools (retrieval heads of every sequence), in bytes of K and V
  // pages: held by sequences, and mapped but free for the next ones. Zero where caches keep
  // their own memory (CPU).
  struct PagePoolUse {
    size_t used_bytes = 0, idle_bytes = 0;
  };
  virtual PagePoolUse page_pool_use() const { return {}; }

  // --- What benchmarks measure beyond running the model (duo bench --device cuda). Defaults:
  // a device with nothing to report (zeros, no timing); fill_kv_random fails where unsupported.
  // The KV type a cache stores for a requested one (Default resolved; unsupported types fail).
  virtual KvType kv_type(KvType requested) const { return requested; }
  // Device memory a sequence created for `capacity` tokens holds once it has n positions
  // (sequence_bytes is its largest, n = capacity). Default: its KV rows, kv_bytes_for(plan, n).
  virtual size_t sequence_bytes_at(const HeadPlan& plan, int64_t capacity, int64_t n) const;
  // Device memory a pre-fill chunk of n tokens uses for activations (0: not counted).
  virtual size_t activation_bytes(int64_t n) const {
    (void)n;
    return 0;
  }
  // Fills a fresh sequence's first n positions with seeded random keys and values, as if n
  // tokens had run: decode speed depends on how much each head reads, not on the values.
  virtual void fill_kv_random(SequenceState& state, int64_t n, uint64_t seed);
  virtual DeviceFacts device_facts() const { return {description()}; }
  virtual DeviceMemory device_memory() const { return {}; }
  virtual void reset_peak_memory() {}
  // Bytes and format of the weights on the device.
  virtual size_t weight_bytes() const { return 0; }
  virtual WeightFormat weight_format() const { return WeightFormat::Bf16; }
  // Time spent in attention kernels while timing is on (ms, accumulated until reset).
  virtual void set_attention_timing(bool on) { (void)on; }
  virtual void reset_attention_timing() {}
  virtual double attention_ms() const { return 0.0; }
  // The decode attention of every layer over the sequence's last position, replayed `reps` times
  // as the decode step runs it (a GPU: one CUDA graph): ms a pass; 0 where not measured.
  virtual double decode_attention_graph_ms(SequenceState& state, int reps) {
    (void)state, (void)reps;
    return 0.0;
  }
  // --- What tools see of a backend beyond running the model.
  // The kernels this backend runs, for benchmark output (the CPU's SIMD level, e.g. "avx512");
  // empty where there is no choice to report.
  virtual std::string kernels() const { return {}; }
  // Prepares the weights for batched steps once (the CPU packs the many-token matmul's panels:
  // pre-fill chunks and batched decode then skip unpacking quantized blocks on every call).
  // Returns the bytes it added (0: nothing to prepare). The model's heads are already in their
  // final order (the engine reorders them before making the backend).
  virtual size_t prepare_batched_weights() { return 0; }
  // Whether set_attention_observer accepts an observer (engine/attention_observer.h).
  virtual bool observes_attention() const { return false; }
  // Installs (nullptr: removes) an observer shown every layer's attention of later forward
  // passes. Default: a backend that cannot show its attention refuses an observer.
  virtual void set_attention_observer(AttentionObserver* observer);
  // Frees the activation buffers (they grow to the largest chunk seen).
  virtual void release_scratch() {}
  // Whether decode steps replay captured graphs.
  virtual bool decode_graphs() const { return false; }
  // Device memory bandwidth of a plain copy measured now: bytes read plus bytes written per
  // second, in GB/s (the ceiling a memory-bound kernel is compared with); 0 where not measured.
  virtual double copy_gbs() { return 0.0; }
};

// One line for `duo --version`: what this build's backends run on this machine (the CPU
// kernels' SIMD level in use and the widest here, and how the build was made).
std::string backends_summary();

// The CPU engine (the forward, its model and the pool must outlive the backend).
std::unique_ptr<ModelBackend> make_cpu_backend(CpuForward& forward, ThreadPool& pool);
// The same over a forward of its own, with the many-token matmuls' activation width (16, or 8:
// EngineOptions::act_bits); no packed panels until prepare_batched_weights(). The model and the
// pool must outlive it.
std::unique_ptr<ModelBackend> make_cpu_backend(const Model& model, ThreadPool& pool, int act_bits = 16);

// CUDA backend with the weights of a loaded model (after any head reordering), converted to
// bf16 on the GPU. Fails with a clear message when this build has no CUDA or no GPU is found.
std::unique_ptr<ModelBackend> make_cuda_backend(const Model& model, WeightFormat weights = WeightFormat::Bf16);
// CUDA backend of a model shape with seeded random bf16 weights generated on the GPU (speed
// and memory measurements of full-size shapes without their weights).
std::unique_ptr<ModelBackend> make_cuda_synthetic_backend(const ModelConfig& cfg, uint64_t seed,
                                                           WeightFormat weights = WeightFormat::Bf16);

}  // namespace duo
