// Needle-in-a-haystack and passkey retrieval: build a prompt of an exact token length with
// a fact hidden at a given depth, ask for it, and score the answer.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace duo {

class Engine;
class Tokenizer;
struct ChatTemplate;

enum class NeedleTask { Niah, Passkey };
const char* to_string(NeedleTask t);

struct NeedlePrompt {
  std::vector<int32_t> tokens;
  std::string expected;           // the value the answer must contain
  int64_t needle_begin = 0;       // token range of the needle sentence
  int64_t needle_end = 0;
  int64_t question_begin = 0;     // first token of the question
};

// `tmpl` may be null (plain text prompt). The result has exactly `length` tokens when the
// length leaves room for the instruction, needle and question (otherwise an error).
NeedlePrompt build_needle_prompt(const Tokenizer& tok, const ChatTemplate* tmpl, NeedleTask task, int64_t length,
                                 double depth, uint64_t seed);

struct NeedleResult {
  NeedleTask task = NeedleTask::Niah;
  int64_t length = 0;
  double depth = 0.0;
  bool correct = false;
  std::string expected, output;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
  size_t kv_bytes = 0, kv_bytes_retrieval = 0, kv_bytes_streaming = 0;
};

struct NeedleSweep {
  NeedleTask task = NeedleTask::Niah;
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  int max_new_tokens = 16;
  uint64_t seed = 1;
  bool use_chat_template = true;
  std::string chat_template_file;  // instead of the model's own template ("" = the model's)
};

// Runs every (length, depth) cell once with greedy decoding. `progress(done, total, last)`
// is called after each cell.
std::vector<NeedleResult> run_needle_sweep(Engine& engine, const NeedleSweep& sweep,
                                           const std::function<void(size_t, size_t, const NeedleResult&)>& progress);

// Reports: CSV (one row a cell), JSON (cells plus summary), SVG heatmap (depth x length).
void write_needle_csv(const std::vector<NeedleResult>& r, const std::string& path);
void write_needle_json(const std::vector<NeedleResult>& r, const std::string& mode, const std::string& model,
                       const std::string& path);
void write_needle_svg(const std::vector<NeedleResult>& r, const std::string& title, const std::string& path);
double needle_accuracy(const std::vector<NeedleResult>& r);

}  // namespace duo
