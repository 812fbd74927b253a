// `duo bench`: pre-fill and decode throughput at given prompt lengths, peak memory and KV
// bytes, for one attention mode. Prompts are seeded pseudo-random token ids (as llama-bench
// does), so no tokenizer work is timed. Decode is measured after the prompt, i.e. at a
// context depth equal to the prompt length.
#include <fmt/core.h>

#include <chrono>
#include <random>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/backend.h"
#include "io/head_pattern.h"
#include "model/model.h"

namespace duo::cli {

namespace {
std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long long x = std::stoll(item, &used);
      DUO_CHECK(used == item.size() && x > 0, "bad prompt length '{}'", item);
      v.push_back(x);
    } catch (const std::logic_error&) {
      fail("bad prompt length '{}' in '{}'", item, s);
    }
  }
  DUO_CHECK(!v.empty(), "no prompt lengths given");
  return v;
}
}  // namespace

// Decode speed and KV memory of full / duo / streaming at given context lengths, with the
// cache filled synthetically (ModelBackend::fill_kv_random), and the ratios against full attention.
void run_mode_comparison(const ModelOptions& mo, const std::string& contexts, int gen, double ratio, bool json) {
  const auto lengths = parse_list(contexts);
  struct Row {
    std::string mode;
    int64_t ctx;
    double tok_s;
    size_t kv;
  };
  std::vector<Row> rows;
  for (const std::string mode : {"full", "duo", "streaming"}) {
    ModelOptions o = mo;
    // duo's plan is built below from --pattern (or a random ranking): the options are parsed as
    // full attention, without the pattern, then switched to duo.
    o.attention = mode == std::string("duo") ? "full" : mode;
    o.pattern.clear();
    EngineOptions eo = engine_options(o);
    std::unique_ptr<Engine> engine;
    if (mode == "duo") {
      // Which heads are retrieval heads does not change speed or memory, only how many:
      // without --pattern, a seeded random ranking at the requested ratio.
      Engine probe(eo);
      const ModelConfig& c = probe.model().config();
      GateMatrix g;
      g.n_layers = c.n_layers;
      g.n_kv_heads = c.n_kv_heads;
      std::mt19937_64 rng(5);
      std::uniform_real_distribution<float> u(0.0f, 1.0f);
      if (mo.pattern.empty())
        for (int i = 0; i < c.n_layers * c.n_kv_heads; ++i) g.values.push_back(u(rng));
      else
        g = load_gates_tsv(mo.pattern);
      eo.attention = AttentionMode::Duo;
      eo.plan.kinds = binarize_ratio(g, ratio, parse_ratio_policy(mo.ratio_policy));
    }
    engine = std::make_unique<Engine>(eo);
    ModelBackend& backend = engine->backend();
    const ModelConfig& c = engine->model().config();
    const int64_t chunk = engine->options().chunk;
    std::vector<float> logits(c.n_vocab);
    for (int64_t L : lengths) {
      auto seq = backend.new_sequence(engine->plan(), L + 1 + gen);
      backend.fill_kv_random(*seq, L, 3);
      int32_t next = 1;
      backend.forward(*seq, &next, 1, logits.data(), chunk);  // warm-up
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < gen; ++i) {
        next = Sampler::argmax(logits.data(), c.n_vocab);
        backend.forward(*seq, &next, 1, logits.data(), chunk);
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      rows.push_back({mode, L, gen / s, seq->kv_bytes()});
    }
  }
  auto full_of = [&](int64_t L) {
    for (const auto& r : rows)
      if (r.mode == "full" && r.ctx == L) return r;
    return rows[0];
  };
  if (!json)
    fmt::print("{:>10} {:>8} {:>12} {:>10} {:>14} {:>12}\n", "mode", "context", "decode t/s", "KV MiB",
               "KV vs full", "speed vs full");
  for (const auto& r : rows) {
    const Row f = full_of(r.ctx);
    const double mem_ratio = (double)f.kv / (double)r.kv, speed_ratio = r.tok_s / f.tok_s;
    if (json)
      fmt::print("{{\"mode\":\"{}\",\"context\":{},\"decode_tok_s\":{:.2f},\"kv_mib\":{:.2f},"
                 "\"kv_reduction_vs_full\":{:.3f},\"decode_speedup_vs_full\":{:.3f},\"retrieval_ratio\":{}}}\n",
                 r.mode, r.ctx, r.tok_s, r.kv / 1048576.0, mem_ratio, speed_ratio, r.mode == "duo" ? ratio : -1.0);
    else
      fmt::print("{:>10} {:>8} {:>12.1f} {:>10.1f} {:>13.2f}x {:>11.2f}x\n", r.mode, r.ctx, r.tok_s, r.kv / 1048576.0,
                 mem_ratio, speed_ratio);
  }
}

