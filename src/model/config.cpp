#include "model/config.h"

#include "core/error.h"
#include "io/gguf.h"

namespace duo {

ModelConfig ModelConfig::from_gguf(const GgufFile& f) {
  ModelConfig c;
  c.arch = f.get_string("general.architecture");
  if (c.arch != "llama" && c.arch != "qwen2")
    fail("{}: unsupported architecture '{}' (supported: llama, qwen2)", f.path(), c.arch);
  const std::string p = c.arch + ".";
  c.name = f.opt_string("general.name").value_or(c.arch);
  c.n_layers = (int)f.get_int(p + "block_count");
  c.n_embd = (int)f.get_int(p + "embedding_length");
  c.n_ff = (int)f.get_int(p + "feed_forward_length");
  c.n_heads = (int)f.get_int(p + "attention.head_count");
  c.n_kv_heads = (int)f.opt_int(p + "attention.head_count_kv").value_or(c.n_heads);
  c.n_ctx_train = (int)f.opt_int(p + "context_length").value_or(2048);
  c.norm_eps = (float)f.get_float(p + "attention.layer_norm_rms_epsilon");
  c.rope_theta = (float)f.opt_float(p + "rope.freq_base").value_or(10000.0);
  c.qkv_bias = c.arch == "qwen2";
  c.rope_style = c.arch == "qwen2" ? RopeStyle::Neox : RopeStyle::Interleaved;
  c.tied_embeddings = f.find_tensor("output.weight") == nullptr;

  DUO_CHECK(c.n_layers > 0 && c.n_layers <= 1024, "{}: implausible block_count {}", f.path(), c.n_layers);
  DUO_CHECK(c.n_heads > 0 && c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0,
            "{}: head_count {} is not a multiple of head_count_kv {}", f.path(), c.n_heads, c.n_kv_heads);
  DUO_CHECK(c.n_embd > 0 && c.n_embd % c.n_heads == 0, "{}: embedding_length {} not divisible by {} heads",
            f.path(), c.n_embd, c.n_heads);
  c.head_dim = c.n_embd / c.n_heads;
  if (auto kl = f.opt_int(p + "attention.key_length")) c.head_dim = (int)*kl;
  DUO_CHECK(c.head_dim % 2 == 0 && c.head_dim <= 256, "{}: unsupported head dimension {}", f.path(), c.head_dim);
  c.n_rot = (int)f.opt_int(p + "rope.dimension_count").value_or(c.head_dim);
  DUO_CHECK(c.n_rot == c.head_dim, "{}: partial rotary embeddings ({} of {} dims) are not supported", f.path(),
            c.n_rot, c.head_dim);
  if (auto scaling = f.opt_string(p + "rope.scaling.type"))
    DUO_CHECK(*scaling == "none", "{}: RoPE scaling '{}' is not supported", f.path(), *scaling);

  const auto& embd = f.tensor("token_embd.weight");
  DUO_CHECK(embd.dims.size() == 2 && embd.dims[0] == c.n_embd, "{}: token_embd.weight has shape incompatible with n_embd {}",
            f.path(), c.n_embd);
  c.n_vocab = (int)embd.dims[1];
  return c;
}

}  // namespace duo
