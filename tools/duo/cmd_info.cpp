// `duo info`: what a GGUF model is (architecture, shape, tensor types, tokenizer, template).
#include <fmt/core.h>

#include <map>

#include "commands.h"
#include "io/gguf.h"
#include "model/config.h"

namespace duo::cli {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "print model metadata");
  auto model = std::make_shared<std::string>();
  auto all = std::make_shared<bool>(false);
  cmd->add_option("-m,--model", *model, "GGUF model file (default: the fetched SmolLM2)");
  cmd->add_flag("--all", *all, "print every metadata key");
  cmd->callback([model, all] {
    ModelOptions o;
    o.model = *model;
    const std::string path = engine_options(o).model_path;
    auto f = GgufFile::open(path);
    const ModelConfig c = ModelConfig::from_gguf(*f);
    fmt::print("file          {}\n", path);
    fmt::print("gguf version  {}, {:.1f} MiB, {} tensors, {} metadata keys\n", f->version(),
               f->file_size() / 1048576.0, f->tensors().size(), f->metadata().size());
    fmt::print("name          {}\n", c.name);
    fmt::print("architecture  {}\n", c.arch);
    fmt::print("layers        {}\n", c.n_layers);
    fmt::print("embedding     {}\n", c.n_embd);
    fmt::print("ffn           {}\n", c.n_ff);
    fmt::print("heads         {} query, {} kv (group {}), head dim {}\n", c.n_heads, c.n_kv_heads, c.group_size(),
               c.head_dim);
    fmt::print("vocab         {}\n", c.n_vocab);
    fmt::print("context       {}\n", c.n_ctx_train);
    fmt::print("rope          theta {}, {}\n", c.rope_theta,
               c.rope_style == RopeStyle::Neox ? "neox (rotate half)" : "interleaved pairs");
    fmt::print("norm eps      {}\n", c.norm_eps);
    fmt::print("qkv bias      {}\n", c.qkv_bias ? "yes" : "no");
    fmt::print("tied embed    {}\n", c.tied_embeddings ? "yes" : "no");
    std::map<std::string, std::pair<int, uint64_t>> types;
    int64_t params = 0;
    for (const auto& t : f->tensors()) {
      auto& e = types[type_name(t.type)];
      e.first++;
      e.second += t.nbytes;
      params += t.n_elements();
    }
    fmt::print("parameters    {:.1f} M\n", params / 1e6);
    for (const auto& [name, e] : types)
      fmt::print("  {:<6} {:>4} tensors {:>9.1f} MiB\n", name, e.first, e.second / 1048576.0);
    if (auto tm = f->opt_string("tokenizer.ggml.model")) fmt::print("tokenizer     {} / {}\n", *tm,
                                                                    f->opt_string("tokenizer.ggml.pre").value_or("-"));
    fmt::print("chat template {}\n", f->has("tokenizer.chat_template") ? "yes" : "no");
    if (*all)
      for (const auto& [k, v] : f->metadata()) fmt::print("  {} = {}\n", k, to_string(v));
  });
}

}  // namespace duo::cli
