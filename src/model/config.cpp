#include "model/config.h"

#include <cmath>
#include <limits>
#include <optional>

#include "core/error.h"
#include "io/gguf.h"

namespace duo {

namespace {

// An integer hyper-parameter within [lo, hi]: GGUF stores them as 32- or 64-bit integers, and
// a value beyond what the engine's int fields hold must be refused, not truncated.
int64_t int_in(const GgufFile& f, const std::string& key, std::optional<int64_t> v, int64_t lo, int64_t hi) {
  if (!v) fail("{}: metadata key '{}' is missing", f.path(), key);
  DUO_CHECK(*v >= lo && *v <= hi, "{}: {} = {} is out of range (supported: {} to {})", f.path(), key, *v, lo, hi);
  return *v;
}

// A float hyper-parameter: finite and within (lo, hi]. NaN or infinity would turn every
// activation into NaN without any error, and a double beyond float's range does not convert.
float positive_float(const GgufFile& f, const std::string& key, double v, double hi) {
  DUO_CHECK(std::isfinite(v) && v > 0 && v <= hi, "{}: {} = {} is not a finite number in (0, {}]", f.path(), key, v,
            hi);
  return (float)v;
}

// gemma3 as llama.cpp reads it (llama-model.cpp LLM_ARCH_GEMMA3): norm weights stored as 1 + w
// already (the converter adds the 1), every 6th layer global unless sliding_window_pattern says
// otherwise, local layers with RoPE base 10000 (or rope.freq_base_swa) and no scaling, the
// global ones with freq_base and a linear scaling when given, and the attention scale of
// query_pre_attn_scalar, which the converter does not write: head_dim, except n_embd / n_heads
// for the 27B model (62 layers), as llama.cpp.
void gemma3_gguf(const GgufFile& f, const std::string& p, ModelConfig& c) {
  c.sandwich_norms = c.gelu_mlp = true;
  c.embd_scale = std::sqrt((float)c.n_embd);
  c.query_scale = c.n_layers == 62 ? (float)(c.n_embd / c.n_heads) : (float)c.head_dim;
  c.local_window = (int)int_in(f, p + "attention.sliding_window", f.opt_int(p + "attention.sliding_window"), 1,
                               std::numeric_limits<int32_t>::max());
  const int64_t pattern = int_in(f, p + "attention.sliding_window_pattern",
                                 f.opt_int(p + "attention.sliding_window_pattern").value_or(6), 1, 1 << 20);
  c.layer_local.assign(c.n_layers, 0);
  for (int l = 0; l < c.n_layers; ++l) c.layer_local[l] = (l + 1) % pattern != 0;
  c.rope_local_theta = positive_float(f, p + "rope.freq_base_swa",
                                      f.opt_float(p + "rope.freq_base_swa").value_or(10000.0), 1e30);
  if (auto cap = f.opt_float(p + "final_logit_softcapping"))
    c.final_softcap = positive_float(f, p + "final_logit_softcapping", *cap, 1e6);
  DUO_CHECK(!f.opt_float(p + "attn_logit_softcapping"), "{}: attn_logit_softcapping is not supported", f.path());
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const GgufFile& f) {
  ModelConfig c;
  c.arch = f.get_string("general.architecture");
  // (llama.cpp's converter writes Mistral-7B as llama.)
  if (c.arch != "llama" && c.arch != "qwen2" && c.arch != "qwen3" && c.arch != "gemma3")
    fail("{}: unsupported architecture '{}' (supported: llama, qwen2, qwen3, gemma3)", f.path(), c.arch);
  const std::string p = c.arch + ".";
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  c.name = f.opt_string("general.name").value_or(c.arch);
  c.n_layers = (int)int_in(f, p + "block_count", f.opt_int(p + "block_count"), 1, 1024);
  c.n_embd = (int)int_in(f, p + "embedding_length", f.opt_int(p + "embedding_length"), 1, 1 << 20);
  c.n_ff = (int)int_in(f, p + "feed_forward_length", f.opt_int(p + "feed_forward_length"), 1, 1 << 22);
  c.n_heads = (int)int_in(f, p + "attention.head_count", f.opt_int(p + "attention.head_count"), 1, 1 << 16);
  c.n_kv_heads = (int)int_in(f, p + "attention.head_count_kv",
                             f.opt_int(p + "attention.head_count_kv").value_or(c.n_heads), 1, c.n_heads);
  c.n_ctx_train = (int)int_in(f, p + "context_length", f.opt_int(p + "context_length").value_or(2048), 1, kIntMax);
  c.norm_eps = positive_float(f, p + "attention.layer_norm_rms_epsilon",
                              f.get_float(p + "attention.layer_norm_rms_epsilon"), 1.0);
  c.rope_theta = positive_float(f, p + "rope.freq_base", f.opt_float(p + "rope.freq_base").value_or(10000.0), 1e30);
  c.qkv_bias = c.arch == "qwen2";
  c.qk_norm = c.arch == "qwen3" || c.arch == "gemma3";
  c.rope_style = c.arch == "llama" ? RopeStyle::Interleaved : RopeStyle::Neox;
  c.tied_embeddings = f.find_tensor("output.weight") == nullptr;

  DUO_CHECK(c.n_heads % c.n_kv_heads == 0, "{}: head_count {} is not a multiple of head_count_kv {}", f.path(),
            c.n_heads, c.n_kv_heads);
  // The head size: key_length when given (qwen3's heads are wider than n_embd / n_heads),
  // otherwise n_embd / n_heads.
  if (auto kl = f.opt_int(p + "attention.key_length")) {
    c.head_dim = (int)int_in(f, p + "attention.key_length", kl, 2, 256);
  } else {
    DUO_CHECK(c.n_embd % c.n_heads == 0, "{}: embedding_length {} not divisible by {} heads", f.path(), c.n_embd,
              c.n_heads);
    c.head_dim = c.n_embd / c.n_heads;
  }
  if (auto vl = f.opt_int(p + "attention.value_length"))
    DUO_CHECK(*vl == c.head_dim, "{}: value_length {} differs from key_length {} (not supported)", f.path(), *vl,
              c.head_dim);
  DUO_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0 && c.head_dim <= 256, "{}: unsupported head dimension {}", f.path(),
            c.head_dim);
  c.n_rot = (int)int_in(f, p + "rope.dimension_count", f.opt_int(p + "rope.dimension_count").value_or(c.head_dim), 0,
                        256);
  DUO_CHECK(c.n_rot == c.head_dim, "{}: partial rotary embeddings ({} of {} dims) are not supported", f.path(),
            c.n_rot, c.head_dim);
  if (c.arch == "gemma3") gemma3_gguf(f, p, c);
  // Linear scaling (positions divided by the factor: Llama-2-7B-32K, gemma3's global layers) is
  // applied by the model's RoPE set-up; any other kind would run at the wrong frequencies.
  if (auto scaling = f.opt_string(p + "rope.scaling.type")) {
    DUO_CHECK(*scaling == "none" || *scaling == "linear", "{}: RoPE scaling '{}' is not supported", f.path(), *scaling);
    if (*scaling == "linear")
      c.rope_linear_factor = positive_float(f, p + "rope.scaling.factor", f.get_float(p + "rope.scaling.factor"), 1e6);
  }

