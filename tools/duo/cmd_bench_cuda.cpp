// `duo bench --device cuda`: for each attention mode (full, duo at given retrieval ratios,
// streaming), pre-fill latency at given prompt lengths (chunked) and decode ms/token at given
// context lengths, with the attention kernels timed separately (CUDA events: TFLOP/s for
// pre-fill, GB/s for decode), KV bytes, peak GPU memory, and ratios against full attention
// measured in the same run. Full-size shapes run with synthetic weights made on the GPU
// (--synthetic llama3-8b | llama2-7b | qwen2.5-7b); duo modes binarize the published gate
// matrix of the shape (tests/fixtures/patterns) at the ratio. Decode contexts are filled with
// a kernel (random keys and values) instead of a real pre-fill: decode speed depends on how
// much each head reads, not on the values. A length whose KV cache would not fit is skipped
// with the reason. bench/cuda/run_model_bench.sh runs this and the PyTorch baseline together.
#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "commands.h"
#include "duo/duo_policy.h"
#include "core/error.h"
#include "engine/backend.h"
#include "io/head_pattern.h"
#include "kv/attention_cost.h"
#include "model/model.h"
#include "model/presets.h"
#include "duo/sampler.h"

namespace duo::cli {

void add_cuda_bench_options(CLI::App& cmd, CudaBenchOptions& o) {
  cmd.add_option("--synthetic", o.synthetic,
                 "with --device cuda: a full-size model shape with synthetic weights (" +
                     [] {
                       std::string s;
                       for (const auto& n : model_preset_names()) s += (s.empty() ? "" : ", ") + n;
                       return s;
                     }() + ")");
  cmd.add_option("--modes", o.modes, "with --device cuda: attention modes (full, streaming, duoNN = NN% retrieval heads)");
  cmd.add_option("--prefill", o.prefill, "with --device cuda: pre-fill lengths (comma-separated, 0 or empty: none)");
  cmd.add_option("--decode", o.decode, "with --device cuda: decode context lengths (comma-separated, empty: none)");
  cmd.add_option("--decode-steps", o.decode_steps, "with --device cuda: timed decode steps per context")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--out", o.out, "with --device cuda: write the results as a JSON document to this file");
  cmd.add_option("--bench-seed", o.seed, "with --device cuda: seed of synthetic weights, tokens and KV contents");
  cmd.add_flag("--find-max-context", o.find_max_context,
               "with --device cuda: for each of --modes x --kv-types, the longest context that fits the device "
               "(searched with exact byte formulas, verified by allocating it) and decode ms/token there");
  cmd.add_option("--kv-types", o.kv_types,
                 "with --find-max-context, --batch-context or --each-kv-type: KV cache types to try (bf16, q8, q4)");
  cmd.add_flag("--each-kv-type", o.each_kv_type,
               "with --device cuda: the pre-fill and decode tables run every mode with each of --kv-types (decode "
               "attention GB/s of each type beside the copy bandwidth)");
  cmd.add_option("--context-cap", o.context_cap, "with --find-max-context: the longest context tried")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--batch-context", o.batch_context,
                 "with --device cuda: batched decode of many sequences of this context, for each of --modes x "
                 "--kv-types: the most sequences that fit, tokens/s at that batch, step time at --equal-batch")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--equal-batch", o.equal_batch, "with --batch-context: the batch every mode is also timed at")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--max-sequences", o.max_sequences, "with --batch-context: the largest batch tried")
      ->check(CLI::PositiveNumber);
}

#ifndef DUO_HAVE_CUDA

void run_cuda_bench(const ModelOptions&, CudaBenchOptions, bool, bool) {
  make_cuda_synthetic_backend(ModelConfig{}, 0);  // fails saying how to build with CUDA
}

#else

namespace {

using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;
constexpr double kGiB = 1073741824.0;

std::vector<int64_t> parse_lengths(const std::string& s, const char* what) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t used = 0;
    long long x = 0;
    try {
      x = std::stoll(item, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    DUO_CHECK(used == item.size() && x >= 0, "bad {} length '{}' in '{}'", what, item, s);
    if (x > 0) v.push_back(x);
  }
  return v;
}

struct Mode {
  std::string name;
  double ratio;  // retrieval heads: 1 full, 0 streaming
  HeadPlan plan;
};

// Modes and their head plans. Duo plans binarize a gate matrix at the mode's ratio.
std::vector<Mode> make_modes(const std::string& list, const ModelConfig& c, StreamingWindow w, const GateMatrix* gates) {
  std::vector<Mode> modes;
  std::stringstream ss(list);
  std::string m;
  while (std::getline(ss, m, ',')) {
    Mode md;
    md.name = m;
    if (m == "full") {
      md.ratio = 1.0;
      md.plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, w);
    } else if (m == "streaming") {
      md.ratio = 0.0;
      md.plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, w);
    } else if (m.rfind("duo", 0) == 0 && m.size() > 3) {
      int pct = -1;
      try {
        size_t used = 0;
        pct = std::stoi(m.substr(3), &used);
        if (used != m.size() - 3) pct = -1;
      } catch (const std::logic_error&) {
      }
      DUO_CHECK(pct >= 0 && pct <= 100, "bad mode '{}': duo modes are duoNN with NN the percent of retrieval heads", m);
      md.ratio = pct / 100.0;
      md.plan = make_head_plan(binarize_ratio(*gates, md.ratio), c.n_layers, c.n_kv_heads, w, "gates");
    } else {
      fail("unknown mode '{}' (full, streaming, duoNN)", m);
    }
    modes.push_back(std::move(md));
  }
  DUO_CHECK(!modes.empty(), "no modes given");
  return modes;
}

