// Friendlier answers to command-line mistakes than CLI11's defaults: "did you mean" for a
// misspelt subcommand or option, advice for flags of other engines (llama.cpp's -ngl), and
// range errors without a 309-digit upper bound.
#pragma once
#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

namespace duo::cli {

// Edit distance (insertions, deletions, substitutions, adjacent swaps), for suggestions.
size_t edit_distance(const std::string& a, const std::string& b);
// The candidate closest to `word` if it is close enough to be a likely typo.
std::optional<std::string> closest(const std::string& word, const std::vector<std::string>& candidates);

// Advice for a flag duo does not have but other engines do (e.g. "-ngl"), or nothing.
std::optional<std::string> foreign_flag_advice(const std::string& arg);

// After CLI11 refused the command line: a clearer message when the cause is an unknown
// subcommand, an unknown option or a flag of another engine; nothing otherwise.
std::optional<std::string> explain_parse_error(const CLI::App& app, int argc, const char* const* argv);

// CLI11's range message with readable bounds: "Value gl not in range 0.000000 to 1797...(309
// digits)" becomes "expects a number >= 0 (got 'gl')".
std::string readable_range_message(const std::string& msg);

}  // namespace duo::cli
