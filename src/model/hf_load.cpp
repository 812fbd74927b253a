// Model::load_hf: the llama-family decoder over a Hugging Face directory's safetensors weights,
// mapped onto the same weight views the GGUF loader builds (F32/F16/BF16 matrices read in place).
#include <cmath>

#include "core/dequant.h"
#include "core/error.h"
#include "core/nonfinite_scan.h"
#include "io/gguf.h"  // Model's members (its inline constructor destroys them on a throw)
#include "io/hf_checkpoint.h"
#include "model/model.h"

#include <fmt/ranges.h>

namespace duo {

namespace {

const SafetensorsTensor& readable(const HfCheckpoint& ck, const std::string& name) {
  const SafetensorsTensor& t = ck.tensor(name);
  DUO_CHECK(t.type.has_value(), "{}: tensor '{}' has dtype {}, which duo cannot read (supported: F32, F16, BF16)",
            ck.file_of(name), name, t.dtype);
  return t;
}

// A [rows, cols] matrix (PyTorch's Linear layout: one output per row, as GGUF's ne = [cols, rows]).
WeightView hf_weight(const HfCheckpoint& ck, const std::string& name, int64_t cols, int64_t rows, size_t& total) {
  const SafetensorsTensor& t = readable(ck, name);
  DUO_CHECK(t.shape.size() == 2 && t.shape[0] == rows && t.shape[1] == cols,
            "{}: tensor '{}' has shape [{}], expected [{}, {}]", ck.file_of(name), name, fmt::join(t.shape, ", "), rows,
            cols);
  const int64_t bad = first_nonfinite(*t.type, t.data, rows * cols);
  DUO_CHECK(bad < 0, "{}: tensor '{}' holds a non-finite value (NaN or infinity) at element {}", ck.file_of(name),
            name, bad);
  total += t.nbytes;
  WeightView w;
  w.type = *t.type;
  w.data = t.data;
  w.rows = rows;
  w.cols = cols;
  w.row_stride = row_bytes(w.type, cols);
  return w;
}

// A 1-D tensor (norm weight, bias) decoded to float and checked finite (as the GGUF loader).
std::vector<float> hf_vector(const HfCheckpoint& ck, const std::string& name, int64_t n, size_t& total) {
  const SafetensorsTensor& t = readable(ck, name);
  DUO_CHECK(t.shape.size() == 1 && t.shape[0] == n, "{}: tensor '{}' has shape [{}], expected [{}]", ck.file_of(name),
            name, fmt::join(t.shape, ", "), n);
  total += t.nbytes;
  std::vector<float> v((size_t)n);
  dequantize_row(*t.type, t.data, v.data(), n);
  for (int64_t i = 0; i < n; ++i)
    DUO_CHECK(std::isfinite(v[(size_t)i]), "{}: tensor '{}' holds a non-finite value ({}) at index {}",
              ck.file_of(name), name, v[(size_t)i], i);
  return v;
}

}  // namespace

std::unique_ptr<Model> Model::load_hf(const std::string& dir) {
  std::unique_ptr<Model> m(new Model());
  m->hf_ = HfCheckpoint::open(dir);
  const HfCheckpoint& ck = *m->hf_;
  std::vector<float> rope_factors;
  m->cfg_ = ModelConfig::from_hf(ck, rope_factors);
  const ModelConfig& c = m->cfg_;
  ModelWeights& w = m->w_;
  size_t& total = w.bytes;
  const int64_t E = c.n_embd;

  w.tok_embd = hf_weight(ck, "model.embed_tokens.weight", E, c.n_vocab, total);
  // Gemma3RMSNorm computes x * (1 + w): its weights get the 1 here, as llama.cpp's converter
  // stores them, so one rmsnorm serves every architecture.
  const float norm_shift = c.arch == "gemma3" ? 1.0f : 0.0f;
  auto norm = [&](const std::string& name, int64_t n) {
    std::vector<float> v = hf_vector(ck, name, n, total);
    if (norm_shift != 0.0f && name.ends_with("norm.weight"))
      for (float& x : v) x += norm_shift;
    return v;
  };
  if (c.tied_embeddings) {
    w.output = w.tok_embd;
  } else {
    DUO_CHECK(ck.find("lm_head.weight") != nullptr,
              "{}: no tensor 'lm_head.weight' and config.json does not tie the embeddings (tie_word_embeddings)",
              ck.dir());
    w.output = hf_weight(ck, "lm_head.weight", E, c.n_vocab, total);
  }
  w.output_norm = norm("model.norm.weight", E);
  // Q and K rows as stored (rotate-half order): the config's RopeStyle::Neox matches them.
  // With sandwich norms (gemma3) post_attention_layernorm is the attention output's norm and
  // pre_feedforward_layernorm the feed-forward input's.
  assemble_layers(
      w, c,
      {"model.layers.", "input_layernorm.weight",
       c.sandwich_norms ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight",
       "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
       "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "self_attn.q_proj.bias",
       "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
       "post_attention_layernorm.weight", "post_feedforward_layernorm.weight"},
      [&](const std::string& name, int64_t cols, int64_t rows) { return hf_weight(ck, name, cols, rows, total); },
      norm);
  m->init_rope(rope_factors.empty() ? nullptr : &rope_factors);
  return m;
}

}  // namespace duo