// Gates for the duo modes: --pattern, else the shape's published pattern, else seeded random.
GateMatrix load_gates(const ModelOptions& mo, const ModelPreset* preset, const ModelConfig& c, uint64_t seed,
                      std::string& origin) {
  std::string file = mo.pattern;
  if (file.empty() && preset && !preset->pattern_file.empty()) {
    for (const std::string& dir :
         {std::string(DUO_SOURCE_DIR) + "/tests/fixtures/patterns", std::string("tests/fixtures/patterns")}) {
      if (std::filesystem::exists(dir + "/" + preset->pattern_file)) {
        file = dir + "/" + preset->pattern_file;
        break;
      }
    }
    DUO_CHECK(!file.empty(), "published pattern {} not found (give one with --pattern)", preset->pattern_file);
  }
  GateMatrix g;
  if (!file.empty()) {
    g = load_gates_tsv(file);
    DUO_CHECK(g.n_layers == c.n_layers && g.n_kv_heads == c.n_kv_heads,
              "{}: pattern is {} x {} but the model has {} layers x {} KV heads", file, g.n_layers, g.n_kv_heads,
              c.n_layers, c.n_kv_heads);
    origin = file;
    return g;
  }
  g.n_layers = c.n_layers, g.n_kv_heads = c.n_kv_heads;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int i = 0; i < c.n_layers * c.n_kv_heads; ++i) g.values.push_back(u(rng));
  origin = fmt::format("seeded random gates (seed {})", seed);
  return g;
}

// Whether `need` more bytes fit the device now, with 1 GiB left for cuBLAS and the context.
bool fits(const ModelBackend& backend, double need, std::string& why) {
  const size_t free_b = backend.device_memory().free_bytes;
  if (need + kGiB <= (double)free_b) return true;
  why = fmt::format("needs {:.1f} GiB (KV cache + activations), {:.1f} GiB free", need / kGiB, free_b / kGiB);
  return false;
}

