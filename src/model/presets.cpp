#include "model/presets.h"

#include "core/error.h"

namespace duo {

namespace {

ModelConfig shape(const char* name, const char* arch, int layers, int embd, int ff, int heads, int kv_heads,
                  int vocab, int ctx, float theta, bool qwen) {
  ModelConfig c;
  c.name = name;
  c.arch = arch;
  c.n_layers = layers;
  c.n_embd = embd;
  c.n_ff = ff;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = embd / heads;
  c.n_rot = c.head_dim;
  c.n_vocab = vocab;
  c.n_ctx_train = ctx;
  c.rope_theta = theta;
  c.norm_eps = qwen ? 1e-6f : 1e-5f;
  c.rope_style = qwen ? RopeStyle::Neox : RopeStyle::Interleaved;
  c.qkv_bias = qwen;
  c.tied_embeddings = false;
  return c;
}

const std::vector<ModelPreset>& presets() {
  static const std::vector<ModelPreset> p = {
      // Meta-Llama-3-8B: GQA 32 query / 8 KV heads.
      {"llama3-8b", shape("Llama-3-8B (synthetic)", "llama", 32, 4096, 14336, 32, 8, 128256, 8192, 500000.0f, false),
       "Meta-Llama-3.1-8B-Instruct.tsv"},
      // Llama-2-7B: MHA, 32 query and KV heads (the paper's MHA case; pattern of its 32K variant).
      {"llama2-7b", shape("Llama-2-7B (synthetic)", "llama", 32, 4096, 11008, 32, 32, 32000, 4096, 10000.0f, false),
       "Llama-2-7B-32K-Instruct.tsv"},
      // Qwen2.5-7B: GQA 28 / 4 heads, QKV bias, no published pattern (seeded random gates).
      {"qwen2.5-7b", shape("Qwen2.5-7B (synthetic)", "qwen2", 28, 3584, 18944, 28, 4, 152064, 32768, 1e6f, true), ""},
  };
  return p;
}

}  // namespace

const ModelPreset& model_preset(const std::string& name) {
  for (const auto& p : presets())
    if (p.name == name) return p;
  std::string known;
  for (const auto& p : presets()) known += (known.empty() ? "" : ", ") + p.name;
  fail("unknown model shape '{}' (known: {})", name, known);
}

std::vector<std::string> model_preset_names() {
  std::vector<std::string> v;
  for (const auto& p : presets()) v.push_back(p.name);
  return v;
}

}  // namespace duo
