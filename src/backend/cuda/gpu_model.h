// The llama-family forward on the GPU, top to bottom in gpu_model.cpp (the twin of
// CpuForward::forward): fp32 residual stream, bf16 GEMM operands on cuBLAS, the attention
// kernels of attention.cuh over a GpuKvCache. Everything of a forward is queued on one
// stream; the host waits only where it needs a result (logits or a picked token).
// A decode step (one token) reads its token id and position from device memory, so the whole
// step (every layer and the LM head, ~11 kernels a layer) is captured once as a CUDA graph and
// replayed: one launch a token instead of hundreds.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "backend/cuda/device_memory.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gpu_kv_cache.h"
#include "backend/cuda/gpu_weights.h"
#include "backend/cuda/kernels.h"
#include "duo/sampler.h"

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

  std::unique_ptr<GpuKvCache> new_cache(const HeadPlan& plan, int64_t max_tokens,
                                        std::shared_ptr<KvPagePool> pool = nullptr) const;

  // Runs n tokens (host ids) at positions kv.n_past() ... in chunks of at most `chunk`.
  // logits (host): n_vocab floats of the last token, or n x n_vocab with all_logits.
  void forward(GpuKvCache& kv, const int32_t* tokens, int64_t n, int64_t chunk, float* logits, bool all_logits);
  // Runs n tokens and picks the next one on the GPU from the last token's logits (argmax at
  // temperature <= 0, else sample_token with the uniform number u); copies back one int32.
  int32_t forward_pick(GpuKvCache& kv, const int32_t* tokens, int64_t n, int64_t chunk, const SamplerConfig& s,
                       double u);

  // One sequence's share of a batched step (ModelBackend::step).
  struct StepItem {
    GpuKvCache* kv = nullptr;
    const int32_t* tokens = nullptr;  // host ids
    int n = 0;                        // 1: a decode token; more: a pre-fill chunk (not cut further)
    bool pick = false;                // pick the next token from the last token's logits
    SamplerConfig sampling;           // how (argmax at temperature <= 0)
    double u = 0.0;                   // the uniform number a sampled pick draws with
  };
  // Continuous batching: every item's rows go through each linear layer together (one GEMM a
  // weight for all tokens of the step); attention runs per item, each over its own cache under
  // its own plan, exactly as forward() runs it (decode items take forward()'s decode kernels
  // and split counts, pre-fill items its chunk kernels). picked (items.size()) receives each
  // item's pick or -1; logits (host, optional) n_vocab floats per item for its last token.
  void step(const std::vector<StepItem>& items, int32_t* picked, float* logits);

  // Benchmarks: time the attention kernels of every layer with CUDA events (prefill_attention
  // or decode_attention, not kv_append), accumulated until reset.
  void set_attention_timing(bool on) { timing_ = on; }
  double attention_ms() const { return attn_ms_; }
  void reset_attention_timing() { attn_ms_ = 0.0; }
  // Benchmarks: the decode attention of every layer (attention kernels and merges, nothing else)
  // over the sequence's last position, captured as one CUDA graph and replayed `reps` times: ms
  // a pass. What attention costs inside a replayed step, without the timed pass's per-kernel
  // launches and events. The cache is not changed.
  double decode_attention_graph_ms(const GpuKvCache& kv, int reps);
  // Frees the activation buffers (they grow to the largest chunk seen).
  void release_scratch();

  // Pre-fill chunks over a quantized past (kernels.h, PrefillQuantPath): Auto (default) follows
  // DUO_PREFILL_QUANT (unset: Bf16Scratch). Bf16Scratch dequantizes each layer's cached
  // retrieval positions into one bf16 scratch the model owns (every layer reuses it: they run in
  // order on the stream), sized before a chunk's kernels are queued for the longest past of the
  // chunk's layers, grown on demand and never beyond the cap (prefill_quant_scratch_cap(): 1 GiB
  // unless DUO_PREFILL_QUANT_SCRATCH_MB says): a past that needs more runs on the mma kernel, and
  // the scratch is then released so its memory goes to the cache. Decode never uses it.
  void set_prefill_quant_path(PrefillQuantPath p) { prefill_quant_ = p; }
  PrefillQuantPath prefill_quant_path() const { return prefill_quant_; }
  void set_prefill_scratch_cap(size_t bytes) { prefill_kv_cap_ = bytes; }
  size_t prefill_scratch_bytes() const { return prefill_kv_.bytes(); }  // held now

  // Decode steps replay a CUDA graph (captured on first use, again when the cache or an
  // activation buffer changed). Off: the same kernels are launched one by one (also whenever
  // attention timing is on). Default on unless the environment sets DUO_CUDA_GRAPH=0.
  // Batched steps of decode tokens only (one KV type) replay a graph per batch-size bucket
  // (gpu_step_graph.cpp): the step's rows padded to the bucket, its positions, cache views and
  // attention parameters copied to the device in one transfer before the replay.
  void set_decode_graphs(bool on) { graphs_ = on; }
  bool decode_graphs() const { return graphs_; }
  int graph_captures() const { return captures_; }  // decode graphs captured so far

 private:
  struct Act {  // the activation buffers of one chunk
    float* x;
    bf16* xn;
    float* qkv;
    bf16 *q, *k, *v, *att;
    float *o, *gu;
    bf16* h;
    float* logits;
    void* ws;  // split-KV decode workspace (n = 1)
    size_t ws_bytes;
    void* pkv;  // bf16 scratch of a pre-fill chunk's quantized past (prefill_scratch)
    size_t pkv_bytes;
  };
  // One chunk of n tokens whose ids are at tokens_d (device); afterwards the logits of the
  // last `logits_rows` tokens (0, 1 or n) are in logits_.
  void run_chunk(GpuKvCache& kv, const int32_t* tokens_d, int n, int logits_rows);
  // One token (n = 1) whose id and position are at step_ (device): eager or through the graph.
  void run_decode(GpuKvCache& kv, int logits_rows);
  // Activation buffers for n rows, and the split-KV workspace the decoders' layers need.
  Act activations(int n, const std::vector<const GpuKvCache*>& decoders);
  // Queues the kernels of a chunk. pos_d: the decode form (n = 1, position read on the device).
  void enqueue_chunk(const GpuKvCache& kv, const Act& act, const int32_t* tokens_d, int n, int pos0,
                     const int32_t* pos_d, int logits_rows);
  // The layer stack over the n rows of act, from the embedding to the output norm (in act.xn);
  // attend(l) queues layer l's attention block between its QKV and output projections: RoPE
  // of act.qkv's rows, attention into act.att, the KV append (and the timing events).
  void enqueue_layers(const Act& act, const int32_t* tokens_d, int n, const std::function<void(int)>& attend);
  // Layer l's attention block for rows [row0, row0 + n) of act, one sequence at positions
  // pos0 ... (decode form when pos_d is set: n = 1, position on the device). timed: record
  // the layer's events around the attention kernel.
  void enqueue_attention(const GpuKvCache& kv, int l, const Act& act, int row0, int n, int pos0, const int32_t* pos_d,
                         bool timed);
  // The shape and cache of layer l's pre-fill of n rows at pos0 (no row pointers).
  PrefillArgs prefill_args(const GpuKvCache& kv, int l, int n, int pos0) const;
  // Bytes of bf16 scratch a pre-fill chunk of kv at pos0 needs (the most of its layers; 0 when
  // the scratch path does not run: bf16 cache, no past, or the Mma path chosen).
  size_t prefill_scratch_need(const GpuKvCache& kv, int pos0) const;
  // Sizes the scratch for `need` bytes before anything of a chunk or step is queued (growing it
  // waits for the queued work that reads it) and points act at it; past the cap, releases it and
  // leaves act's pointer null (the mma kernel runs).
  void prefill_scratch(size_t need, Act& act);
  // The scratch grown to at least `need` bytes (after the queued work that reads it, if it grows).
  void* grow_prefill_scratch(size_t need);
  // Before the chunks of one prompt: the scratch for its last chunk (the longest past), when
  // that fits the cap, so that no chunk grows it (and waits) on the way.
  void reserve_prefill_scratch(const GpuKvCache& kv, int64_t n, int64_t chunk);
  // Checks a batched step's items before anything is queued (ids, capacity, distinct caches).
  void check_step(const std::vector<StepItem>& items) const;
  // Batched steps: the decode items' device tables (prepare_step_decode, before anything is
  // queued) and layer l's attention block over all items (enqueue_step_attention).
  void prepare_step_decode(const std::vector<StepItem>& items, const std::vector<int>& first);
  void enqueue_step_attention(const std::vector<StepItem>& items, const std::vector<int>& first, const Act& act,
                              const int32_t* row_pos_d, int l);
  // A decode token's attention over layer l of kv (the token appended): at the host position,
  // or with pos_d at the position on the device (the form a captured graph replays).
  DecodeArgs decode_args(const GpuKvCache& kv, int l, const bf16* q, bf16* out, const int32_t* pos_d = nullptr) const;
  // RoPE (and QKV bias) of act's first n rows for layer l, row t at position row_pos_d[t] (device).
  void enqueue_rope_rows(const Act& act, int l, int n, const int32_t* row_pos_d);
  // The LM head of `rows` bf16 rows at `in` (normalised by output_norm) into fp32 logits, soft-capped
  // where the model says (gemma3): every LM-head GEMM of a forward, step or replayed step.
  void enqueue_lm_head(const bf16* in, int rows, float* logits);
  // The factor the rope kernel multiplies queries by (qkv_bias_rope's q_scale): 1 but for gemma3.
  float query_scale() const;
  // Draws one token from n_vocab logits (device) into out (device) with s and the uniform u.
  void enqueue_sample(const float* logits, const SamplerConfig& s, double u, int32_t* out);
  // Checks and stages the ids: n > 1 into tokens_; one token, with its position, into step_.
  const int32_t* upload_tokens(const GpuKvCache& kv, const int32_t* tokens, int64_t n);
  void reset_graph();        // the single-sequence decode graph
  void reset_step_graphs();  // the batched steps' graphs
  // The replayed form of step() (gpu_step_graph.cpp); false when the step does not qualify
  // (graphs off, timing, a pre-fill chunk, several KV types, more items than the largest bucket).
  bool step_replay(const std::vector<StepItem>& items, int32_t* picked, float* logits);
  struct StepGraph {
    cudaGraphExec_t exec = nullptr;
    std::vector<const void*> key;  // what the capture baked in
  };
  std::map<int, StepGraph> step_graphs_;  // by bucket
  std::vector<unsigned char> replay_host_;  // the staged transfer of a replayed step

  std::unique_ptr<GpuWeights> w_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  // Activations of a chunk (grow-only).
  ScratchBuffer tokens_{"token ids"}, x_{"the residual stream"}, xn_{"normalised activations"},
      qkv_{"QKV projections"}, q_{"queries"}, k_{"keys"}, v_{"values"}, att_{"attention output"},
      o_{"projection output"}, gu_{"gate/up projections"}, h_{"SwiGLU output"}, logits_{"logits"},
      decode_ws_{"the split-KV decode workspace"}, picked_{"the picked token"},
      step_{"the decode step's token id and position"}, step_pos_{"a batched step's positions and LM-head rows"},
      lm_in_{"a batched step's LM-head input rows"}, dec_meta_{"a batched step's decode rows and positions"},
      dec_views_buf_{"a batched step's decode cache views"}, dec_params_buf_{"a batched step's decode parameters"},
      replay_buf_{"a replayed step's ids, positions, cache views and attention parameters"},
      replay_ws_{"a replayed step's split-KV workspace"},
      prefill_kv_{"the bf16 scratch of a pre-fill chunk's quantized past KV"};
  PrefillQuantPath prefill_quant_ = PrefillQuantPath::Auto;
  size_t prefill_kv_cap_ = prefill_quant_scratch_cap();
  // The decode items of the current batched step (prepare_step_decode): their indices, rows then
  // positions on the device, [layer][item] cache views, split workspace and parameter buffer.
  // DUO_BATCH_DECODE=0 runs them one by one with forward()'s kernels instead.
  bool batch_decode_ = true;
  std::vector<int> dec_;         // decode items, grouped by KV type
  std::vector<int> dec_groups_;  // group g is dec_[dec_groups_[g] .. dec_groups_[g + 1])
  int32_t* dec_rows_ = nullptr;
  LayerKv* dec_views_ = nullptr;
  void *dec_ws_ = nullptr, *dec_params_ = nullptr;
  size_t dec_ws_bytes_ = 0, dec_params_bytes_ = 0;
  bool timing_ = false;
  bool graphs_ = true;
  int captures_ = 0;
  cudaGraphExec_t graph_ = nullptr;
  std::vector<const void*> graph_key_;  // what the captured graph baked in (see run_decode)
  double attn_ms_ = 0.0;
  std::vector<cudaEvent_t> events_;  // [2 * layer]: before and after the layer's attention
};

}  // namespace duo::cuda
