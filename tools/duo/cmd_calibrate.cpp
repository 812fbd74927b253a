// `duo calibrate`: DuoAttention retrieval-head identification. Optimizes one gate per KV head
// on synthetic passkey or RULER-style data (frozen model, gated forward/backward on the CPU or, with
// --device cuda, on one GPU) and writes the gate matrix TSV that `--attention duo --pattern` loads.
// --time-lengths measures the loss backend's cost per step at given lengths instead (no run).
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "calibrate/calibration_device.h"
#include "calibrate/calibrator.h"
#include "calibrate/devices/calibration_devices.h"
#include "calibrate/ruler_data.h"
#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "eval/ruler_tasks.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/model_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace duo::cli {

namespace {

struct CalibrateOptions {
  std::string model, out, checkpoint, log, chat_template;
  std::string device = "cpu";
  std::string time_lengths;  // comma-separated lengths: measure instead of calibrating
  int threads = 0;
  bool resume = false, plain = false;
  int64_t checkpoint_every = 10;
  int64_t weights_budget_mib = 4096;
  CalibrationConfig cal;
  PasskeyDataConfig data;
  std::string data_kind = "passkey";  // passkey | ruler | mix
  std::string data_tasks, data_haystacks;  // comma-separated (empty: the defaults)
};

// The RULER source's settings: lengths, depths and loss rows as the passkey source's.
RulerDataConfig ruler_config(const CalibrateOptions& o) {
  RulerDataConfig r;
  if (!o.data_tasks.empty() && o.data_tasks != "all") r.tasks = split_commas(o.data_tasks, "--data-tasks");
  if (o.data_tasks == "all")
    for (const auto& t : ruler_tasks()) r.tasks.push_back(t.name);
  if (!o.data_haystacks.empty())
    for (const auto& h : split_commas(o.data_haystacks, "--data-haystacks")) r.haystacks.push_back(parse_ruler_haystack(h));
  r.min_len = o.data.min_len;
  r.max_len = o.data.max_len;
  r.length_intervals = o.data.length_intervals;
  r.min_depth = o.data.min_depth;
  r.max_depth = o.data.max_depth;
  r.depth_intervals = o.data.depth_intervals;
  r.loss_rows = o.data.loss_rows;
  return r;
}

void write_log(const std::vector<StepReport>& hist, const std::string& path) {
  std::ofstream f(path);
  DUO_CHECK(f.good(), "cannot write calibration log '{}'", path);
  f << "step,loss,distill,reg,sparsity,lr,tokens,answer_tokens,seconds\n";
  for (const auto& r : hist)
    f << fmt::format("{},{:.8g},{:.8g},{:.8g},{:.6g},{:.6g},{},{},{:.4f}\n", r.step, r.loss.total, r.loss.distill,
                     r.loss.reg, r.sparsity, r.lr, r.tokens, r.answer_tokens, r.seconds);
}

std::string hms(double seconds) {
  const int64_t s = (int64_t)(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}m{:02}s", s / 60, s % 60);
}

// eta: seconds left at this run's mean time per step so far.
void print_step(const StepReport& r, double eta, const std::string& extra) {
  fmt::print(stderr,
             "step {:>5}/{} | len {:>6} ({} loss rows) | loss {:.5f} = distill {:.5f} + reg {:.4f} | sparsity@0.5 {:.3f} "
             "| lr {:.2e} | {:.0f} tok/s | {:.2f} s{} | ETA {}\n",
             r.step, r.steps, r.tokens, r.answer_tokens, r.loss.total, r.loss.distill, r.loss.reg, r.sparsity, r.lr,
             r.seconds > 0 ? r.tokens / r.seconds : 0.0, r.seconds, extra, hms(eta));
}

// Lengths of the data generator's grid (what samples are drawn from), for cost estimates.
std::vector<int64_t> length_grid(const PasskeyDataConfig& d) {
  std::vector<int64_t> g;
  const int k = std::max(1, d.length_intervals);
  for (int i = 0; i < k; ++i)
    g.push_back(k == 1 ? d.max_len : d.min_len + (int64_t)((double)(d.max_len - d.min_len) * i / (k - 1)));
  return g;
}

// --time-lengths: one warm-up and one timed loss evaluation at each length (random tokens, the
// last 320 positions as loss rows, every gate 0.5 so both attention branches run), then the mean
// time per step over the sampling grid from a fit t(L) = a + b L + c L^2.
void time_lengths(const std::string& list, const LossBackend& loss, const CalibrationDevice& device, int n_gates,
                  int vocab, const PasskeyDataConfig& data, int64_t steps) {
  std::vector<int64_t> lengths;
  for (size_t at = 0; at < list.size();) {
    const size_t comma = std::min(list.find(',', at), list.size());
    const std::string item = list.substr(at, comma - at);
    try {
      lengths.push_back(std::stoll(item));
    } catch (const std::exception&) {
      fail("--time-lengths: '{}' is not a length", item);
    }
    DUO_CHECK(lengths.back() >= 2, "--time-lengths: length {} is too short", lengths.back());
    at = comma + 1;
  }
  DUO_CHECK(!lengths.empty(), "--time-lengths needs at least one length");
  std::mt19937_64 rng(7);
  const std::vector<double> gates((size_t)n_gates, 0.5);
  std::vector<double> grad;
  std::vector<double> xs, ts;
  fmt::print("{:>8} {:>10} {:>12} {:>12} {:>12}\n", "length", "step ms", "full fwd ms", "gated fwd ms", "backward ms");
  for (int64_t L : lengths) {
    PasskeySample s;
    for (int64_t i = 0; i < L; ++i) s.tokens.push_back((int32_t)uniform_below(rng, (uint64_t)vocab));
    for (int64_t i = std::max<int64_t>(0, L - 320); i < L; ++i) s.loss_rows.push_back(i);
    double ms = 0;
    for (int rep = 0; rep < 2; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      loss(s, gates, grad);
      ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }
    if (const auto t = device.last_times()) {  // the device's own times of its phases
      ms = t->total;
      fmt::print("{:>8} {:>10.1f} {:>12.1f} {:>12.1f} {:>12.1f}\n", L, ms, t->full_forward, t->gated_forward,
                 t->backward);
    } else {
      fmt::print("{:>8} {:>10.1f} {:>12} {:>12} {:>12}\n", L, ms, "-", "-", "-");
    }
    xs.push_back((double)L), ts.push_back(ms);
  }
  // Least squares fit of t = a + b L + c L^2 with a, b, c >= 0 (launch overhead, linear layers,
  // attention): the best of the fits over every subset of the three terms whose coefficients are
  // all non-negative, so that a few points do not extrapolate into negative times.
  double coef[3] = {0, 0, 0}, best = INFINITY;
  auto basis = [](double L, int k) { return k == 0 ? 1.0 : k == 1 ? L / 1e4 : L * L / 1e8; };
  for (int mask = 1; mask < 8; ++mask) {
    int idx[3], m = 0;
    for (int k = 0; k < 3; ++k)
      if (mask >> k & 1) idx[m++] = k;
    if (m > (int)xs.size()) continue;
    double A[3][4] = {};
    for (size_t i = 0; i < xs.size(); ++i)
      for (int r = 0; r < m; ++r) {
        for (int c = 0; c < m; ++c) A[r][c] += basis(xs[i], idx[r]) * basis(xs[i], idx[c]);
        A[r][m] += basis(xs[i], idx[r]) * ts[i];
      }
    bool ok = true;
    for (int c = 0; c < m && ok; ++c) {  // Gauss-Jordan on the normal equations
      int piv = c;
      for (int r = c + 1; r < m; ++r)
        if (std::fabs(A[r][c]) > std::fabs(A[piv][c])) piv = r;
      for (int k = 0; k <= m; ++k) std::swap(A[c][k], A[piv][k]);
      if (std::fabs(A[c][c]) < 1e-12) ok = false;
      for (int r = 0; r < m && ok; ++r) {
        if (r == c) continue;
        const double fct = A[r][c] / A[c][c];
        for (int k = 0; k <= m; ++k) A[r][k] -= fct * A[c][k];
      }
    }
    if (!ok) continue;
    double cf[3] = {0, 0, 0};
    for (int r = 0; r < m; ++r) cf[idx[r]] = A[r][m] / A[r][r];
    if (cf[0] < 0 || cf[1] < 0 || cf[2] < 0) continue;
    double err = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      const double e = cf[0] + cf[1] * basis(xs[i], 1) + cf[2] * basis(xs[i], 2) - ts[i];
      err += e * e;
    }
    if (err < best) best = err, coef[0] = cf[0], coef[1] = cf[1], coef[2] = cf[2];
  }
  auto mean_ms = [&](int64_t max_len) {  // over the generator's grid from min_len to max_len
    PasskeyDataConfig d = data;
    d.max_len = max_len;
    double mean = 0;
    const std::vector<int64_t> grid = length_grid(d);
    for (int64_t L : grid) mean += coef[0] + coef[1] * basis((double)L, 1) + coef[2] * basis((double)L, 2);
    return mean / (double)grid.size();
  };
  const double lo = *std::min_element(xs.begin(), xs.end()), hi = *std::max_element(xs.begin(), xs.end());
  fmt::print("fit: step ms = {:.1f} + {:.2f} (L/1e4) + {:.2f} (L/1e4)^2\n", coef[0], coef[1], coef[2]);
  // The configured range, then the usual ones up to the configured maximum.
  std::vector<int64_t> maxima = {data.max_len};
  for (int64_t m : {4096, 8192, 16384, 32000})
    if (m < data.max_len && m > data.min_len) maxima.push_back(m);
  for (int64_t m : maxima) {
    const double ms = mean_ms(m);
    fmt::print("lengths {}..{} ({} values): mean {:.0f} ms a step, {} steps ~ {}{}\n", data.min_len, m,
               data.length_intervals, ms, steps, hms(ms * (double)steps / 1000.0),
               (double)data.min_len < lo || (double)m > hi ? " (extrapolated beyond the measured lengths)" : "");
  }
}

