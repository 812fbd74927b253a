// The non-attention CUDA kernels of the model forward, as host-callable launchers. Each has a
// plain CPU twin (src/backend/cpu/ops.h, duo/sampler.h, core/dequant.h) that
// tests/cuda/ops_test.cpp checks it against.
//
// Precision: the residual stream and every GEMM output are fp32; what feeds a GEMM or the
// attention kernels (normalised activations, SwiGLU output, Q/K/V) is bf16. All pointers are
// device pointers; every launcher enqueues on `stream` and checks the launch (throws duo::Error
// with the CUDA error string, cuda_check.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/attention.cuh"

namespace duo::cuda {

// x[t][:] = table[tokens[t]][:] * scale for t < n (table: [vocab][E] bf16, x: [n][E] fp32; scale:
// gemma3's sqrt(n_embd), ModelConfig::embd_scale, else 1). Token ids must be valid (the forward
// checks them on the host).
void embed_tokens(const bf16* table, const int32_t* tokens, int n, int E, float* x, cudaStream_t stream,
                  float scale = 1.0f);

// dst[i][:] = src[rows[i]][:] for i < n (bf16 rows of E; rows: device int32): the rows of a
// batched step that feed the LM head, side by side.
void gather_rows(const bf16* src, int64_t E, const int32_t* rows, int n, bf16* dst, cudaStream_t stream);

// y[t] = bf16(x[t] / sqrt(mean(x[t]^2) + eps) * w) for n rows of E.
void rmsnorm(const float* x, const float* w, bf16* y, int64_t n, int E, float eps, cudaStream_t stream);

// The residual add fused with the next norm: x[t] += d[t], then y[t] = bf16(rmsnorm(x[t]) * w).
void add_rmsnorm(float* x, const float* d, const float* w, bf16* y, int64_t n, int E, float eps,
                 cudaStream_t stream);

// Sandwich norms (gemma3): the block output is normalized before the residual add, then the
// next norm as add_rmsnorm: x[t] += rmsnorm(d[t]) * dw (fp32), y[t] = bf16(rmsnorm(x[t]) * w).
// d is left as it was.
void add_normed_rmsnorm(float* x, const float* d, const float* dw, const float* w, bf16* y, int64_t n, int E,
                        float eps, cudaStream_t stream);

// x[i] += d[i] for `count` floats.
void add_inplace(float* x, const float* d, int64_t count, cudaStream_t stream);

// Q/K/V of n tokens at positions pos0, pos0 + 1, ...: rows of `qkv` (fp32, row stride ld) hold
// [Q heads | K heads | V heads] x head_dim. Adds the bias ([Q | K | V], or none), normalizes
// each Q and K head on its own when q_norm / k_norm are set (qwen3: x / sqrt(mean(x^2) + eps) * w
// over the head's D values, in fp32, before RoPE, as the CPU forward), applies RoPE
// to Q and K (interleaved pairs (2i, 2i+1) for llama GGUF, rotate-half pairs (i, i + d/2) for
// neox/qwen2; angle = pos * inv_freq[i]), multiplies the rotated Q by q_scale (gemma3's
// query_pre_attn_scalar folded into the queries, as the CPU forward: the attention kernels scale
// by 1/sqrt(head_dim)) and writes bf16 q [n][H*D], k and v [n][HKV*D].
struct QkvRopeArgs {
  const float* qkv = nullptr;
  int64_t ld = 0;
  const float* bias = nullptr;    // [(H + 2 HKV) * D] or nullptr
  const float* inv_freq = nullptr;  // [D / 2]
  int n = 0, pos0 = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  bool neox = false;
  // Per-head RMS norm weights of Q and K ([D] each, fp32), both or neither; norm_eps its epsilon.
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  float norm_eps = 0.0f;
  float q_scale = 1.0f;
  bf16 *q = nullptr, *k = nullptr, *v = nullptr;
  const int32_t* pos_d = nullptr;  // graph replay: when set, pos0 is read from this device int32
  // Decode (n = 1, at most 128 KV heads): K and V go straight into `cache` at the token's
  // position, as kv_append would store them after this call; k and v are then unused.
  bool to_cache = false;
  LayerKv cache;
  // When set: row t is at position row_pos[t] (device), the n rows may belong to different
  // sequences (a batched decode step); pos0 and pos_d are then unused and to_cache must be false
  // (duo::Error otherwise).
  const int32_t* row_pos = nullptr;
};
void qkv_bias_rope(const QkvRopeArgs& a, cudaStream_t stream);

// The feed-forward's gated activation: SwiGLU (llama, qwen) or GeGLU with gelu's tanh
// approximation (gemma3), one rounding as swiglu.cuh computes it.
enum class Glu : int { Silu = 0, GeluTanh = 1 };

// out[t][i] = bf16(act(g) * u) with g = gu[t][i], u = gu[t][F + i] (gate and up projections
// side by side in one fp32 row of 2F); act silu (SwiGLU) or gelu-tanh (GeGLU).
void swiglu(const float* gu, int64_t n, int F, bf16* out, cudaStream_t stream, Glu act = Glu::Silu);

// Final logit soft-capping (gemma3's final_logit_softcapping): x = cap * tanh(x / cap) for
// `count` floats, in place (cap > 0).
void softcap_logits(float* logits, int64_t count, float cap, cudaStream_t stream);

// out[r] = index of the largest of row r's n values (the first one on ties), for `rows` rows.
void argmax_rows(const float* logits, int rows, int n, int32_t* out, cudaStream_t stream);

// One token drawn from n logits: x = logits / temperature (> 0); keep the top_k largest
// (0: all; ties by lower index), then the smallest set of largest x whose probability mass
// reaches top_p (1: all); draw with the uniform number u in [0, 1): the kept token i where the
// running sum of kept probabilities in index order first exceeds u * (their total).
// The kept set is the same as Sampler::sample's; the order of the walk differs (index order
// here, sorted order there), which gives the same distribution.
struct SampleArgs {
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 1.0f;
  double u = 0.0;
};
void sample_token(const float* logits, int n, const SampleArgs& a, int32_t* out, cudaStream_t stream);

// y[r] = sum_c W[r][c] * x[c] (+ y[r] when accumulate) for r < rows: the linear layer of one
// token (decode), a bandwidth-bound pass over W (bf16 [rows][cols] row-major; x bf16 [cols];
// y fp32). Needs gemv_bf16_supported (cols % 8 == 0, cols <= 24576, 16-byte aligned W and x);
// throws duo::Error otherwise. Gemm::linear uses it for n = 1.
bool gemv_bf16_supported(const bf16* W, int64_t cols, const bf16* x);
void gemv_bf16(const bf16* W, int64_t rows, int64_t cols, const bf16* x, float* y, bool accumulate,
               cudaStream_t stream);
// The FFN input projection of one token with SwiGLU applied: Wgu holds 2F rows (gate rows, then
// up rows, as GpuLayerWeights::wgu), h[i] = bf16(silu(gate_i . x) * (up_i . x)) for i < F, the
// same bits as gemv_bf16 over the 2F rows followed by swiglu() (with the same act: GeGLU's gelu
// for gemma3). Same requirements as gemv_bf16.
void gemv_swiglu_bf16(const bf16* Wgu, int64_t F, int64_t cols, const bf16* x, bf16* h, cudaStream_t stream,
                      Glu act = Glu::Silu);

// int8 weight-only linear layers (gemv_int8.cu): W[r][c] ~ scale[r] * q[r][c], q int8 [rows][cols]
// row-major, scale fp32 [rows]. gemv_int8 is gemv_bf16's twin (one token, y fp32, accumulate);
// it needs gemv_int8_supported (cols % 16 == 0, cols <= 24576, 16-byte aligned W and x).
// gemv_swiglu_int8: Wgu holds 2F rows (gate, then up) and 2F scales; h = bf16(act(g) * u).
// dequant_int8_rows: out[r][c] = bf16(scale[r] * q[r][c]) (cols % 8 == 0), the bf16 tile a
// pre-fill GEMM reads. fill_int8: uniform integers in [-127, 127] (synthetic weights).
bool gemv_int8_supported(const int8_t* W, int64_t cols, const bf16* x);
void gemv_int8(const int8_t* W, const float* scale, int64_t rows, int64_t cols, const bf16* x, float* y,
               bool accumulate, cudaStream_t stream);
void gemv_swiglu_int8(const int8_t* Wgu, const float* scale, int64_t F, int64_t cols, const bf16* x, bf16* h,
                      cudaStream_t stream, Glu act = Glu::Silu);
void dequant_int8_rows(const int8_t* q, const float* scale, int64_t rows, int64_t cols, bf16* out,
                       cudaStream_t stream);
void fill_int8(int8_t* dst, int64_t count, uint64_t seed, cudaStream_t stream);

// Pre-fill over quantized past KV (prefill_quant.cu). The mma.sync kernel reads q8 / q4 pages
// itself (prefill_attention over the quantized view); the faster path dequantizes the retrieval
// heads' positions [0, pos0) (sink rows, quantized groups, residual rows) into a bf16 scratch laid
// out as a bf16 paged cache (its own page table first, then K pages, then V pages) and runs the
// bf16 pre-fill (wgmma where available) over a bf16 view whose retrieval pages are the scratch.
//  - Mma: prefill_attention over the quantized view as it is.
//  - Bf16Scratch: the scratch path; Mma when the scratch given is smaller than needed.
//  - Auto: the environment variable DUO_PREFILL_QUANT (mma | bf16scratch | auto), read once;
//    unset or auto: Bf16Scratch.
enum class PrefillQuantPath : int { Auto = 0, Mma = 1, Bf16Scratch = 2 };
const char* prefill_quant_path_name(PrefillQuantPath p);
PrefillQuantPath prefill_quant_path_env();  // DUO_PREFILL_QUANT resolved (Mma or Bf16Scratch)
// The most scratch bytes the model allocates for the path (longer pasts fall back to Mma):
// DUO_PREFILL_QUANT_SCRATCH_MB (MiB, read once) or 1 GiB, which holds one layer's retrieval
// heads at 4 KiB a position for 8 heads of 128 (Llama-3-8B full attention) up to 256K positions.
constexpr size_t kPrefillQuantScratchCap = size_t{1} << 30;
size_t prefill_quant_scratch_cap();
// Scratch bytes the chunk `a` needs for Bf16Scratch: 0 for bf16 caches, pos0 = 0 or no retrieval
// heads; else a page table ([n_kv_heads][pages_for(pos0)] int32, padded to 256 bytes) and K and
// V pages for the retrieval heads (retrieval_kv_heads of a Mixed layer, n_kv_heads when not given).
size_t prefill_quant_scratch_bytes(const PrefillArgs& a);
// The path prefill_attention_quant takes for `a` with scratch_bytes of scratch: Auto when the
// cache holds no quantized retrieval pages (bf16, or all heads streaming: the plain pre-fill).
PrefillQuantPath prefill_quant_path_for(const PrefillArgs& a, PrefillQuantPath requested, size_t scratch_bytes);
// Queues the dequantization of a's cached retrieval positions [0, a.pos0) into `scratch` (at
// least prefill_quant_scratch_bytes(a) bytes, 16-byte aligned) and returns the bf16 view: type
// BF16, k_pages / v_pages / page_table into the scratch (max_pages = pages_for(pos0)), rings,
// head kinds, mode and window unchanged. The bytes are the CPU's dequantize_group values (and
// the sink / residual rows) rounded to bf16, exactly. The scratch must stay untouched until the
// attention that reads the view ran.
LayerKv dequant_past_kv(const PrefillArgs& a, void* scratch, size_t scratch_bytes, cudaStream_t stream);
// prefill_attention for a cache of any type, quantized ones by the path prefill_quant_path_for picks.
void prefill_attention_quant(const PrefillArgs& a, PrefillQuantPath requested, void* scratch, size_t scratch_bytes,
                             cudaStream_t stream);

// Benchmarks: fills `pages` quantized KV pages (kv/kv_quant.h layout) with random codes (the
// first code_bytes of each page) and the params word `params` everywhere else, so a decode over
// them reads finite values.
void fill_quant_pages(uint8_t* pool, int64_t pages, int64_t page_bytes, int64_t code_bytes, uint64_t seed,
                      uint32_t params, cudaStream_t stream);

// dst[i] = center + scale * hash_uniform(seed, i) (see synthetic.h): seeded weights made on the GPU.
void fill_uniform(bf16* dst, int64_t count, uint64_t seed, float center, float scale, cudaStream_t stream);
void fill_uniform(float* dst, int64_t count, uint64_t seed, float center, float scale, cudaStream_t stream);

}  // namespace duo::cuda
