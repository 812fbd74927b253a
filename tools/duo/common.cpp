#include <cmath>
#include <filesystem>
#include <fstream>

#include "commands.h"
#include "core/error.h"
#include "io/head_pattern.h"
#include "io/hf_checkpoint.h"

namespace duo::cli {

std::string default_model_path() {
  std::string dir;
  if (const char* d = std::getenv("DUO_MODELS"))
    dir = d;
  else
    dir = std::string(std::getenv("HOME") ? std::getenv("HOME") : "/root") + "/.cache/duo/models";
  return dir + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::string model_name_of_path(const std::string& path) {
  std::filesystem::path p(path);
  if (!p.has_filename()) p = p.parent_path();  // "dir/"
  return is_directory(path) ? p.filename().string() : p.stem().string();
}

const CLI::Validator& finite_number() {
  static const CLI::Validator v(
      [](std::string& s) -> std::string {
        double d = 0;
        if (!CLI::detail::lexical_cast(s, d)) return "not a number: " + s;
        return std::isfinite(d) ? "" : "must be a finite number (got " + s + ")";
      },
      "FINITE");
  return v;
}

void add_model_options(CLI::App& cmd, ModelOptions& o, bool with_attention) {
  cmd.add_option("-m,--model", o.model,
                 "GGUF model file or Hugging Face directory (default: the fetched SmolLM2-135M-Instruct)");
  cmd.add_option("-t,--threads", o.threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  cmd.add_option("--chunk", o.chunk, "pre-fill chunk size in tokens")->check(CLI::PositiveNumber);
  cmd.add_option("-c,--max-context,--ctx-size", o.max_context, "context limit in tokens (0: the model's)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--device", o.device, "where the model runs: cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd.add_option("--kv-type", o.kv_type,
                 "KV cache storage: f32, bf16, f16 (CPU only), q8, q4 (KIVI: keys per channel, values per token, "
                 "groups of 64; sinks and the last partial group in bf16); default f32 on the CPU, bf16 on CUDA")
      ->check(CLI::IsMember({"default", "f32", "bf16", "f16", "q8", "q4"}));
  cmd.add_option("--gpu-weights", o.gpu_weights,
                 "with --device cuda: weight matrices in bf16, or int8 weight-only (a scale a row; half the bytes)")
      ->check(CLI::IsMember({"bf16", "int8"}));
  cmd.add_option("--act-bits", o.act_bits,
                 "CPU pre-fill/batched matmul activations: 16, or 8 (int8, for Q4_0/Q4_1/Q8_0 weights with AVX-512 "
                 "VNNI: faster, less exact; other weight types keep 16)")
      ->check(CLI::IsMember({8, 16}));
  if (with_attention) {
    cmd.add_option("--attention", o.attention, "attention mode: full, streaming or duo")
        ->check(CLI::IsMember({"full", "streaming", "duo"}));
    cmd.add_option("--sink", o.sink, "attention-sink tokens kept by streaming heads")->check(CLI::Range(0, kMaxWindow));
    cmd.add_option("--recent", o.recent, "recent tokens kept by streaming heads")->check(CLI::Range(1, kMaxWindow));
    cmd.add_option("--pattern", o.pattern, "head pattern: gate matrix TSV (rows layers, columns KV heads)");
    cmd.add_option("--retrieval-ratio", o.retrieval_ratio, "fraction of KV heads kept as retrieval heads")
        ->check(CLI::Range(0.0, 1.0))
        ->check(finite_number());
    cmd.add_option("--ratio-policy", o.ratio_policy,
                   "how --retrieval-ratio picks heads: global (the top gates over all layers), per-layer (the same "
                   "count spread evenly over the layers) or min-per-layer=K (at least K heads a layer, the rest "
                   "globally)")
        ->check([](const std::string& v) {
          try {
            parse_ratio_policy(v);
            return std::string();
          } catch (const Error& e) {
            return std::string(e.what());
          }
        });
    cmd.add_option("--threshold", o.threshold, "gate threshold for retrieval heads (without --retrieval-ratio)")
        ->check(CLI::Range(0.0, 1.0))
        ->check(finite_number());
  }
}

EngineOptions engine_options(const ModelOptions& o) {
  EngineOptions e;
  e.model_path = o.model.empty() ? default_model_path() : o.model;
  if (!std::filesystem::exists(e.model_path)) {
    if (o.model.empty())
      fail("default model not found at {}; fetch it with: python3 scripts/fetch_models.py smollm2", e.model_path);
    fail("model file not found: {}", e.model_path);
  }
  e.threads = o.threads;
  e.attention = parse_attention_mode(o.attention);
  e.window = {o.sink, o.recent};
  e.chunk = o.chunk;
  e.max_context = o.max_context;
  e.device = parse_device(o.device);
  e.kv_type = parse_kv_type(o.kv_type);
  e.gpu_weights = parse_weight_format(o.gpu_weights);
  e.act_bits = o.act_bits;
  DUO_CHECK(e.gpu_weights == WeightFormat::Bf16 || e.device == Device::Cuda, "--gpu-weights needs --device cuda");
  // Refused rather than ignored: nothing may silently run differently from what was asked.
  DUO_CHECK(e.act_bits == 16 || e.device == Device::Cpu,
            "--act-bits 8 is a CPU matmul mode; the CUDA backend runs bf16 activations (drop --act-bits)");
  if (e.attention == AttentionMode::Duo) {
    DUO_CHECK(!o.pattern.empty(), "--attention duo needs --pattern FILE (a gate matrix TSV)");
    const GateMatrix g = load_gates_tsv(o.pattern);
    DUO_CHECK(o.ratio_policy == "global" || o.retrieval_ratio >= 0, "--ratio-policy needs --retrieval-ratio");
    e.plan.kinds = o.retrieval_ratio >= 0 ? binarize_ratio(g, o.retrieval_ratio, parse_ratio_policy(o.ratio_policy))
                                          : binarize_threshold(g, o.threshold);
    e.pattern_origin = o.pattern;
  } else {
    DUO_CHECK(o.pattern.empty(), "--pattern is only used with --attention duo");
  }
  return e;
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DUO_CHECK(f.good(), "cannot read '{}'", path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::vector<std::string> split_commas(const std::string& s, const char* option) {
  std::vector<std::string> out;
  for (size_t at = 0; at <= s.size();) {
    const size_t comma = std::min(s.find(',', at), s.size());
    if (comma > at)
      out.push_back(s.substr(at, comma - at));
    else
      DUO_CHECK(!option, "{}: empty item in '{}'", option, s);
    at = comma + 1;
  }
  return out;
}

double peak_rss_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0.0;
}

void add_chat_template_option(CLI::App& cmd, std::string& file) {
  cmd.add_option("--chat-template", file,
                 "Jinja chat template file to use instead of the model's own (GGUF tokenizer.chat_template, or the "
                 "HF directory's chat_template.jinja / tokenizer_config.json)")
      ->check(CLI::ExistingFile);
}

}  // namespace duo::cli
