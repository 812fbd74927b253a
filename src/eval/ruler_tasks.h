// RULER-style synthetic tasks (after Hsieh et al., 2024, "RULER: What's the Real Context Size
// of Your Long-Context Language Models?"), generated for the model's own tokenizer at an exact
// prompt length: needle retrieval (single, multi-key with distractor keys, multi-value,
// multi-query; word, number and UUID values), variable tracking, common-words and
// frequent-words extraction. The texts are this project's own; the task shapes and the
// scoring (ruler.h) follow the paper.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "eval/ruler_text.h"

namespace duo {

class Tokenizer;
struct ChatTemplate;

struct RulerTaskInfo {
  const char* name;
  // Haystack the task always uses; Prose here means "the grid's varied haystack" (prose or
  // code, chosen by the grid or --haystack).
  RulerHaystack haystack;
  bool varied_haystack;  // takes the grid's haystack kind
  bool uses_depth;       // the first answer goes at the asked depth (needle tasks)
  int max_new_tokens;    // answer tokens to generate
};
// Every task, in report order.
const std::vector<RulerTaskInfo>& ruler_tasks();
const RulerTaskInfo& ruler_task(const std::string& name);  // error on unknown names

struct RulerPrompt {
  std::vector<int32_t> tokens;
  std::vector<std::string> expected;  // every value the answer must contain
  // Token ranges [begin, end) of the sentences that hold the expected values (needles, the
  // variable chain), in order, and of the distractor needles (other keys, other values).
  std::vector<std::pair<int64_t, int64_t>> answer_spans, distractor_spans;
  int64_t body_begin = 0, body_end = 0;  // the context (haystack and needles)
  int64_t question_begin = 0;            // first token after the context
  RulerHaystack haystack = RulerHaystack::Repeat;
  // Word extraction tasks: how often each listed word occurs in the context.
  std::map<std::string, int> word_counts;
};

// A prompt of exactly `length` tokens (an error when the length leaves no room for the task).
// `depth` in [0, 1] places the first answer needle (ignored by tasks without depth); `haystack`
// is used by tasks with a varied haystack. `tmpl` may be null (plain text).
RulerPrompt build_ruler_prompt(const Tokenizer& tok, const ChatTemplate* tmpl, const std::string& task,
                               int64_t length, double depth, RulerHaystack haystack, uint64_t seed);

}  // namespace duo
