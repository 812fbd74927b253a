// Each `duo` subcommand registers itself on the CLI11 app and runs from its callback.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "duo/engine.h"

namespace duo::cli {

void add_info(CLI::App& app);
void add_generate(CLI::App& app);
void add_chat(CLI::App& app);
void add_bench(CLI::App& app);
void add_demo(CLI::App& app);
void add_eval(CLI::App& app);
// `duo eval ruler` (cmd_eval_ruler.cpp), added by add_eval.
void add_ruler_eval(CLI::App& eval);
void add_pattern(CLI::App& app);
void add_serve(CLI::App& app);
void add_calibrate(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_logits(CLI::App& app);

// Options shared by the commands that load a model.
struct ModelOptions {
  std::string model;
  int threads = 0;
  std::string attention = "full";
  int sink = 64, recent = 256;
  int64_t chunk = 512;
  int64_t max_context = 0;
  std::string pattern;           // gate matrix TSV for --attention duo
  double retrieval_ratio = -1;   // keep this fraction as retrieval heads (< 0: use threshold)
  float threshold = 0.5f;
  std::string ratio_policy = "global";  // how --retrieval-ratio spreads heads over layers (RatioPolicy)
  std::string device = "cpu";    // cpu | cuda
  std::string kv_type = "default";  // KV cache storage: f32, bf16, f16, q8, q4 (default: f32 CPU, bf16 CUDA)
  int act_bits = 16;  // CPU many-token matmul activations: 16 or 8 bits
  std::string gpu_weights = "bf16";  // weight matrices on the GPU: bf16 or int8
};
void add_model_options(CLI::App& cmd, ModelOptions& o, bool with_attention = true);
// Resolves -m (default: the fetched SmolLM2) and builds engine options; throws with advice
// when the model file is missing.
EngineOptions engine_options(const ModelOptions& o);
std::string default_model_path();
// A model's short name from its path: a GGUF file's name without the extension, a Hugging Face
// directory's whole name (dots and all: "Llama-3.1-8B-Instruct"; a trailing slash ignored).
std::string model_name_of_path(const std::string& path);
// Adds --temp/--temperature, --top-k, --top-p and --seed; returns the --seed option.
CLI::Option* add_sampling_options(CLI::App& cmd, SamplerConfig& s);
// The seed asked with --seed, or a fresh random one when none was given (printed by the
// caller, so a run that sampled something worth keeping can be repeated).
uint64_t resolve_seed(const CLI::Option* seed_option, uint64_t given);
// Refuses NaN and infinities, which CLI11's range checks let through (every comparison with NaN
// is false, so "--retrieval-ratio nan" passed Range(0, 1)).
const CLI::Validator& finite_number();
// Largest --sink and --recent: sink + recent must stay far inside int (KV cache rows).
constexpr int kMaxWindow = 1 << 24;

// --chat-template FILE: a Jinja chat template to use instead of the model's own.
void add_chat_template_option(CLI::App& cmd, std::string& file);

// The whole file as bytes; a clear error when it cannot be read.
std::string read_text_file(const std::string& path);

// The comma-separated items of s. With `option` an empty item ("a,,b", a trailing comma, an
// empty s) is an error naming the option; without, empty items are skipped.
std::vector<std::string> split_commas(const std::string& s, const char* option = nullptr);

// Peak resident memory of this process in MiB (from /proc/self/status VmHWM).
double peak_rss_mib();

// `duo bench --device cuda` (cmd_bench_cuda.cpp): pre-fill latency and decode ms/token of
// several attention modes on the GPU, with attention-kernel throughput and peak memory.
struct CudaBenchOptions {
  std::string synthetic;  // model shape with synthetic weights (llama3-8b, ...); empty: -m model
  std::string modes = "full,duo25,duo50,streaming";
  std::string prefill = "8192,32768,131072";
  std::string decode = "32768,131072,262144,524288,1048576";
  int decode_steps = 32;
  int64_t chunk = 8192;  // pre-fill chunk unless --chunk is given
  std::string out;       // JSON document to write
  uint64_t seed = 1;
  // --find-max-context: for each mode x KV type, the longest context whose cache fits next to
  // the weights, verified by allocating it, and decode ms/token there.
  bool find_max_context = false;
  bool each_kv_type = false;  // pre-fill and decode tables: every mode with each of kv_types
  std::string kv_types = "bf16,q8,q4";
  int64_t context_cap = (1 << 24) - 4096;  // RoPE positions (and the decode steps after) stay exact floats < 2^24
  // --batch-context: continuous-batching decode of many sequences at this context, for each
  // mode x KV type: the most sequences that fit, tokens/s there, and step time at --equal-batch.
  int64_t batch_context = 0;
  int equal_batch = 16;
  int max_sequences = 512;
};
void add_cuda_bench_options(CLI::App& cmd, CudaBenchOptions& o);
void run_cuda_bench(const ModelOptions& mo, CudaBenchOptions bo, bool chunk_given, bool json);

}  // namespace duo::cli
