// ModelConfig from a Hugging Face config.json. Both the transformers 4 form (top-level
// rope_theta, rope_scaling) and the transformers 5 form (rope_parameters) are read.
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/fp16.h"
#include "io/hf_checkpoint.h"
#include "model/config.h"

namespace duo {

namespace {

using json = nlohmann::json;

int64_t int_key(const json& c, const std::string& where, const char* key, std::optional<int64_t> dflt, int64_t lo,
                int64_t hi) {
  int64_t v;
  if (!c.contains(key) || c[key].is_null()) {
    if (!dflt) fail("{}: key '{}' is missing", where, key);
    v = *dflt;
  } else {
    DUO_CHECK(c[key].is_number_integer(), "{}: '{}' is not an integer", where, key);
    v = c[key].get<int64_t>();
  }
  DUO_CHECK(v >= lo && v <= hi, "{}: {} = {} is out of range (supported: {} to {})", where, key, v, lo, hi);
  return v;
}

double float_key(const json& c, const std::string& where, const char* key, std::optional<double> dflt, double hi) {
  double v;
  if (!c.contains(key) || c[key].is_null()) {
    if (!dflt) fail("{}: key '{}' is missing", where, key);
    v = *dflt;
  } else {
    DUO_CHECK(c[key].is_number(), "{}: '{}' is not a number", where, key);
    v = c[key].get<double>();
  }
  DUO_CHECK(std::isfinite(v) && v > 0 && v <= hi, "{}: {} = {} is not a finite number in (0, {}]", where, key, v, hi);
  return v;
}

bool bool_key(const json& c, const char* key, bool dflt) {
  return c.contains(key) && c[key].is_boolean() ? c[key].get<bool>() : dflt;
}

// Llama-3.1's frequency-dependent scaling as transformers computes it
// (_compute_llama3_parameters), returned as the divisor of each inverse frequency (llama.cpp's
// rope_freqs meaning, which Model::init_rope applies).
std::vector<float> llama3_factors(const json& s, const std::string& where, double theta, int head_dim) {
  const double factor = float_key(s, where, "factor", {}, 1e6);
  const double low = float_key(s, where, "low_freq_factor", 1.0, 1e6);
  const double high = float_key(s, where, "high_freq_factor", 4.0, 1e6);
  const double old_ctx = (double)int_key(s, where, "original_max_position_embeddings", {}, 1, 1ll << 40);
  DUO_CHECK(high > low, "{}: llama3 RoPE scaling needs high_freq_factor > low_freq_factor ({} <= {})", where, high,
            low);
  const double low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
  std::vector<float> f((size_t)head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    const double inv = std::pow(theta, -2.0 * i / head_dim);
    const double wavelen = 2 * M_PI / inv;
    double scaled = wavelen > low_wavelen ? inv / factor : inv;
    if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
      const double smooth = (old_ctx / wavelen - low) / (high - low);
      scaled = (1 - smooth) * scaled / factor + smooth * scaled;
    }
    f[i] = (float)(inv / scaled);
  }
  return f;
}

// The rope_theta of one layer type in transformers 5's per-type rope_parameters, and its linear
// scaling factor (1 without scaling).
double gemma3_rope(const json& p, const std::string& where, const char* type, double theta, float& factor) {
  factor = 1.0f;
  if (!p.contains(type) || p[type].is_null()) return theta;
  const json& r = p[type];
  DUO_CHECK(r.is_object(), "{}: rope_parameters.{} is not an object", where, type);
  std::string kind = r.value("rope_type", std::string());
  if (kind.empty()) kind = r.value("type", std::string("default"));
  if (kind == "linear")
    factor = (float)float_key(r, where, "factor", {}, 1e6);
  else
    DUO_CHECK(kind == "default", "{}: gemma3 {} RoPE '{}' is not supported (supported: default, linear)", where, type,
              kind);
  return float_key(r, where, "rope_theta", theta, 1e30);
}

// gemma3's own keys (Gemma3TextConfig, text-only): sandwich norms, GeGLU, scaled embeddings,
// query_pre_attn_scalar, soft-capping, local sliding-window layers beside global ones, each
// kind with its own RoPE.
void gemma3_hf(const json& j, const std::string& where, ModelConfig& c) {
  c.sandwich_norms = c.gelu_mlp = true;
  c.qk_norm = true;
  c.tied_embeddings = bool_key(j, "tie_word_embeddings", true);
  const std::string act = j.value("hidden_activation", j.value("hidden_act", std::string("gelu_pytorch_tanh")));
  DUO_CHECK(act == "gelu_pytorch_tanh", "{}: gemma3 hidden_activation '{}' is not supported (supported: gelu_pytorch_tanh)",
            where, act);
  DUO_CHECK(!bool_key(j, "attention_bias", false), "{}: gemma3 with attention_bias is not supported", where);
  DUO_CHECK(!bool_key(j, "use_bidirectional_attention", false),
            "{}: gemma3 with use_bidirectional_attention is not supported", where);
  // Gemma 3 has no attention soft-capping (Gemma 2 had); duo's attention kernels have none.
  DUO_CHECK(!j.contains("attn_logit_softcapping") || j["attn_logit_softcapping"].is_null(),
            "{}: attn_logit_softcapping is not supported (gemma3 checkpoints have null)", where);
  if (j.contains("final_logit_softcapping") && !j["final_logit_softcapping"].is_null())
    c.final_softcap = (float)float_key(j, where, "final_logit_softcapping", {}, 1e6);
  c.query_scale = (float)float_key(j, where, "query_pre_attn_scalar", 256.0, 1e9);
  c.local_window = (int)int_key(j, where, "sliding_window", 4096, 1, std::numeric_limits<int32_t>::max());
  // Which layers are local: layer_types when given, else every sliding_window_pattern-th layer
  // global (Gemma3TextConfig's rule).
  c.layer_local.assign(c.n_layers, 0);
  if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const json& t = j["layer_types"];
    DUO_CHECK(t.is_array() && (int)t.size() == c.n_layers, "{}: layer_types needs {} entries", where, c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string k = t[l].is_string() ? t[l].get<std::string>() : "";
      DUO_CHECK(k == "sliding_attention" || k == "full_attention", "{}: layer_types[{}] '{}' is not supported", where,
                l, k);
      c.layer_local[l] = k == "sliding_attention";
    }
  } else {
    const int64_t pattern = int_key(j, where, "sliding_window_pattern", 6, 1, 1 << 20);
    for (int l = 0; l < c.n_layers; ++l) c.layer_local[l] = (l + 1) % pattern != 0;
  }
  // RoPE: transformers 5 keeps one entry per layer type in rope_parameters; transformers 4 has
  // rope_theta / rope_scaling (global layers) and rope_local_base_freq (local layers).
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    const json& p = j["rope_parameters"];
    float local_factor = 1.0f;
    c.rope_theta = (float)gemma3_rope(p, where, "full_attention", 1e6, c.rope_linear_factor);
    c.rope_local_theta = (float)gemma3_rope(p, where, "sliding_attention", 1e4, local_factor);
    DUO_CHECK(local_factor == 1.0f, "{}: RoPE scaling of the local (sliding_attention) layers is not supported", where);
  } else {
    c.rope_theta = (float)float_key(j, where, "rope_theta", 1e6, 1e30);
    c.rope_local_theta = (float)float_key(j, where, "rope_local_base_freq", 1e4, 1e30);
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
      gemma3_rope(json{{"s", j["rope_scaling"]}}, where, "s", c.rope_theta, c.rope_linear_factor);
  }
}

}  // namespace