  const auto& embd = f.tensor("token_embd.weight");
  DUO_CHECK(embd.dims.size() == 2 && embd.dims[0] == c.n_embd, "{}: token_embd.weight has shape incompatible with n_embd {}",
            f.path(), c.n_embd);
  DUO_CHECK(embd.dims[1] <= kIntMax, "{}: token_embd.weight has {} rows, more than token ids can number", f.path(),
            embd.dims[1]);
  c.n_vocab = (int)embd.dims[1];
  // Every token id the tokenizer produces must have an embedding row, and every row the LM
  // head scores must be a token the tokenizer can turn into text: a greedy pick of a row
  // beyond the vocabulary would fail only at generation time (as llama.cpp, require equality;
  // output.weight's rows are checked against n_vocab when the weights are loaded).
  if (const GgufValue* toks = f.find("tokenizer.ggml.tokens")) {
    if (toks->index() == 5) {
      const size_t n_tokens = std::get<std::shared_ptr<GgufArray>>(*toks)->items.size();
      DUO_CHECK(n_tokens == (size_t)c.n_vocab,
                "{}: the vocabulary has {} tokens but token_embd.weight has {} rows (they must be equal)", f.path(),
                n_tokens, c.n_vocab);
    }
  }
  return c;
}

}  // namespace duo