void run_calibrate(CalibrateOptions& o) {
  const std::string path = o.model.empty() ? default_model_path() : o.model;
  if (!std::filesystem::exists(path)) {
    if (o.model.empty())
      fail("default model not found at {}; fetch it with: python3 scripts/fetch_models.py smollm2", path);
    fail("model file not found: {}", path);
  }
  DUO_CHECK(!o.resume || !o.checkpoint.empty(), "--resume needs --checkpoint FILE");
  DUO_CHECK(!o.out.empty() || !o.time_lengths.empty(), "--out FILE is required (the gate matrix TSV to write)");
  auto model = Model::load(path);
  const ModelConfig& mc = model->config();
  auto tok = tokenizer_of(*model);
  const ChatTemplate tmpl = chat_template_of(*model, *tok, o.chat_template);
  if (o.data.max_len == 0) o.data.max_len = std::min<int64_t>(32000, mc.n_ctx_train);
  DUO_CHECK(o.data.max_len <= mc.n_ctx_train, "--max-len {} is beyond the model's context of {} tokens",
            o.data.max_len, mc.n_ctx_train);
  DUO_CHECK(o.data_kind != "passkey" || (o.data_tasks.empty() && o.data_haystacks.empty()),
            "--data-tasks and --data-haystacks choose RULER-style samples: use them with --data ruler or mix");
  // The sample source: passkeys, RULER-style prompts, or half of each (sharing one length range:
  // the passkey source's minimum, resolved first).
  std::unique_ptr<PasskeyGenerator> passkeys;
  std::unique_ptr<RulerSampleSource> ruler;
  std::unique_ptr<MixedSampleSource> mix;
  SampleSource* data = nullptr;
  if (o.data_kind != "ruler") {
    passkeys = std::make_unique<PasskeyGenerator>(*tok, o.plain ? nullptr : &tmpl, o.data);
    o.data = passkeys->config();  // min_len resolved
    data = passkeys.get();
  }
  if (o.data_kind != "passkey") {
    ruler = std::make_unique<RulerSampleSource>(*tok, o.plain ? nullptr : &tmpl, ruler_config(o));
    o.data.min_len = ruler->config().min_len;
    data = ruler.get();
  }
  if (o.data_kind == "mix") {
    mix = std::make_unique<MixedSampleSource>(*passkeys, *ruler);
    data = mix.get();
  }

  ThreadPool pool(o.threads);
  // The device that runs the gated model, by name (only the one that runs is built).
  CalibrationDeviceOptions dev_opts;
  dev_opts.window = o.cal.window;
  dev_opts.pool = &pool;
  dev_opts.weights_budget_bytes = (size_t)o.weights_budget_mib << 20;
  const std::unique_ptr<CalibrationDevice> device = make_calibration_device(o.device, *model, dev_opts);
  const LossBackend loss = device->loss_backend(o.cal.lambda, o.cal.distill);
  const std::string memory = device->describe(o.data.max_len);
  if (!o.time_lengths.empty()) {
    fmt::print(stderr, "timing {} on {} ({})\n", o.device, mc.name, memory);
    time_lengths(o.time_lengths, loss, *device, mc.n_layers * mc.n_kv_heads, mc.n_vocab, o.data, o.cal.steps);
    return;
  }
  nlohmann::json run_info = {{"model", model_name_of_path(path)},
                                   {"arch", mc.arch},
                                   {"min_len", o.data.min_len},
                                   {"max_len", o.data.max_len},
                                   {"length_intervals", o.data.length_intervals},
                                   {"passkeys", o.data.n_passkeys},
                                   {"passkey_words", o.data.passkey_words},
                                   {"min_depth", o.data.min_depth},
                                   {"max_depth", o.data.max_depth},
                                   {"chat", !o.plain}};
  // (recorded only when not the default, so checkpoints of earlier runs still resume)
  if (o.data.loss_rows != LossRows::Answers) run_info["loss_rows"] = to_string(o.data.loss_rows);
  std::string data_desc = fmt::format("{} passkeys x {} words", o.data.n_passkeys, o.data.passkey_words);
  if (ruler) {
    std::string tasks, haystacks;
    for (const auto& t : ruler->config().tasks) tasks += (tasks.empty() ? "" : ",") + t;
    for (RulerHaystack h : ruler->config().haystacks) haystacks += (haystacks.empty() ? "" : ",") + std::string(to_string(h));
    run_info["data"] = o.data_kind;
    run_info["data_tasks"] = tasks;
    run_info["data_haystacks"] = haystacks;
    data_desc = fmt::format("{}RULER-style tasks {} (haystacks {})", passkeys ? data_desc + " / " : "", tasks, haystacks);
  }
  Calibrator cal(mc.n_layers, mc.n_kv_heads, *data, loss, o.cal, run_info);
  if (o.resume && std::filesystem::exists(o.checkpoint)) {
    cal.load_checkpoint(o.checkpoint);
    fmt::print(stderr, "resumed from {} at step {}\n", o.checkpoint, cal.state().step);
  } else if (o.resume) {
    fmt::print(stderr, "no checkpoint at {} yet: starting from step 0\n", o.checkpoint);
  }
  fmt::print(stderr,
             "calibrate: {} ({} layers x {} KV heads = {} gates) | {} steps | lengths {}..{} | data {} | loss {} on {} "
             "| lambda {} | lr {} | window sink {} recent {} | device {}\n{}\n",
             mc.name, mc.n_layers, mc.n_kv_heads, mc.n_layers * mc.n_kv_heads, o.cal.steps, o.data.min_len,
             o.data.max_len, data_desc, to_string(o.cal.distill), to_string(o.data.loss_rows), o.cal.lambda, o.cal.adamw.lr, o.cal.window.sink,
             o.cal.window.recent, o.device, memory);

  const auto t0 = std::chrono::steady_clock::now();
  auto save = [&] {
    save_gates_tsv(cal.gate_matrix(), o.out);
    if (!o.checkpoint.empty()) cal.save_checkpoint(o.checkpoint);
    if (!o.log.empty()) write_log(cal.history(), o.log);
  };
  const int64_t first_step = cal.state().step;
  while (!cal.done()) {
    const StepReport r = cal.step();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double eta = elapsed / (double)(r.step - first_step) * (double)(r.steps - r.step);
    std::string extra;
    if (const auto t = device->last_times())  // where the step's device time went
      extra = fmt::format(" (fwd {:.0f} + {:.0f}, bwd {:.0f} ms)", t->full_forward, t->gated_forward, t->backward);
    print_step(r, eta, extra);
    if (o.checkpoint_every > 0 && r.step % o.checkpoint_every == 0) save();
  }
  save();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const GateMatrix g = cal.gate_matrix();
  fmt::print("wrote {} ({} layers x {} KV heads), sparsity at 0.5: {:.3f}, {:.1f} s this run\n", o.out, g.n_layers,
             g.n_kv_heads, gate_sparsity(cal.state().gates), secs);
  fmt::print("use it with: duo generate --attention duo --pattern {} --retrieval-ratio 0.5 ...\n", o.out);
}

}  // namespace

