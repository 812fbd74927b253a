#include "cli_errors.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstdlib>
#include <regex>

namespace duo::cli {

size_t edit_distance(const std::string& a, const std::string& b) {
  // Optimal string alignment distance: a swapped pair of letters ("promt"/"prmot") costs 1.
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

namespace {
std::string strip_dashes(const std::string& s) { return s.substr(std::min(s.find_first_not_of('-'), s.size())); }
}  // namespace

std::optional<std::string> closest(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string w = strip_dashes(word);
  std::optional<std::string> best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(w, strip_dashes(c));
    // Close enough to be a typo: at most 2 edits, and fewer than half the word's letters.
    if (d < best_d && d <= 2 && 2 * d < w.size()) best_d = d, best = c;
  }
  return best;
}

std::optional<std::string> foreign_flag_advice(const std::string& arg) {
  const std::string name = arg.substr(0, arg.find('='));
  if (name == "-ngl" || name == "--n-gpu-layers" || name == "--gpu-layers" || name == "-ngld")
    return fmt::format("{}: duo has no layer offload (the whole model runs on one device); use --device cuda", name);
  if (name == "--n-predict") return fmt::format("{}: duo calls it -n/--max-tokens", name);
  return std::nullopt;
}

namespace {

std::string command_path(const CLI::App* app) {
  std::string path;
  for (const CLI::App* a = app; a != nullptr; a = a->get_parent()) path = a->get_name() + (path.empty() ? "" : " ") + path;
  return path.empty() ? "duo" : path;
}

std::vector<std::string> option_names(const CLI::App* app) {
  std::vector<std::string> names;
  for (const CLI::Option* o : app->get_options()) {
    for (const auto& l : o->get_lnames()) names.push_back("--" + l);
    for (const auto& s : o->get_snames()) names.push_back("-" + s);
  }
  return names;
}

bool is_number(const std::string& s) {
  if (s.empty()) return false;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

}  // namespace

std::optional<std::string> explain_parse_error(const CLI::App& app, int argc, const char* const* argv) {
  for (int i = 1; i < argc; ++i)
    if (auto advice = foreign_flag_advice(argv[i])) return advice;
  const CLI::App* cur = &app;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") break;
    if (a.size() > 1 && a[0] == '-' && !is_number(a)) {
      std::string name = a;
      bool inline_value = false;
      if (a.rfind("--", 0) == 0) {
        if (const auto eq = a.find('='); eq != std::string::npos) name = a.substr(0, eq), inline_value = true;
      } else if (a.size() > 2) {
        name = a.substr(0, 2), inline_value = true;  // -n5 or a cluster of short flags
      }
      const CLI::Option* opt = cur->get_option_no_throw(name);
      if (opt == nullptr) {
        std::string msg = fmt::format("{}: unknown option '{}'", command_path(cur), name);
        if (auto s = closest(name, option_names(cur))) msg += fmt::format(" (did you mean '{}'?)", *s);
        return msg + fmt::format("; see {} --help", command_path(cur));
      }
      if (!inline_value && opt->get_items_expected_max() > 0) ++i;  // its value
      continue;
    }
    const auto subs = cur->get_subcommands([](const CLI::App*) { return true; });
    if (subs.empty()) continue;  // a positional argument
    const CLI::App* next = nullptr;
    std::vector<std::string> names;
    for (const CLI::App* s : subs) {
      if (s->check_name(a)) next = s;
      names.push_back(s->get_name());
    }
    if (next == nullptr) {
      std::string msg = fmt::format("{}: unknown subcommand '{}'", command_path(cur), a);
      if (auto s = closest(a, names)) return msg + fmt::format(" (did you mean '{}'?)", *s);
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
      return msg + "; the subcommands are: " + list;
    }
    cur = next;
  }
  return std::nullopt;
}

std::string readable_range_message(const std::string& msg) {
  static const std::regex re(R"(^(.*)Value (.*) not in range (\S+) to (\S+)$)");
  std::smatch m;
  if (!std::regex_match(msg, m, re)) return msg;
  const std::string prefix = m[1], value = m[2], lo = m[3], hi = m[4];
  // std::to_string's fixed notation: "0.000000" reads as 0.
  auto tidy = [](std::string s) {
    if (s.find('.') == std::string::npos) return s;
    s.erase(s.find_last_not_of('0') + 1);
    if (s.back() == '.') s.pop_back();
    return s;
  };
  if (!is_number(value)) return fmt::format("{}expects a number (got '{}')", prefix, value);
  // A real upper bound: CLI11's message, with "0.000000" shown as 0.
  if (hi.size() <= 20) return fmt::format("{}Value {} not in range {} to {}", prefix, value, tidy(lo), tidy(hi));
  // No upper bound (CLI::NonNegativeNumber, CLI::PositiveNumber): only the lower one matters.
  // PositiveNumber's bound is the smallest double, which to_string shows as 0.000000.
  if (std::strtod(lo.c_str(), nullptr) == 0.0 && std::strtod(value.c_str(), nullptr) == 0.0)
    return fmt::format("{}must be greater than 0 (got {})", prefix, value);
  return fmt::format("{}must be at least {} (got {})", prefix, tidy(lo), value);
}

}  // namespace duo::cli