std::vector<int32_t> random_tokens(int64_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> t((size_t)n);
  for (auto& x : t) x = u(rng);
  return t;
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// K and V bytes one decode step reads at n_past positions, all layers, for the plan's KV type:
// a retrieval head's keys as stored (quantized: codes plus params, page_bytes / kPageTokens a
// position for each of K and V), a streaming head's min(n_past, sink + recent) bf16 rows.
double decode_read_bytes(const ModelBackend& backend, const HeadPlan& plan, int64_t n_past) {
  const ModelConfig& c = backend.config();
  const KvType t = backend.kv_type(plan.kv_type);
  if (!is_quantized(t)) return decode_attention_bytes(c, plan, n_past, 2);
  const double per_key = 2.0 * (double)kvq::QuantLayout{c.head_dim, quant_bits(t)}.page_bytes() / kPageTokens;
  const int64_t W = plan.window.rows();
  double b = 0;
  for (const auto& layer : plan.kinds)
    for (HeadKind k : layer)
      b += k == HeadKind::Retrieval ? per_key * (double)n_past : 4.0 * c.head_dim * (double)std::min(n_past, W);
  return b;
}

constexpr int kWarm = 2, kTimedAttention = 4, kGraphAttentionReps = 20;

// Decode at a context filled by a kernel: ms/token over `steps` steps (the CUDA graph), then the
// attention kernels alone (events) over kTimedAttention more.
struct DecodeRun {
  double ms = 0, attn_us = 0, gbs = 0, graph_us = 0, graph_gbs = 0;
  size_t kv_bytes = 0, device_bytes = 0;
};
DecodeRun measure_decode(ModelBackend& backend, const HeadPlan& plan, int64_t ctx, int steps, int64_t chunk,
                         uint64_t seed) {
  auto s = backend.new_sequence(plan, ctx + kWarm + steps + kTimedAttention + 1);
  backend.reset_peak_memory();
  backend.fill_kv_random(*s, ctx, seed);
  Sampler greedy(SamplerConfig{});
  int32_t next = 1;
  for (int i = 0; i < kWarm; ++i) next = backend.forward_pick(*s, &next, 1, chunk, greedy);
  DecodeRun r;
  const auto t0 = clock_type::now();
  for (int i = 0; i < steps; ++i) next = backend.forward_pick(*s, &next, 1, chunk, greedy);
  r.ms = 1e3 * seconds_since(t0) / steps;
  const int64_t past0 = s->n_past();
  backend.reset_attention_timing();
  backend.set_attention_timing(true);
  for (int i = 0; i < kTimedAttention; ++i) next = backend.forward_pick(*s, &next, 1, chunk, greedy);
  backend.set_attention_timing(false);
  r.attn_us = 1e3 * backend.attention_ms() / kTimedAttention;
  r.gbs = decode_read_bytes(backend, plan, past0 + 1 + kTimedAttention / 2) / (r.attn_us * 1e-6) / 1e9;
  r.graph_us = 1e3 * backend.decode_attention_graph_ms(*s, kGraphAttentionReps);
  if (r.graph_us > 0) r.graph_gbs = decode_read_bytes(backend, plan, s->n_past()) / (r.graph_us * 1e-6) / 1e9;
  r.kv_bytes = s->kv_bytes();
  r.device_bytes = s->device_bytes();
  return r;
}

// --find-max-context: for each mode x KV type, the longest context (a multiple of 1024) whose
// cache, created for it plus the decode steps, fits the memory left beside the weights with
// `headroom` to spare (exact byte formulas: the backend's sequence_bytes_at, two pool slabs of
// mapping slack, decode activations), then verified by allocating and filling that cache and
// decoding at it; an allocation that still fails retries 2% shorter.
json run_max_context(ModelBackend& backend, const std::vector<Mode>& modes, const CudaBenchOptions& bo,
                     bool as_json) {
  constexpr double kHeadroom = 512.0 * 1048576, kSlabs = 2 * 2 * 32.0 * 1048576;
  constexpr int64_t kStep = 1024;
  const int64_t extra = kWarm + bo.decode_steps + kTimedAttention + 1;
  std::vector<KvType> types;
  {
    std::stringstream ss(bo.kv_types);
    std::string t;
    while (std::getline(ss, t, ','))
      if (!t.empty()) types.push_back(backend.kv_type(parse_kv_type(t)));
    DUO_CHECK(!types.empty(), "no KV types given (--kv-types)");
  }
  json rows = json::array();
  if (!as_json)
    fmt::print("\n{:<10} {:<5} {:>12} {:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10}  {}\n", "max ctx", "kv",
               "context", "KV GiB", "device GiB", "peak GiB", "ms/token", "attn us", "attn GB/s", "graph us",
               "graph GB/s", "note");
  for (const Mode& m0 : modes)
    for (KvType type : types) {
      HeadPlan plan = m0.plan;
      plan.kv_type = type;
      backend.release_scratch();
      const size_t free_b = backend.device_memory().free_bytes;
      const double budget = (double)free_b - kHeadroom;
      auto need = [&](int64_t n) {
        return (double)backend.sequence_bytes_at(plan, n + extra, n + extra) + kSlabs +
               (double)backend.activation_bytes(1);
      };
      json row = {{"mode", m0.name}, {"kv_type", to_string(type)}, {"free_bytes_before", free_b}};
      std::string note;
      int64_t n = 0;
      const int64_t cap = bo.context_cap / kStep * kStep;
      if (need(cap) <= budget) {
        n = cap;
        note = fmt::format("capped at {} (not limited by memory)", cap);
      } else {
        for (int64_t lo = 1, hi = cap / kStep - 1; lo <= hi;) {  // largest multiple of kStep that fits
          const int64_t mid = (lo + hi) / 2;
          if (need(mid * kStep) <= budget)
            n = mid * kStep, lo = mid + 1;
          else
            hi = mid - 1;
        }
      }
      row["formula_context"] = n;
      DecodeRun r;
      std::string failure;
      for (int attempt = 0; n > 0 && attempt < 6; ++attempt) {
        try {
          r = measure_decode(backend, plan, n, bo.decode_steps, bo.chunk, bo.seed);
          failure.clear();
          break;
        } catch (const Error& e) {
          failure = e.what();
          n -= std::max<int64_t>(n / 50 / kStep * kStep, kStep);
          backend.release_scratch();
        }
      }
      if (n <= 0 || !failure.empty()) {
        row["skipped"] = failure.empty() ? "nothing fits" : failure;
        if (!as_json) fmt::print("{:<10} {:<5}  skipped: {}\n", m0.name, to_string(type), row["skipped"].get<std::string>());
        rows.push_back(row);
        continue;
      }
      if (n != row["formula_context"].get<int64_t>()) note = fmt::format("formula said {}, allocation failed: {}",
                                                                         row["formula_context"].get<int64_t>(), note);
      const double predicted =
          (double)backend.sequence_bytes_at(plan, n + extra, n + kWarm + bo.decode_steps + kTimedAttention);
      row["context"] = n;
      row["kv_bytes"] = r.kv_bytes;
      row["cache_device_bytes"] = r.device_bytes;
      row["cache_device_bytes_formula"] = predicted;
      row["peak_bytes"] = backend.device_memory().peak_bytes;
      row["ms_per_token"] = r.ms;
      row["attn_us"] = r.attn_us;
      row["attn_gbs"] = r.gbs;
      row["attn_graph_us"] = r.graph_us;
      row["attn_graph_gbs"] = r.graph_gbs;
      if (!note.empty()) row["note"] = note;
      if (!as_json)
        fmt::print("{:<10} {:<5} {:>12} {:>8.2f} {:>10.2f} {:>9.2f} {:>9.3f} {:>9.1f} {:>10.1f} {:>9.1f} {:>10.1f}  {}\n",
                   m0.name, to_string(type), n, r.kv_bytes / kGiB, r.device_bytes / kGiB,
                   backend.device_memory().peak_bytes / kGiB, r.ms, r.attn_us, r.gbs, r.graph_us, r.graph_gbs, note);
      std::fflush(stdout);
      rows.push_back(row);
    }
  return rows;
}

// Continuous-batching decode (ModelBackend::step, every sequence one token a step, each
// picking its next token greedily on the device) of sequences filled to `ctx` positions with
// random keys and values. For each mode x KV type: how many sequences the admission rule the
// server uses (sequence_bytes against the free device memory) lets run at once, verified by
// allocating them, tokens/s over all of them, and the step time at an equal batch.
json run_batch_decode(ModelBackend& backend, const std::vector<Mode>& modes, const std::vector<KvType>& types,
                      const CudaBenchOptions& bo, bool as_json) {
  const ModelConfig& c = backend.config();
  const int64_t ctx = bo.batch_context;
  const int steps = bo.decode_steps;
  if (!as_json)
    fmt::print("\nbatched decode at {} tokens of context ({} timed steps; equal batch {}):\n{:<10} {:>5} {:>9} {:>6} "
               "{:>10} {:>10} {:>12}\n",
               ctx, steps, bo.equal_batch, "mode", "kv", "seq GiB", "fit", "tok/s", "ms/step", "ms/step@eq");
  json rows = json::array();
  for (const Mode& m : modes)
    for (KvType t : types) {
      HeadPlan plan = m.plan;
      plan.kv_type = t;
      const int64_t capacity = ctx + steps * 2 + 2;
      const size_t per_seq = backend.sequence_bytes(plan, capacity);
      const size_t free_b = backend.free_kv_memory();
      const int fit = (int)std::min<size_t>(free_b / per_seq, (size_t)bo.max_sequences);
      json row = {{"mode", m.name}, {"kv_type", to_string(t)}, {"context", ctx}, {"sequence_bytes", per_seq},
                  {"free_kv_bytes", free_b}, {"fit", fit}};
      if (fit == 0) {
        if (!as_json) fmt::print("{:<10} {:>5} {:>9.2f} {:>6}  (no sequence fits)\n", m.name, to_string(t), per_seq / kGiB, 0);
        rows.push_back(row);
        continue;
      }
      std::vector<std::unique_ptr<SequenceState>> seqs;
      std::vector<Sampler> samplers(fit, Sampler(SamplerConfig{}));
      std::vector<int32_t> next(fit);
      for (int i = 0; i < fit; ++i) {
        seqs.push_back(backend.new_sequence(plan, capacity));
        backend.fill_kv_random(*seqs.back(), ctx, bo.seed + i);
        next[i] = (int32_t)((bo.seed * 7919 + (uint64_t)i * 104729) % (uint64_t)c.n_vocab);
      }
      // Runs `count` steps over the first n sequences; returns seconds a step.
      auto run = [&](int n, int count) {
        std::vector<StepItem> items(n);
        std::vector<int32_t> picked(n);
        const auto t0 = clock_type::now();
        for (int k = 0; k < count; ++k) {
          for (int i = 0; i < n; ++i) items[i] = {seqs[i].get(), &next[i], 1, &samplers[i]};
          backend.step(items, picked.data());
          for (int i = 0; i < n; ++i) next[i] = picked[i];
        }
        return seconds_since(t0) / count;
      };
      run(std::min(fit, bo.equal_batch), 1);  // warm-up: buffers grown, kernels loaded
      double eq_ms = -1;
      if (fit >= bo.equal_batch) {
        eq_ms = run(bo.equal_batch, steps / 2) * 1e3;
        row["ms_per_step_equal_batch"] = eq_ms;
      }
      run(fit, 1);
      const double step_s = run(fit, steps);
      row["ms_per_step"] = step_s * 1e3;
      row["tokens_per_s"] = fit / step_s;
      row["peak_bytes"] = backend.device_memory().peak_bytes;
      if (!as_json)
        fmt::print("{:<10} {:>5} {:>9.2f} {:>6} {:>10.1f} {:>10.2f} {:>12}\n", m.name, to_string(t), per_seq / kGiB, fit,
                   fit / step_s, step_s * 1e3, eq_ms >= 0 ? fmt::format("{:.2f}", eq_ms) : std::string("-"));
      std::fflush(stdout);
      rows.push_back(row);
    }
  // Ratios against the first row (the first mode in the first KV type, as given).
  if (!rows.empty() && rows[0].contains("tokens_per_s")) {
    const json base = rows[0];
    for (json& r : rows) {
      if (!r.contains("tokens_per_s")) continue;
      r["fit_vs_first"] = r["fit"].get<double>() / base["fit"].get<double>();
      r["tokens_per_s_vs_first"] = r["tokens_per_s"].get<double>() / base["tokens_per_s"].get<double>();
      std::string eq;
      if (r.contains("ms_per_step_equal_batch") && base.contains("ms_per_step_equal_batch")) {
        r["equal_batch_step_vs_first"] =
            r["ms_per_step_equal_batch"].get<double>() / base["ms_per_step_equal_batch"].get<double>();
        eq = fmt::format(", {:.2f}x the step time at batch {}", r["equal_batch_step_vs_first"].get<double>(),
                         bo.equal_batch);
      }
      if (!as_json)
        fmt::print("  {} {}: fits {:.2f}x as many, {:.2f}x the tokens/s{} (vs {} {})\n", r["mode"].get<std::string>(),
                   r["kv_type"].get<std::string>(), r["fit_vs_first"].get<double>(),
                   r["tokens_per_s_vs_first"].get<double>(), eq, base["mode"].get<std::string>(),
                   base["kv_type"].get<std::string>());
    }
  }
  return rows;
}

}  // namespace

