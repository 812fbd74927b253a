// `duo calibrate`: DuoAttention retrieval-head identification. Optimizes one gate per KV head
// on synthetic passkey data (frozen model, CPU gated forward/backward) and writes the gate
// matrix TSV that `--attention duo --pattern` loads.
#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "calibrate/calibrator.h"
#include "calibrate/gated_model.h"
#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo::cli {

namespace {

struct CalibrateOptions {
  std::string model, out, checkpoint, log;
  int threads = 0;
  bool resume = false, plain = false;
  int64_t checkpoint_every = 10;
  int64_t weights_budget_mib = 4096;
  CalibrationConfig cal;
  PasskeyDataConfig data;
};

void write_log(const std::vector<StepReport>& hist, const std::string& path) {
  std::ofstream f(path);
  DUO_CHECK(f.good(), "cannot write calibration log '{}'", path);
  f << "step,loss,distill,reg,sparsity,lr,tokens,answer_tokens,seconds\n";
  for (const auto& r : hist)
    f << fmt::format("{},{:.8g},{:.8g},{:.8g},{:.6g},{:.6g},{},{},{:.4f}\n", r.step, r.loss.total, r.loss.distill,
                     r.loss.reg, r.sparsity, r.lr, r.tokens, r.answer_tokens, r.seconds);
}

void print_step(const StepReport& r) {
  fmt::print(stderr,
             "step {:>5}/{} | len {:>6} ({} answer) | loss {:.5f} = distill {:.5f} + reg {:.4f} | sparsity@0.5 {:.3f} "
             "| lr {:.2e} | {:.0f} tok/s | {:.2f} s\n",
             r.step, r.steps, r.tokens, r.answer_tokens, r.loss.total, r.loss.distill, r.loss.reg, r.sparsity, r.lr,
             r.seconds > 0 ? r.tokens / r.seconds : 0.0, r.seconds);
}

void run_calibrate(CalibrateOptions& o) {
  const std::string path = o.model.empty() ? default_model_path() : o.model;
  if (!std::filesystem::exists(path)) {
    if (o.model.empty())
      fail("default model not found at {}; fetch it with: python3 scripts/fetch_models.py smollm2", path);
    fail("model file not found: {}", path);
  }
  DUO_CHECK(!o.resume || !o.checkpoint.empty(), "--resume needs --checkpoint FILE");
  auto model = Model::load(path);
  const ModelConfig& mc = model->config();
  auto tok = Tokenizer::from_gguf(model->gguf());
  const ChatTemplate tmpl = ChatTemplate::from_gguf(model->gguf());
  if (o.data.max_len == 0) o.data.max_len = std::min<int64_t>(32000, mc.n_ctx_train);
  DUO_CHECK(o.data.max_len <= mc.n_ctx_train, "--max-len {} is beyond the model's context of {} tokens",
            o.data.max_len, mc.n_ctx_train);
  PasskeyGenerator data(*tok, o.plain ? nullptr : &tmpl, o.data);
  o.data = data.config();  // min_len resolved

  ThreadPool pool(o.threads);
  FrozenWeights<float> weights(*model, (size_t)o.weights_budget_mib << 20, pool);
  GatedModel<float> gm(weights, o.cal.window, pool);
  const nlohmann::json run_info = {{"model", std::filesystem::path(path).filename().string()},
                                   {"arch", mc.arch},
                                   {"min_len", o.data.min_len},
                                   {"max_len", o.data.max_len},
                                   {"length_intervals", o.data.length_intervals},
                                   {"passkeys", o.data.n_passkeys},
                                   {"passkey_words", o.data.passkey_words},
                                   {"min_depth", o.data.min_depth},
                                   {"max_depth", o.data.max_depth},
                                   {"chat", !o.plain}};
  Calibrator cal(mc.n_layers, mc.n_kv_heads, data, cpu_loss_backend(gm, o.cal.lambda), o.cal, run_info);
  if (o.resume && std::filesystem::exists(o.checkpoint)) {
    cal.load_checkpoint(o.checkpoint);
    fmt::print(stderr, "resumed from {} at step {}\n", o.checkpoint, cal.state().step);
  } else if (o.resume) {
    fmt::print(stderr, "no checkpoint at {} yet: starting from step 0\n", o.checkpoint);
  }
  fmt::print(stderr,
             "calibrate: {} ({} layers x {} KV heads = {} gates) | {} steps | lengths {}..{} | {} passkeys x {} "
             "words | lambda {} | lr {} | window sink {} recent {} | {} threads\n"
             "memory: dense weights {:.0f} MiB ({}), activations at {} tokens ~{:.0f} MiB\n",
             mc.name, mc.n_layers, mc.n_kv_heads, mc.n_layers * mc.n_kv_heads, o.cal.steps, o.data.min_len,
             o.data.max_len, o.data.n_passkeys, o.data.passkey_words, o.cal.lambda, o.cal.adamw.lr, o.cal.window.sink,
             o.cal.window.recent, pool.size(),
             weights.layer_bytes() * (weights.all_resident() ? mc.n_layers : 1) / 1048576.0,
             weights.all_resident() ? "all layers resident" : "one layer at a time", o.data.max_len,
             gm.activation_bytes(o.data.max_len) / 1048576.0);

  const auto t0 = std::chrono::steady_clock::now();
  auto save = [&] {
    save_gates_tsv(cal.gate_matrix(), o.out);
    if (!o.checkpoint.empty()) cal.save_checkpoint(o.checkpoint);
    if (!o.log.empty()) write_log(cal.history(), o.log);
  };
  while (!cal.done()) {
    const StepReport r = cal.step();
    print_step(r);
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
  auto* cmd = app.add_subcommand("calibrate", "find retrieval heads: optimize DuoAttention gates on passkey data");
  cmd->option_defaults()->always_capture_default();
  cmd->add_option("-m,--model", o->model, "GGUF model file (default: the fetched SmolLM2-135M-Instruct)");
  cmd->add_option("-t,--threads", o->threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("-o,--out", o->out, "gate matrix TSV to write (rows layers, columns KV heads)")->required();
  cmd->add_option("--steps", o->cal.steps, "optimization steps (one sample each)")->check(CLI::PositiveNumber);
  cmd->add_option("--min-len", o->data.min_len,
                  "shortest sample, tokens (0: 1000 tokens of haystack plus what the passkeys and questions take)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-len", o->data.max_len, "longest sample, tokens (default: model context, at most 32000)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--length-intervals", o->data.length_intervals, "sample lengths drawn from this many values")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--lambda", o->cal.lambda, "weight of the L1 gate regularizer")->check(CLI::NonNegativeNumber);
  cmd->add_option("--lr", o->cal.adamw.lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  cmd->add_option("--weight-decay", o->cal.adamw.weight_decay, "AdamW weight decay")->check(CLI::NonNegativeNumber);
  cmd->add_option("--sink", o->cal.window.sink, "attention-sink tokens of streaming attention during calibration")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--recent", o->cal.window.recent, "recent tokens of streaming attention during calibration")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--passkeys", o->data.n_passkeys, "passkeys per sample (1-20)")->check(CLI::Range(1, 20));
  cmd->add_option("--passkey-words", o->data.passkey_words, "NATO-alphabet words per passkey")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--init-gate", o->cal.init_gate, "initial gate value")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", o->cal.seed, "seed of the sample generator");
  cmd->add_flag("--no-chat", o->plain, "plain-text samples (the reference's layout) instead of the chat template");
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