void add_bench(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    std::string prompts = "512,4096";
    int gen = 128;
    int reps = 1;
    bool json = false;
    uint64_t seed = 1;
    std::string contexts;
    double ratio = 0.5;
    CudaBenchOptions cuda;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("bench", "measure pre-fill and decode speed");
  add_model_options(*cmd, o->model);
  cmd->add_option("-p,--prompts", o->prompts, "comma-separated prompt lengths");
  cmd->add_option("-n,--gen", o->gen, "tokens to decode after each prompt")->check(CLI::NonNegativeNumber);
  cmd->add_option("-r,--reps", o->reps, "repetitions (mean is reported)")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o->seed, "seed of the random prompt tokens");
  cmd->add_flag("--json", o->json, "one JSON object per line instead of a table");
  cmd->add_option("--compare-modes", o->contexts,
                  "instead of prompts: decode speed and KV memory of full/duo/streaming at these context lengths "
                  "(cache filled with random keys/values)");
  cmd->add_option("--duo-ratio", o->ratio, "retrieval-head ratio of duo in --compare-modes (pattern from --pattern, "
                                            "else a seeded random ranking)")
      ->check(CLI::Range(0.0, 1.0));
  add_cuda_bench_options(*cmd, o->cuda);
  cmd->callback([o, cmd] {
    if (o->model.device == "cuda") {
      DUO_CHECK(o->contexts.empty() && cmd->get_option("--prompts")->count() == 0,
                "--compare-modes and --prompts are the CPU benchmark; with --device cuda use --modes, --prefill and "
                "--decode");
      run_cuda_bench(o->model, o->cuda, cmd->get_option("--chunk")->count() > 0, o->json);
      return;
    }
    DUO_CHECK(o->cuda.synthetic.empty(), "--synthetic needs --device cuda (full-size shapes do not fit a CPU run)");
    if (!o->contexts.empty()) {
      run_mode_comparison(o->model, o->contexts, o->gen, o->ratio, o->json);
      return;
    }
    using clock = std::chrono::steady_clock;
    const auto lengths = parse_list(o->prompts);
    EngineOptions eo = engine_options(o->model);
    Engine engine(eo);
    ModelBackend& backend = engine.backend();
    const ModelConfig& c = engine.model().config();
    std::mt19937_64 rng(o->seed);
    std::uniform_int_distribution<int32_t> tok(0, c.n_vocab - 1);
    std::vector<float> logits(c.n_vocab);
    if (!o->json)
      fmt::print("model {} | {} threads | {} kernels | attention {} | chunk {}\n{:>8} {:>12} {:>12} {:>10} {:>10}\n",
                 c.name, engine.pool().size(), backend.kernels(), to_string(eo.attention), eo.chunk, "prompt",
                 "prefill t/s", "decode t/s", "KV MiB", "peak MiB");
    {  // Warm-up: fault in the mapped weights once.
      std::vector<int32_t> w(16);
      for (auto& t : w) t = tok(rng);
      auto seq = backend.new_sequence(engine.plan(), (int64_t)w.size());
      backend.forward(*seq, w.data(), (int64_t)w.size(), logits.data(), eo.chunk);
    }
    for (int64_t P : lengths) {
      DUO_CHECK(P + o->gen <= engine.max_context(), "prompt {} + {} generated tokens exceeds the context limit {}", P,
                o->gen, engine.max_context());
      double prefill = 0.0, decode = 0.0;
      size_t kv = 0;
      for (int r = 0; r < o->reps; ++r) {
        std::vector<int32_t> prompt(P);
        for (auto& t : prompt) t = tok(rng);
        auto seq = backend.new_sequence(engine.plan(), P + o->gen);
        auto t0 = clock::now();
        backend.forward(*seq, prompt.data(), P, logits.data(), eo.chunk);
        prefill += std::chrono::duration<double>(clock::now() - t0).count();
        t0 = clock::now();
        for (int i = 0; i < o->gen; ++i) {
          const int32_t next = Sampler::argmax(logits.data(), c.n_vocab);
          backend.forward(*seq, &next, 1, logits.data(), eo.chunk);
        }
        decode += std::chrono::duration<double>(clock::now() - t0).count();
        kv = seq->kv_bytes();
      }
      const double pp = P * o->reps / prefill, tg = o->gen > 0 ? o->gen * o->reps / decode : 0.0;
      if (o->json)
        fmt::print("{{\"prompt_tokens\":{},\"gen_tokens\":{},\"prefill_tok_s\":{:.2f},\"decode_tok_s\":{:.2f},"
                   "\"kv_mib\":{:.2f},\"peak_rss_mb\":{:.1f},\"attention\":\"{}\",\"threads\":{},\"reps\":{},"
                   "\"simd\":\"{}\"}}\n",
                   P, o->gen, pp, tg, kv / 1048576.0, peak_rss_mib(), to_string(eo.attention), engine.pool().size(),
                   o->reps, backend.kernels());
      else
        fmt::print("{:>8} {:>12.1f} {:>12.1f} {:>10.2f} {:>10.0f}\n", P, pp, tg, kv / 1048576.0, peak_rss_mib());
      std::fflush(stdout);
    }
  });
}

}  // namespace duo::cli
