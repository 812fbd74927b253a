#include "calibrate/calibrator.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "calibrate/gated_model.h"
#include "core/error.h"

namespace duo {

namespace {

constexpr const char* kFormat = "duo-calibration-checkpoint";
constexpr int kVersion = 1;

nlohmann::json report_json(const StepReport& r) {
  return {{"step", r.step},         {"loss", r.loss.total},  {"distill", r.loss.distill},
          {"reg", r.loss.reg},      {"lr", r.lr},            {"sparsity", r.sparsity},
          {"tokens", r.tokens},     {"answer_tokens", r.answer_tokens}, {"seconds", r.seconds}};
}

StepReport report_from_json(const nlohmann::json& j, int64_t steps) {
  StepReport r;
  r.step = j.at("step");
  r.steps = steps;
  r.loss.total = j.at("loss");
  r.loss.distill = j.at("distill");
  r.loss.reg = j.at("reg");
  r.lr = j.at("lr");
  r.sparsity = j.at("sparsity");
  r.tokens = j.at("tokens");
  r.answer_tokens = j.at("answer_tokens");
  r.seconds = j.at("seconds");
  return r;
}

// Keys whose values differ between two objects (for resume errors).
std::string differences(const nlohmann::json& saved, const nlohmann::json& now) {
  std::string out;
  for (auto it = now.begin(); it != now.end(); ++it)
    if (!saved.contains(it.key()) || saved.at(it.key()) != it.value())
      out += "\n  " + it.key() + ": checkpoint " + (saved.contains(it.key()) ? saved.at(it.key()).dump() : "(none)") +
             ", now " + it.value().dump();
  for (auto it = saved.begin(); it != saved.end(); ++it)
    if (!now.contains(it.key())) out += "\n  " + it.key() + ": checkpoint " + it.value().dump() + ", now (none)";
  return out;
}

}  // namespace

nlohmann::json CalibrationConfig::to_json() const {
  nlohmann::json j = {{"steps", steps},
          {"lambda", lambda},
          {"lr", adamw.lr},
          {"beta1", adamw.beta1},
          {"beta2", adamw.beta2},
          {"eps", adamw.eps},
          {"weight_decay", adamw.weight_decay},
          {"sink", window.sink},
          {"recent", window.recent},
          {"init_gate", init_gate},
          {"seed", seed}};
  if (distill != DistillTarget::Hidden) j["loss"] = to_string(distill);  // (checkpoints of L2 runs stay as they were)
  return j;
}

LossBackend cpu_loss_backend(GatedModel<float>& model, double lambda, DistillTarget target) {
  return [&model, lambda, target](const PasskeySample& s, const std::vector<double>& gates, std::vector<double>& grad) {
    return calibration_loss_and_grad<float>(model, s.tokens, s.loss_rows, gates, lambda, grad, target);
  };
}

double gate_sparsity(const std::vector<double>& gates, double threshold) {
  if (gates.empty()) return 0.0;
  size_t below = 0;
  for (double g : gates) below += g < threshold;
  return (double)below / (double)gates.size();
}

Calibrator::Calibrator(int n_layers, int n_kv_heads, SampleSource& data, LossBackend loss, CalibrationConfig cfg,
                       nlohmann::json run_info)
    : n_layers_(n_layers),
      n_kv_heads_(n_kv_heads),
      data_(data),
      loss_(std::move(loss)),
      cfg_(cfg),
      run_info_(std::move(run_info)) {
  DUO_CHECK(n_layers > 0 && n_kv_heads > 0, "calibration of {} layers x {} KV heads", n_layers, n_kv_heads);
  DUO_CHECK(cfg.steps >= 1, "calibration needs at least one step (got {})", cfg.steps);
  DUO_CHECK(cfg.lambda >= 0, "lambda must be >= 0 (got {})", cfg.lambda);
  DUO_CHECK(cfg.adamw.lr > 0, "learning rate must be > 0 (got {})", cfg.adamw.lr);
  DUO_CHECK(cfg.init_gate >= 0 && cfg.init_gate <= 1, "initial gate {} is outside [0, 1]", cfg.init_gate);
  state_.gates.assign((size_t)n_layers * n_kv_heads, cfg.init_gate);
  state_.rng.seed(cfg.seed);
}

StepReport Calibrator::step() {
  DUO_CHECK(!done(), "calibration already ran all {} steps", cfg_.steps);
  const auto t0 = std::chrono::steady_clock::now();
  const PasskeySample sample = data_.next(state_.rng);
  std::vector<double> grad;
  StepReport r;
  r.loss = loss_(sample, state_.gates, grad);
  DUO_CHECK(grad.size() == state_.gates.size(), "loss backend returned {} gradients for {} gates", grad.size(),
            state_.gates.size());
  r.lr = cfg_.adamw.lr * lr_multiplier(state_.step, cfg_.steps);
  adamw_step(state_.gates, grad, state_.adam, cfg_.adamw, r.lr);
  clamp_all(state_.gates, 0.0, 1.0);
  state_.step += 1;
  r.step = state_.step;
  r.steps = cfg_.steps;
  r.sparsity = gate_sparsity(state_.gates);
  r.tokens = (int64_t)sample.tokens.size();
  r.answer_tokens = (int64_t)sample.loss_rows.size();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  history_.push_back(r);
  return r;
}

GateMatrix Calibrator::gate_matrix() const {
  GateMatrix g;
  g.n_layers = n_layers_;
  g.n_kv_heads = n_kv_heads_;
  g.values.assign(state_.gates.begin(), state_.gates.end());
  return g;
}

void Calibrator::save_checkpoint(const std::string& path) const {
  nlohmann::json j;
  j["format"] = kFormat;
  j["version"] = kVersion;
  j["config"] = cfg_.to_json();
  j["run"] = run_info_;
  j["n_layers"] = n_layers_;
  j["n_kv_heads"] = n_kv_heads_;
  j["step"] = state_.step;
  j["gates"] = state_.gates;
  j["adam_m"] = state_.adam.m;
  j["adam_v"] = state_.adam.v;
  j["adam_t"] = state_.adam.t;
  std::ostringstream rng;
  rng << state_.rng;
  j["rng"] = rng.str();
  j["history"] = nlohmann::json::array();
  for (const auto& r : history_) j["history"].push_back(report_json(r));
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    DUO_CHECK(f.good(), "cannot write calibration checkpoint '{}'", tmp);
    f << j.dump() << "\n";
    DUO_CHECK(f.good(), "error writing calibration checkpoint '{}'", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  DUO_CHECK(!ec, "cannot move checkpoint '{}' to '{}': {}", tmp, path, ec.message());
}

void Calibrator::load_checkpoint(const std::string& path) {
  std::ifstream f(path);
  DUO_CHECK(f.good(), "cannot open calibration checkpoint '{}'", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail("calibration checkpoint '{}' is not valid JSON: {}", path, e.what());
  }
  try {
    DUO_CHECK(j.value("format", "") == kFormat && j.value("version", 0) == kVersion,
              "'{}' is not a duo calibration checkpoint (version {})", path, kVersion);
    DUO_CHECK(j.at("n_layers") == n_layers_ && j.at("n_kv_heads") == n_kv_heads_,
              "checkpoint '{}' is for {} layers x {} KV heads, this model has {} x {}", path, j.at("n_layers").dump(),
              j.at("n_kv_heads").dump(), n_layers_, n_kv_heads_);
    const std::string diff = differences(j.at("config"), cfg_.to_json()) + differences(j.at("run"), run_info_);
    DUO_CHECK(diff.empty(), "checkpoint '{}' was made with other settings; resume with the same ones:{}", path, diff);
    CalibrationState s;
    s.step = j.at("step");
    s.gates = j.at("gates").get<std::vector<double>>();
    s.adam.m = j.at("adam_m").get<std::vector<double>>();
    s.adam.v = j.at("adam_v").get<std::vector<double>>();
    s.adam.t = j.at("adam_t");
    const size_t n = (size_t)n_layers_ * n_kv_heads_;
    DUO_CHECK(s.gates.size() == n && (s.adam.m.empty() || (s.adam.m.size() == n && s.adam.v.size() == n)),
              "checkpoint '{}' has {} gates / {} moments for {} gates", path, s.gates.size(), s.adam.m.size(), n);
    DUO_CHECK(s.step >= 0 && s.step <= cfg_.steps, "checkpoint '{}' is at step {} of {}", path, s.step, cfg_.steps);
    std::istringstream rng(j.at("rng").get<std::string>());
    rng >> s.rng;
    DUO_CHECK(!rng.fail(), "checkpoint '{}': bad generator state", path);
    std::vector<StepReport> hist;
    for (const auto& h : j.at("history")) hist.push_back(report_from_json(h, cfg_.steps));
    state_ = std::move(s);
    history_ = std::move(hist);
  } catch (const nlohmann::json::exception& e) {
    fail("calibration checkpoint '{}' is missing or has a bad field: {}", path, e.what());
  }
}

}  // namespace duo
