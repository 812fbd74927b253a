// `duo eval niah|passkey`: retrieval accuracy over a grid of context lengths x needle depths
// for one attention mode, written as CSV, JSON and an SVG heatmap.
// `duo pattern rank`: the training-free head ranking (attention mass on the needle).
#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "eval/head_ranking.h"
#include "eval/needle.h"
#include "eval/perplexity.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace duo::cli {

namespace {

template <typename T>
std::vector<T> parse_csv_list(const std::string& s, const char* what) {
  std::vector<T> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::istringstream is(item);
    T x{};
    is >> x;
    DUO_CHECK(!is.fail() && is.eof(), "bad {} '{}' in '{}'", what, item, s);
    v.push_back(x);
  }
  DUO_CHECK(!v.empty(), "no {} given", what);
  return v;
}

// A one-line progress bar on stderr, redrawn in place.
void progress_bar(size_t done, size_t total, const std::string& note, double elapsed) {
  const int width = 30, filled = (int)(width * done / std::max<size_t>(1, total));
  const double eta = done ? elapsed / done * (total - done) : 0.0;
  fmt::print(stderr, "\r[{}{}] {}/{} {} | {:.0f}s elapsed, ~{:.0f}s left   ", std::string(filled, '#'),
             std::string(width - filled, '.'), done, total, note, elapsed, eta);
  if (done == total) fmt::print(stderr, "\n");
}

void add_needle_eval(CLI::App& eval, const char* name, NeedleTask task, const char* help) {
  struct Opts {
    ModelOptions model;
    std::string lengths = "1024,2048,4096,8000", depths = "0,0.25,0.5,0.75,1";
    std::string out;
    int max_new_tokens = 16;
    uint64_t seed = 1;
    bool plain = false;
    std::string chat_template;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = eval.add_subcommand(name, help);
  add_model_options(*cmd, o->model);
  cmd->add_option("--lengths", o->lengths, "comma-separated context lengths (tokens)");
  cmd->add_option("--depths", o->depths, "comma-separated needle depths in [0, 1]");
  cmd->add_option("-o,--out", o->out, "output prefix: writes PREFIX.csv, PREFIX.json and PREFIX.svg");
  cmd->add_option("-n,--max-tokens", o->max_new_tokens, "answer tokens to generate")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o->seed, "seed of needles and haystack");
  cmd->add_flag("--no-chat", o->plain, "plain prompt without the chat template");
  add_chat_template_option(*cmd, o->chat_template);
  cmd->callback([o, task, name] {
    NeedleSweep sw;
    sw.task = task;
    sw.lengths = parse_csv_list<int64_t>(o->lengths, "length");
    sw.depths = parse_csv_list<double>(o->depths, "depth");
    sw.max_new_tokens = o->max_new_tokens;
    sw.seed = o->seed;
    sw.use_chat_template = !o->plain;
    sw.chat_template_file = o->chat_template;
    Engine engine(engine_options(o->model));
    const std::string mode = to_string(engine.options().attention);
    fmt::print(stderr, "{} eval: {} | attention {} | {} cells\n", name, engine.model().config().name, mode,
               sw.lengths.size() * sw.depths.size());
    const auto t0 = std::chrono::steady_clock::now();
    auto results = run_needle_sweep(engine, sw, [&](size_t done, size_t total, const NeedleResult& r) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress_bar(done, total, fmt::format("L={} d={:.2f} {}", r.length, r.depth, r.correct ? "ok" : "miss"), el);
    });
    fmt::print("{:>8} {:>7} {:>8} {:>10} {:>10}  output\n", "length", "depth", "correct", "prefill s", "KV MiB");
    for (const auto& r : results) {
      std::string out = r.output;
      for (char& ch : out)
        if (ch == '\n') ch = ' ';
      fmt::print("{:>8} {:>7.2f} {:>8} {:>10.2f} {:>10.2f}  {}\n", r.length, r.depth, r.correct ? "yes" : "no",
                 r.prefill_seconds, r.kv_bytes / 1048576.0, out.substr(0, 60));
    }
    fmt::print("accuracy {:.1f}% ({} attention, {} cells), peak RSS {:.0f} MiB\n", 100 * needle_accuracy(results), mode,
               results.size(), peak_rss_mib());
    if (!o->out.empty()) {
      const auto parent = std::filesystem::path(o->out).parent_path();
      if (!parent.empty()) std::filesystem::create_directories(parent);
      write_needle_csv(results, o->out + ".csv");
      write_needle_json(results, mode, engine.model().config().name, o->out + ".json");
      write_needle_svg(results, fmt::format("{} {}: {} attention", engine.model().config().name, name, mode),
                       o->out + ".svg");
      fmt::print("wrote {0}.csv {0}.json {0}.svg\n", o->out);
    }
  });
}