ModelConfig ModelConfig::from_hf(const HfCheckpoint& ck, std::vector<float>& rope_factors) {
  const json& j = ck.config();
  const std::string where = ck.dir() + "/config.json";
  ModelConfig c;
  DUO_CHECK(j.contains("model_type") && j["model_type"].is_string(), "{}: no model_type", where);
  c.arch = j["model_type"].get<std::string>();
  if (c.arch == "gemma3")
    fail("{}: model_type gemma3 is the multimodal Gemma3ForConditionalGeneration, which is not supported (a "
         "text-only gemma3_text checkpoint is)", where);
  if (c.arch == "gemma3_text") c.arch = "gemma3";  // (Gemma3ForCausalLM; GGUF's name)
  if (c.arch != "llama" && c.arch != "mistral" && c.arch != "qwen2" && c.arch != "qwen3" && c.arch != "gemma3")
    fail("{}: unsupported architecture '{}' (model_type; supported: llama, mistral, qwen2, qwen3, gemma3_text)", where,
         c.arch);
  c.name = ck.dir().substr(ck.dir().find_last_of('/') + 1);
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  c.n_layers = (int)int_key(j, where, "num_hidden_layers", {}, 1, 1024);
  c.n_embd = (int)int_key(j, where, "hidden_size", {}, 1, 1 << 20);
  c.n_ff = (int)int_key(j, where, "intermediate_size", {}, 1, 1 << 22);
  c.n_heads = (int)int_key(j, where, "num_attention_heads", {}, 1, 1 << 16);
  c.n_kv_heads = (int)int_key(j, where, "num_key_value_heads", c.n_heads, 1, c.n_heads);
  c.n_ctx_train = (int)int_key(j, where, "max_position_embeddings", 2048, 1, kIntMax);
  c.n_vocab = (int)int_key(j, where, "vocab_size", {}, 1, kIntMax);
  c.norm_eps = (float)float_key(j, where, "rms_norm_eps", {}, 1.0);
  DUO_CHECK(c.n_heads % c.n_kv_heads == 0, "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}",
            where, c.n_heads, c.n_kv_heads);
  DUO_CHECK(c.n_embd % c.n_heads == 0 || j.contains("head_dim"), "{}: hidden_size {} not divisible by {} heads", where,
            c.n_embd, c.n_heads);
  c.head_dim = (int)int_key(j, where, "head_dim", c.n_embd / c.n_heads, 2, 256);
  DUO_CHECK(c.head_dim % 2 == 0, "{}: unsupported head dimension {}", where, c.head_dim);
  c.n_rot = c.head_dim;
  DUO_CHECK(!j.contains("partial_rotary_factor") || j["partial_rotary_factor"] == 1.0,
            "{}: partial rotary embeddings (partial_rotary_factor) are not supported", where);
  // transformers' weights keep each head's rows in rotate-half order (the GGUF converter
  // permutes llama's Q/K rows into interleaved pairs instead): NeoX-style RoPE on the rows as
  // stored computes exactly what transformers computes, with no copy of the weights.
  c.rope_style = RopeStyle::Neox;
  c.qkv_bias = c.arch == "qwen2" || (c.arch == "qwen3" && bool_key(j, "attention_bias", false));
  c.qk_norm = c.arch == "qwen3";
  c.tied_embeddings = bool_key(j, "tie_word_embeddings", false);
  if (c.arch == "gemma3") {
    gemma3_hf(j, where, c);
    // transformers multiplies the embeddings by sqrt(hidden_size) in the embedding's dtype
    // (Gemma3TextScaledWordEmbedding): the factor rounded to bf16 / f16 for such a checkpoint.
    const float s = std::sqrt((float)c.n_embd);
    const SafetensorsTensor* e = ck.find("model.embed_tokens.weight");
    const auto type = e ? e->type : std::nullopt;
    c.embd_scale = type == GgmlType::BF16  ? bf16_to_f32(f32_to_bf16(s))
                   : type == GgmlType::F16 ? f16_to_f32(f32_to_f16(s))
                                           : s;
    return c;
  }

  const std::string act = j.value("hidden_act", std::string("silu"));
  DUO_CHECK(act == "silu", "{}: hidden_act '{}' is not supported (supported: silu)", where, act);
  if (c.arch == "llama" || c.arch == "mistral") {
    DUO_CHECK(!bool_key(j, "attention_bias", false), "{}: {} with attention_bias is not supported", where, c.arch);
    DUO_CHECK(!bool_key(j, "mlp_bias", false), "{}: {} with mlp_bias is not supported", where, c.arch);
  } else {
    DUO_CHECK(!bool_key(j, "use_sliding_window", false),
              "{}: {} with use_sliding_window (sliding-window layers) is not supported", where, c.arch);
  }
  // Mistral's sliding_window (4096 in Mistral-7B-v0.1, null from v0.2 on) is honoured by the
  // context cap ModelConfig::sliding_window describes: exact inside the window, refused beyond.
  if (c.arch == "mistral" && j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    const int64_t w = int_key(j, where, "sliding_window", {}, 1, kIntMax);
    if (w < c.n_ctx_train) c.sliding_window = (int)w, c.n_ctx_train = (int)w;
  }

  // RoPE: transformers 5 keeps theta and the scaling together in rope_parameters; transformers
  // 4 writes rope_theta and rope_scaling at the top level.
  json scaling;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    scaling = j["rope_parameters"];
    c.rope_theta = (float)float_key(scaling, where, "rope_theta", 10000.0, 1e30);
  } else {
    c.rope_theta = (float)float_key(j, where, "rope_theta", 10000.0, 1e30);
    if (j.contains("rope_scaling")) scaling = j["rope_scaling"];
  }
  rope_factors.clear();
  if (scaling.is_object()) {
    std::string type = scaling.value("rope_type", std::string());
    if (type.empty()) type = scaling.value("type", std::string("default"));
    if (type == "llama3")
      rope_factors = llama3_factors(scaling, where, c.rope_theta, c.head_dim);
    else if (type == "linear")
      // Position interpolation (Llama-2-7B-32K: factor 8 over a 4K model): transformers divides
      // every inverse frequency by the factor (_compute_linear_scaling_rope_parameters), which
      // Model::init_rope does with rope_linear_factor.
      c.rope_linear_factor = (float)float_key(scaling, where, "factor", {}, 1e6);
    else
      DUO_CHECK(type == "default", "{}: RoPE scaling '{}' is not supported (supported: default, linear, llama3)", where,
                type);
  } else {
    DUO_CHECK(scaling.is_null(), "{}: rope_scaling is neither an object nor null", where);
  }
  return c;
}

}  // namespace duo