void run_cuda_bench(const ModelOptions& mo, CudaBenchOptions bo, bool chunk_given, bool as_json) {
  if (chunk_given) bo.chunk = mo.chunk;
  DUO_CHECK(bo.chunk > 0, "chunk must be positive");
  // --find-max-context runs only its table.
  const bool table_only = bo.find_max_context || bo.batch_context > 0;
  const std::vector<int64_t> prefill = table_only ? std::vector<int64_t>{} : parse_lengths(bo.prefill, "pre-fill");
  const std::vector<int64_t> decode = table_only ? std::vector<int64_t>{} : parse_lengths(bo.decode, "decode");
  const StreamingWindow window{mo.sink, mo.recent};

  // The model: a synthetic full-size shape, or a GGUF file's weights (original head order:
  // the kernels read each head's kind, so contiguous retrieval heads do not change speed).
  const ModelPreset* preset = bo.synthetic.empty() ? nullptr : &model_preset(bo.synthetic);
  std::unique_ptr<Model> host_model;
  std::unique_ptr<ModelBackend> backend;
  const auto t_load = clock_type::now();
  const WeightFormat weight_format = parse_weight_format(mo.gpu_weights);
  if (preset) {
    backend = make_cuda_synthetic_backend(preset->config, bo.seed, weight_format);
  } else {
    ModelOptions only_model = mo;  // --pattern here feeds the duo modes, not --attention duo
    only_model.pattern.clear();
    only_model.attention = "full";
    const EngineOptions eo = engine_options(only_model);  // resolves -m and checks the file exists
    host_model = Model::load(eo.model_path);
    backend = make_cuda_backend(*host_model, weight_format);
  }
  const double load_s = seconds_since(t_load);
  const ModelConfig& c = backend->config();
  std::string gate_origin;
  const GateMatrix gates = load_gates(mo, preset, c, bo.seed, gate_origin);
  std::vector<Mode> modes = make_modes(bo.modes, c, window, &gates);
  for (Mode& m : modes) m.plan.kv_type = parse_kv_type(mo.kv_type);  // --kv-type (default: bf16)
  if (bo.each_kv_type) {  // each mode with each type, bf16 first (so full bf16 is the baseline)
    std::vector<Mode> typed;
    std::stringstream ts(bo.kv_types);
    for (std::string t; std::getline(ts, t, ',');)
      for (Mode m : modes) {
        m.plan.kv_type = backend->kv_type(parse_kv_type(t));
        if (m.plan.kv_type != KvType::BF16) m.name += "+" + std::string(to_string(m.plan.kv_type));
        typed.push_back(m);
      }
    modes = std::move(typed);
  }

  const DeviceFacts dev = backend->device_facts();
  json doc;
  doc["machine"] = {{"gpu", dev.name},
                    {"sm_count", dev.sm_count},
                    {"compute_capability", fmt::format("{}.{}", dev.cc_major, dev.cc_minor)},
                    {"memory_bytes", dev.total_memory},
                    {"driver_version", dev.driver_version},
                    {"runtime_version", dev.runtime_version}};
  doc["model"] = {{"name", c.name},
                  {"shape", preset ? preset->name : std::string("gguf")},
                  {"layers", c.n_layers},
                  {"embd", c.n_embd},
                  {"ff", c.n_ff},
                  {"heads", c.n_heads},
                  {"kv_heads", c.n_kv_heads},
                  {"head_dim", c.head_dim},
                  {"vocab", c.n_vocab},
                  {"weights_bytes", backend->weight_bytes()},
                  {"load_seconds", load_s}};
  doc["options"] = {{"chunk", bo.chunk},          {"sink", window.sink},   {"recent", window.recent},
                    {"decode_steps", bo.decode_steps}, {"gates", gate_origin}, {"seed", bo.seed},
                    {"kv_type", mo.kv_type},           {"gpu_weights", mo.gpu_weights}};
  const double copy_gbs = backend->copy_gbs();
  doc["machine"]["copy_gbs"] = copy_gbs;
  if (!as_json) {
    fmt::print("machine: {} ({} SMs, cc {}.{}, {:.1f} GiB), driver {}, runtime {}; device copy {:.0f} GB/s (read + "
               "write)\n",
               dev.name, dev.sm_count, dev.cc_major, dev.cc_minor, dev.total_memory / kGiB, dev.driver_version,
               dev.runtime_version, copy_gbs);
    fmt::print("model: {} | {} layers, {} / {} heads, d {}, ff {}, vocab {} | weights {:.2f} GiB {} (ready in {:.1f} s)\n",
               c.name, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.n_ff, c.n_vocab,
               backend->weight_bytes() / kGiB, to_string(backend->weight_format()), load_s);
    fmt::print("pre-fill chunk {} | streaming heads: sink {} + recent {} | duo gates: {}\n", bo.chunk, window.sink,
               window.recent, gate_origin);
  }

  if (bo.batch_context > 0) {
    std::vector<KvType> types;
    std::stringstream ts(bo.kv_types);
    for (std::string t; std::getline(ts, t, ',');) types.push_back(parse_kv_type(t));
    doc["batch_decode"] = run_batch_decode(*backend, modes, types, bo, as_json);
  } else if (bo.find_max_context) {
    doc["max_context"] = run_max_context(*backend, modes, bo, as_json);
    // The issue-6 target, when this run measured its configuration.
    for (const auto& r : doc["max_context"])
      if (preset && preset->name == "llama3-8b" && r["mode"] == "duo50" && r["kv_type"] == "q4" &&
          backend->weight_format() == WeightFormat::Int8 && r.contains("context")) {
        const int64_t ctx = r["context"].get<int64_t>();
        doc["target_3_3M"] = ctx >= 3300000;
        if (!as_json)
          fmt::print("\ntarget (issue 6): Llama-3-8B duo50 + q4 KV + int8 weights decodes at >= 3.3M tokens: {} ({} "
                     "tokens)\n",
                     ctx >= 3300000 ? "PASS" : "FAIL", ctx);
      }
  }

  // --- pre-fill ---
  json prefill_rows = json::array();
  std::map<int64_t, double> full_prefill_ms;
  if (!as_json && !prefill.empty())
    fmt::print("\n{:<10} {:>8} {:>11} {:>10} {:>12} {:>8} {:>9} {:>9}\n", "pre-fill", "tokens", "latency ms",
               "attn ms", "attn TFLOP/s", "KV GiB", "peak GiB", "vs full");
  for (const Mode& m : modes)
    for (int64_t L : prefill) {
      json row = {{"mode", m.name}, {"retrieval_ratio", m.ratio}, {"tokens", L}};
      const double kv = (double)backend->kv_bytes_for(m.plan, L);
      row["kv_bytes"] = kv;
      backend->release_scratch();
      std::string why;
      if (!fits(*backend, kv + (double)backend->activation_bytes(std::min(L, bo.chunk)) + 128e6, why)) {
        row["skipped"] = why;
        if (!as_json) fmt::print("{:<10} {:>8}  skipped: {}\n", m.name, L, why);
        prefill_rows.push_back(row);
        continue;
      }
      const auto toks = random_tokens(L, c.n_vocab, bo.seed + L);
      {  // warm-up: cuBLAS algorithm choice and kernel set-up for this chunk shape
        auto s = backend->new_sequence(m.plan, std::min(L, bo.chunk));
        backend->forward(*s, toks.data(), std::min(L, bo.chunk), nullptr, bo.chunk);
      }
      auto s = backend->new_sequence(m.plan, L);
      std::vector<float> logits(c.n_vocab);
      backend->reset_peak_memory();
      backend->reset_attention_timing();
      backend->set_attention_timing(true);
      const auto t0 = clock_type::now();
      backend->forward(*s, toks.data(), L, logits.data(), bo.chunk);
      const double ms = 1e3 * seconds_since(t0);
      backend->set_attention_timing(false);
      const double attn_ms = backend->attention_ms();
      const double tflops = prefill_attention_flops(c, m.plan, L, bo.chunk) / (attn_ms * 1e-3) / 1e12;
      row["ms"] = ms;
      row["attn_ms"] = attn_ms;
      row["attn_tflops"] = tflops;
      row["kv_bytes"] = s->kv_bytes();
      row["peak_bytes"] = backend->device_memory().peak_bytes;
      if (m.name == "full") full_prefill_ms[L] = ms;
      std::string vs = "-";
      if (full_prefill_ms.count(L)) {
        row["speedup_vs_full"] = full_prefill_ms[L] / ms;
        vs = fmt::format("{:.2f}x", full_prefill_ms[L] / ms);
      }
      if (!as_json)
        fmt::print("{:<10} {:>8} {:>11.1f} {:>10.1f} {:>12.1f} {:>8.2f} {:>9.2f} {:>9}\n", m.name, L, ms, attn_ms,
                   tflops, s->kv_bytes() / kGiB, backend->device_memory().peak_bytes / kGiB, vs);
      std::fflush(stdout);
      prefill_rows.push_back(row);
    }
  doc["prefill"] = prefill_rows;

  // --- decode ---
  json decode_rows = json::array();
  std::map<int64_t, double> full_decode_ms;
  HeadPlan full_plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, window);
  full_plan.kv_type = parse_kv_type(mo.kv_type);
  if (!as_json && !decode.empty())
    fmt::print("\n{:<10} {:>8} {:>10} {:>10} {:>11} {:>8} {:>9} {:>10} {:>8} {:>8} {:>9} {:>9} {:>10}\n", "decode",
               "context", "ms/token", "attn us", "attn GB/s", "of copy", "graph us", "graph GB/s", "of copy", "KV GiB",
               "peak GiB", "vs full", "KV vs full");
  // Full attention whose KV cache does not fit at a context (Llama-2-7B at 128K: 64 GiB of KV
  // next to 12.6 GiB of weights) is measured at the longest context that does fit, and said so:
  // decode time grows with the context, so duo / full at the asked context computed from it is
  // a lower bound on the real speedup (reported as such, never as the speedup itself).
  std::map<int64_t, int64_t> full_measured_at;
  for (const Mode& m : modes)
    for (int64_t C : decode) {
      auto capacity = [&](int64_t ctx) { return ctx + kWarm + bo.decode_steps + kTimedAttention + 1; };
      auto need = [&](int64_t ctx) {
        return (double)backend->kv_bytes_for(m.plan, capacity(ctx)) + 64e6 /* pool slabs */ +
               (double)backend->activation_bytes(1);
      };
      const double kv = (double)backend->kv_bytes_for(m.plan, capacity(C));
      const double kv_full = (double)backend->kv_bytes_for(full_plan, C);
      json row = {{"mode", m.name}, {"retrieval_ratio", m.ratio}, {"context", C}, {"kv_bytes", kv},
                  {"kv_reduction_vs_full", kv_full / (double)backend->kv_bytes_for(m.plan, C)}};
      backend->release_scratch();
      std::string why;
      int64_t run_ctx = C;
      if (!fits(*backend, need(C), why)) {
        int64_t best = 0;
        if (m.name == "full")  // the longest multiple of 4096 tokens that fits (binary search)
          for (int64_t lo = 1, hi = (C - 1) / 4096; lo <= hi;) {
            const int64_t mid = (lo + hi) / 2;
            std::string unused;
            if (fits(*backend, need(mid * 4096), unused))
              best = mid * 4096, lo = mid + 1;
            else
              hi = mid - 1;
          }
        if (best == 0) {
          row["skipped"] = why;
          if (!as_json) fmt::print("{:<10} {:>8}  skipped: {}\n", m.name, C, why);
          decode_rows.push_back(row);
          continue;
        }
        run_ctx = best;
        row["measured_context"] = best;
        row["note"] = fmt::format("KV of {} tokens does not fit ({}); measured at {} tokens, the longest that fits",
                                  C, why, best);
        if (!as_json) fmt::print("{:<10} {:>8}  does not fit ({}): measuring {} tokens instead\n", m.name, C, why, best);
      }
      auto s = backend->new_sequence(m.plan, capacity(run_ctx));
      backend->reset_peak_memory();
      backend->fill_kv_random(*s, run_ctx, bo.seed);
      Sampler greedy(SamplerConfig{});
      int32_t next = 1;
      for (int i = 0; i < kWarm; ++i) next = backend->forward_pick(*s, &next, 1, bo.chunk, greedy);
      const auto t0 = clock_type::now();
      for (int i = 0; i < bo.decode_steps; ++i) next = backend->forward_pick(*s, &next, 1, bo.chunk, greedy);
      const double ms = 1e3 * seconds_since(t0) / bo.decode_steps;
      // Attention kernels alone, in a separate pass (events between kernels cost a little; this
      // pass launches kernel by kernel, the timed pass above replays the step's CUDA graph).
      const int64_t past0 = s->n_past();
      backend->reset_attention_timing();
      backend->set_attention_timing(true);
      for (int i = 0; i < kTimedAttention; ++i) next = backend->forward_pick(*s, &next, 1, bo.chunk, greedy);
      backend->set_attention_timing(false);
      const double attn_us = 1e3 * backend->attention_ms() / kTimedAttention;
      const double bytes = decode_read_bytes(*backend, m.plan, past0 + 1 + kTimedAttention / 2);
      const double gbs = bytes / (attn_us * 1e-6) / 1e9;
      // The same kernels replayed as one graph of every layer's attention (as inside the step).
      const double graph_us = 1e3 * backend->decode_attention_graph_ms(*s, kGraphAttentionReps);
      const double graph_gbs =
          graph_us > 0 ? decode_read_bytes(*backend, m.plan, s->n_past()) / (graph_us * 1e-6) / 1e9 : 0.0;
      row["attn_graph_us"] = graph_us;
      row["attn_graph_gbs"] = graph_gbs;
      if (copy_gbs > 0) row["attn_graph_gbs_of_copy"] = graph_gbs / copy_gbs;
      row["ms_per_token"] = ms;
      row["attn_us"] = attn_us;
      row["attn_gbs"] = gbs;
      row["kv_type"] = to_string(m.plan.kv_type);
      if (copy_gbs > 0) row["attn_gbs_of_copy"] = gbs / copy_gbs;
      row["kv_bytes"] = s->kv_bytes();
      row["peak_bytes"] = backend->device_memory().peak_bytes;
      row["decode_graph"] = backend->decode_graphs();
      if (m.name == "full") {
        full_decode_ms[C] = ms;
        if (run_ctx != C) full_measured_at[C] = run_ctx;
      }
      std::string vs = "-";
      if (full_decode_ms.count(C)) {
        const bool lower = full_measured_at.count(C) && m.name != "full";
        row["speedup_vs_full"] = full_decode_ms[C] / ms;
        if (lower) {
          row["speedup_vs_full_is_lower_bound"] = true;
          row["full_measured_context"] = full_measured_at[C];
        }
        vs = fmt::format("{}{:.2f}x", lower ? ">=" : "", full_decode_ms[C] / ms);
      }
      if (!as_json)
        fmt::print("{:<10} {:>8} {:>10.3f} {:>10.1f} {:>11.1f} {:>7.0f}% {:>9.1f} {:>10.1f} {:>7.0f}% {:>8.2f} {:>9.2f} {:>9} "
                   "{:>9.2f}x{}\n",
                   m.name, C, ms, attn_us, gbs, copy_gbs > 0 ? 100.0 * gbs / copy_gbs : 0.0, graph_us, graph_gbs,
                   copy_gbs > 0 ? 100.0 * graph_gbs / copy_gbs : 0.0, s->kv_bytes() / kGiB,
                   backend->device_memory().peak_bytes / kGiB, vs, row["kv_reduction_vs_full"].get<double>(),
                   run_ctx != C ? fmt::format("  (measured at {})", run_ctx) : std::string());
      std::fflush(stdout);
      decode_rows.push_back(row);
    }
  doc["decode"] = decode_rows;

  if (as_json) fmt::print("{}\n", doc.dump(1));
  if (!bo.out.empty()) {
    std::ofstream f(bo.out);
    DUO_CHECK(f.good(), "cannot write {}", bo.out);
    f << doc.dump(1) << "\n";
    if (!as_json) fmt::print("\nwrote {}\n", bo.out);
  }
}

#endif

}  // namespace duo::cli