void add_ppl_eval(CLI::App& eval) {
  struct Opts {
    ModelOptions model;
    PerplexityOptions ppl;
    std::string json, file;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = eval.add_subcommand(
      "ppl", "perplexity on generated prose or on a text file (-f), fed in pre-fill chunks as inference runs");
  add_model_options(*cmd, o->model);
  cmd->add_option("-f,--file", o->file, "score this text file (the whole file, or its first --length tokens)");
  auto* length = cmd->add_option("--length", o->ppl.length, "tokens of text")->check(CLI::Range(2, 1 << 24));
  cmd->add_option("--score-chunk", o->ppl.chunk, "tokens a forward pass (logits of the whole chunk are kept)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--tail-from", o->ppl.tail_from, "also score positions >= this separately (0: length / 2)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", o->ppl.seed, "seed of the text");
  cmd->add_option("--json", o->json, "write the result as JSON here");
  cmd->callback([o, length] {
    Engine engine(engine_options(o->model));
    const std::string mode = to_string(engine.options().attention);
    std::vector<int32_t> ids;
    if (!o->file.empty()) {
      // The user's text as generate would read it: BOS where the vocabulary has one, special-token
      // text kept as text.
      const Tokenizer& tok = engine.tokenizer();
      ids = tok.encode(read_text_file(o->file), tok.vocab().add_bos, false);
      if (length->count() > 0 && (int64_t)ids.size() > o->ppl.length) ids.resize((size_t)o->ppl.length);
      DUO_CHECK((int64_t)ids.size() <= engine.max_context(),
                "{} is {} tokens, longer than the context limit {}: score its start with --length N",
                o->file, ids.size(), engine.max_context());
      o->ppl.length = (int64_t)ids.size();
    }
    fmt::print(stderr, "ppl eval: {} | attention {} | {} tokens{} in chunks of {}\n", engine.model().config().name,
               mode, o->ppl.length, o->file.empty() ? "" : " of " + o->file, o->ppl.chunk);
    const auto t0 = std::chrono::steady_clock::now();
    auto show = [&](int64_t done, int64_t total) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress_bar((size_t)done, (size_t)total, "tokens", el);
    };
    const PerplexityResult r =
        o->file.empty() ? run_perplexity(engine, o->ppl, show) : run_perplexity(engine, ids, o->ppl, show);
    fmt::print("perplexity {:.4f} (nll {:.5f}, {} tokens) | positions >= {}: {:.4f} (nll {:.5f}, {} tokens) | "
               "{} attention, KV {:.2f} MiB, {:.1f} s\n",
               r.ppl, r.nll, r.scored, r.tail_from, r.tail_ppl, r.tail_nll, r.tail_scored, mode, r.kv_bytes / 1048576.0,
               r.seconds);
    if (!o->json.empty()) {
      const auto parent = std::filesystem::path(o->json).parent_path();
      if (!parent.empty()) std::filesystem::create_directories(parent);
      write_perplexity_json(r, engine.model().config().name, mode, o->ppl.length, o->json);
    }
  });
}

}  // namespace