void add_calibrate(CLI::App& app) {
  auto o = std::make_shared<CalibrateOptions>();
  o->data.max_len = 0;  // the model's context, at most 32000
  auto* cmd = app.add_subcommand("calibrate", "find retrieval heads: optimize DuoAttention gates on passkey or RULER-style data");
  cmd->option_defaults()->always_capture_default();
  cmd->add_option("-m,--model", o->model,
                  "GGUF model file or Hugging Face directory (default: the fetched SmolLM2-135M-Instruct)");
  cmd->add_option("-t,--threads", o->threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", o->device, "where the gated model runs: cpu or cuda (one GPU)")
      ->check(CLI::IsMember(calibration_device_names()));
  cmd->add_option("--time-lengths", o->time_lengths,
                  "comma-separated sample lengths: time one step at each (random tokens) and estimate the run's "
                  "time per step over --min-len..--max-len, instead of calibrating");
  cmd->add_option("-o,--out", o->out, "gate matrix TSV to write (rows layers, columns KV heads); required unless --time-lengths");
  cmd->add_option("--steps", o->cal.steps, "optimization steps (one sample each)")->check(CLI::PositiveNumber);
  cmd->add_option("--min-len", o->data.min_len,
                  "shortest sample, tokens (0: 1000 tokens of haystack plus what the passkeys and questions take; "
                  "with --data ruler 1024)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-len", o->data.max_len, "longest sample, tokens (default: model context, at most 32000)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--length-intervals", o->data.length_intervals, "sample lengths drawn from this many values")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--lambda", o->cal.lambda, "weight of the L1 gate regularizer")->check(CLI::NonNegativeNumber);
  cmd->add_option_function<std::string>(
         "--loss", [o](const std::string& v) { o->cal.distill = parse_distill_target(v); },
         "distillation loss: hidden (L2 of the final hidden states, the reference's) or kl (KL divergence of the "
         "answer tokens' next-token distributions through the LM head)")
      ->check(CLI::IsMember({"hidden", "kl"}));
  cmd->add_option_function<std::string>(
         "--loss-rows", [o](const std::string& v) { o->data.loss_rows = parse_loss_rows(v); },
         "positions the loss compares: answers (the answer tokens), predictions (the positions that predict "
         "the answer tokens, including the question's last token, whose prediction must find the needle), first "
         "(only that position, one a passkey) or "
         "questions (everything from the end of the book: questions, template and answers; the reference's "
         "label mask)")
      ->check(CLI::IsMember({"answers", "predictions", "first", "questions"}));
  cmd->add_option("--lr", o->cal.adamw.lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  cmd->add_option("--weight-decay", o->cal.adamw.weight_decay, "AdamW weight decay")->check(CLI::NonNegativeNumber);
  cmd->add_option("--sink", o->cal.window.sink, "attention-sink tokens of streaming attention during calibration")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--recent", o->cal.window.recent, "recent tokens of streaming attention during calibration")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--data", o->data_kind,
                  "calibration samples: passkey (NATO-word passkeys in prose, the reference's), ruler (RULER-style "
                  "tasks with the expected answer as the assistant's turn, from a seed space of their own) or mix "
                  "(half each)")
      ->check(CLI::IsMember({"passkey", "ruler", "mix"}));
  cmd->add_option("--data-tasks", o->data_tasks,
                  "RULER tasks drawn for --data ruler/mix, comma-separated, or 'all' (default: the needle tasks "
                  "and vt)");
  cmd->add_option("--data-haystacks", o->data_haystacks,
                  "haystacks of the varied-haystack RULER tasks, comma-separated: repeat, prose, code (default "
                  "prose,code)");
  cmd->add_option("--passkeys", o->data.n_passkeys, "passkeys per sample (1-20)")->check(CLI::Range(1, 20));
  cmd->add_option("--passkey-words", o->data.passkey_words, "NATO-alphabet words per passkey")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--init-gate", o->cal.init_gate, "initial gate value")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", o->cal.seed, "seed of the sample generator");
  cmd->add_flag("--no-chat", o->plain, "plain-text samples (the reference's layout) instead of the chat template");
  add_chat_template_option(*cmd, o->chat_template);
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint file (JSON), written every --checkpoint-every steps");
  cmd->add_option("--checkpoint-every", o->checkpoint_every, "steps between checkpoints (0: only at the end)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--resume", o->resume, "continue from --checkpoint when it exists");
  cmd->add_option("--log", o->log, "write the per-step history as CSV");
  cmd->add_option("--weights-budget", o->weights_budget_mib,
                  "MiB of dense (dequantized) weights to keep resident; above it layers are dequantized when used")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([o] { run_calibrate(*o); });
}

}  // namespace duo::cli
