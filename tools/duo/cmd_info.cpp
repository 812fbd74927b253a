// `duo info`: what a model is (architecture, shape, tensor types, tokenizer, template), for a
// GGUF file or a Hugging Face directory alike.
#include <fmt/core.h>

#include <filesystem>
#include <map>

#include "commands.h"
#include "io/gguf.h"
#include "io/hf_checkpoint.h"
#include "model/config.h"

namespace duo::cli {

namespace {

// The lines both kinds of model have, from the config duo runs the model with.
void print_config(const ModelConfig& c) {
  fmt::print("name          {}\n", c.name);
  fmt::print("architecture  {}\n", c.arch);
  fmt::print("layers        {}\n", c.n_layers);
  fmt::print("embedding     {}\n", c.n_embd);
  fmt::print("ffn           {}\n", c.n_ff);
  fmt::print("heads         {} query, {} kv (group {}), head dim {}\n", c.n_heads, c.n_kv_heads, c.group_size(),
             c.head_dim);
  fmt::print("vocab         {}\n", c.n_vocab);
  fmt::print("context       {}\n", c.n_ctx_train);
  if (c.sliding_window > 0)
    fmt::print("sliding win   {} (no sliding-window attention: the context is limited to it)\n", c.sliding_window);
  fmt::print("rope          theta {}, {}\n", c.rope_theta,
             c.rope_style == RopeStyle::Neox ? "neox (rotate half)" : "interleaved pairs");
  fmt::print("norm eps      {}\n", c.norm_eps);
  fmt::print("qkv bias      {}\n", c.qkv_bias ? "yes" : "no");
  if (c.qk_norm) fmt::print("q/k norm      yes (per head, before RoPE)\n");
  if (c.arch == "gemma3") {
    int local = 0;
    for (int l = 0; l < c.n_layers; ++l) local += c.is_local(l);
    fmt::print("local layers  {} of {}: sliding window {}, rope theta {} (global: linear scaling x{})\n", local,
               c.n_layers, c.local_window, c.rope_local_theta, c.rope_linear_factor);
    fmt::print("gemma3        sandwich norms, GeGLU, embeddings x {}, attention scale 1/sqrt({}), final softcap {}\n",
               c.embd_scale, c.query_scale, c.final_softcap > 0 ? fmt::format("{}", c.final_softcap) : "none");
    fmt::print("devices       {}\n", c.head_dim == 64 || c.head_dim == 128
                                        ? "cpu, cuda"
                                        : "cpu only (the CUDA kernels take heads of 64 or 128 dimensions)");
  }
  fmt::print("tied embed    {}\n", c.tied_embeddings ? "yes" : "no");
}

// type name -> (tensors, bytes)
using TypeCounts = std::map<std::string, std::pair<int, uint64_t>>;

void print_types(const TypeCounts& types, int64_t params) {
  fmt::print("parameters    {:.1f} M\n", params / 1e6);
  for (const auto& [name, e] : types)
    fmt::print("  {:<6} {:>4} tensors {:>9.1f} MiB\n", name, e.first, e.second / 1048576.0);
}

void info_gguf(const std::string& path, bool all) {
  auto f = GgufFile::open(path);
  const ModelConfig c = ModelConfig::from_gguf(*f);
  fmt::print("file          {}\n", path);
  fmt::print("gguf version  {}, {:.1f} MiB, {} tensors, {} metadata keys\n", f->version(), f->file_size() / 1048576.0,
             f->tensors().size(), f->metadata().size());
  print_config(c);
  TypeCounts types;
  int64_t params = 0;
  for (const auto& t : f->tensors()) {
    auto& e = types[type_name(t.type)];
    e.first++;
    e.second += t.nbytes;
    params += t.n_elements();
  }
  print_types(types, params);
  if (auto tm = f->opt_string("tokenizer.ggml.model"))
    fmt::print("tokenizer     {} / {}\n", *tm, f->opt_string("tokenizer.ggml.pre").value_or("-"));
  fmt::print("chat template {}\n", f->has("tokenizer.chat_template") ? "yes" : "no");
  if (all)
    for (const auto& [k, v] : f->metadata()) fmt::print("  {} = {}\n", k, to_string(v));
}

// A JSON value's "type" string, or "-".
std::string type_of(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_object()) return "-";
  return j[key].value("type", std::string("-"));
}

void info_hf(const std::string& dir, bool all) {
  auto ck = HfCheckpoint::open(dir);
  std::vector<float> rope_factors;
  const ModelConfig c = ModelConfig::from_hf(*ck, rope_factors);
  TypeCounts types;
  int64_t params = 0, n_tensors = 0;
  uint64_t bytes = 0;
  for (const auto& file : ck->files())
    for (const auto& [name, t] : file->tensors()) {
      auto& e = types[t.dtype];
      e.first++;
      e.second += t.nbytes;
      params += t.n_elements();
      bytes += t.nbytes;
      ++n_tensors;
    }
  fmt::print("directory     {}\n", dir);
  fmt::print("hf checkpoint {} safetensors file{}, {:.1f} MiB, {} tensors\n", ck->n_files(),
             ck->n_files() == 1 ? "" : "s", bytes / 1048576.0, n_tensors);
  print_config(c);
  if (!rope_factors.empty()) fmt::print("rope scaling  llama3 ({} per-frequency factors)\n", rope_factors.size());
  print_types(types, params);
  namespace fs = std::filesystem;
  const fs::path tj = fs::path(dir) / "tokenizer.json";
  if (fs::exists(tj)) {
    const nlohmann::json t = read_json_file(tj.string());
    fmt::print("tokenizer     {} / pre-tokenizer {}, normalizer {}, {} added tokens\n", type_of(t, "model"),
               type_of(t, "pre_tokenizer"), type_of(t, "normalizer"),
               t.contains("added_tokens") && t["added_tokens"].is_array() ? t["added_tokens"].size() : 0);
  } else {
    fmt::print("tokenizer     none (no tokenizer.json)\n");
  }
  bool tmpl = fs::exists(fs::path(dir) / "chat_template.jinja") || fs::exists(fs::path(dir) / "chat_template.json");
  const fs::path tc = fs::path(dir) / "tokenizer_config.json";
  if (!tmpl && fs::exists(tc)) tmpl = read_json_file(tc.string()).contains("chat_template");
  fmt::print("chat template {}\n", tmpl ? "yes" : "no");
  if (all) fmt::print("config.json\n{}\n", ck->config().dump(2));
}

}  // namespace

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "print model metadata");
  auto model = std::make_shared<std::string>();
  auto all = std::make_shared<bool>(false);
  cmd->add_option("-m,--model", *model, "GGUF model file or Hugging Face directory (default: the fetched SmolLM2)");
  cmd->add_flag("--all", *all, "print every metadata key (GGUF) or the whole config.json (directory)");
  cmd->callback([model, all] {
    ModelOptions o;
    o.model = *model;
    const std::string path = engine_options(o).model_path;
    if (is_directory(path))
      info_hf(path, *all);
    else
      info_gguf(path, *all);
  });
}

}  // namespace duo::cli