void add_eval(CLI::App& app) {
  auto* eval = app.add_subcommand("eval", "retrieval evaluations");
  eval->require_subcommand(1);
  add_needle_eval(*eval, "niah", NeedleTask::Niah, "needle in a haystack: find a magic number in long prose");
  add_needle_eval(*eval, "passkey", NeedleTask::Passkey, "passkey retrieval in long filler text");
  add_ppl_eval(*eval);
  add_ruler_eval(*eval);
}

void add_pattern(CLI::App& app) {
  auto* pat = app.add_subcommand("pattern", "make or inspect head patterns");
  pat->require_subcommand(1);
  struct Opts {
    ModelOptions model;
    std::string lengths = "1024,2048", depths = "0.1,0.5,0.9", out;
  };
  auto o = std::make_shared<Opts>();
  auto* rank = pat->add_subcommand(
      "rank", "training-free stand-in: rank KV heads by attention mass on needles (full attention)");
  add_model_options(*rank, o->model, false);
  rank->add_option("--lengths", o->lengths, "context lengths of the probe prompts");
  rank->add_option("--depths", o->depths, "needle depths of the probe prompts");
  rank->add_option("-o,--out", o->out, "gate matrix TSV to write")->required();
  rank->callback([o] {
    Engine engine(engine_options(o->model));
    HeadRankingOptions ho;
    ho.lengths = parse_csv_list<int64_t>(o->lengths, "length");
    ho.depths = parse_csv_list<double>(o->depths, "depth");
    const auto t0 = std::chrono::steady_clock::now();
    const NeedleMass m = measure_needle_mass(engine, ho, [&](size_t done, size_t total) {
      progress_bar(done, total, "probe prompts",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    });
    const GateMatrix g = gates_of(m);
    save_gates_tsv(g, o->out);
    fmt::print("wrote {} ({} layers x {} KV heads)\n", o->out, g.n_layers, g.n_kv_heads);
    if (m.n_heads > m.n_kv_heads) {  // GQA: what keeping whole groups costs
      for (double f : {0.25, 0.5}) {
        const GqaCoverage c = gqa_coverage(m, f);
        fmt::print(
            "{:.0f}% of heads: the top {} KV heads hold {:.1f}% of the needle mass; the top {} query heads would hold "
            "{:.1f}%, spread over {} KV heads (the top {} KV heads hold as much)\n",
            100 * f, c.kv_kept, 100 * c.kv_share, c.query_kept, 100 * c.query_share, c.kv_holding_top_queries,
            c.kv_for_query_share);
      }
    }
  });
  auto file = std::make_shared<std::string>();
  auto ratio = std::make_shared<double>(0.5);
  auto* show = pat->add_subcommand("show", "print a pattern binarized at a retrieval ratio");
  show->add_option("file", *file, "gate matrix TSV")->required();
  show->add_option("--retrieval-ratio", *ratio, "fraction of retrieval heads")->check(CLI::Range(0.0, 1.0));
  auto policy = std::make_shared<std::string>("global");
  show->add_option("--ratio-policy", *policy, "global, per-layer or min-per-layer=K (as for generate)");
  show->callback([file, ratio, policy] {
    const GateMatrix g = load_gates_tsv(*file);
    const auto k = binarize_ratio(g, *ratio, parse_ratio_policy(*policy));
    fmt::print("{}: {} layers x {} KV heads, retrieval (R) at ratio {:.2f} ({}: {:.3f} kept)\n", *file, g.n_layers,
               g.n_kv_heads, *ratio, *policy, retrieval_fraction(k));
    for (int l = 0; l < g.n_layers; ++l) {
      fmt::print("layer {:>3}  ", l);
      for (int h = 0; h < g.n_kv_heads; ++h) fmt::print("{}", k[l][h] == HeadKind::Retrieval ? 'R' : '.');
      fmt::print("\n");
    }
  });
}

}  // namespace duo::cli
