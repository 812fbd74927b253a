#include "eval/ruler_tasks.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <set>

#include <fmt/format.h>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo {

const std::vector<RulerTaskInfo>& ruler_tasks() {
  // Answer budgets as RULER's (needles 128, vt 30, cwe 120, fwe 50 tokens), cut where the
  // answer is short: decode time matters on a CPU and greedy answers stop at the end token.
  static const std::vector<RulerTaskInfo> t = {
      {"niah_single_1", RulerHaystack::Repeat, false, true, 32},
      {"niah_single_2", RulerHaystack::Prose, true, true, 32},
      {"niah_single_3", RulerHaystack::Prose, true, true, 48},
      {"niah_multikey_1", RulerHaystack::Prose, true, true, 32},
      {"niah_multikey_2", RulerHaystack::Needles, false, true, 32},
      {"niah_multikey_3", RulerHaystack::Needles, false, true, 48},
      {"niah_multivalue", RulerHaystack::Prose, true, true, 96},
      {"niah_multiquery", RulerHaystack::Prose, true, true, 96},
      {"vt", RulerHaystack::Repeat, false, false, 40},
      {"cwe", RulerHaystack::Repeat, false, false, 120},
      {"fwe", RulerHaystack::Repeat, false, false, 50},
  };
  return t;
}

const RulerTaskInfo& ruler_task(const std::string& name) {
  for (const auto& t : ruler_tasks())
    if (name == t.name) return t;
  std::string known;
  for (const auto& t : ruler_tasks()) known += (known.empty() ? "" : ", ") + std::string(t.name);
  fail("unknown RULER task '{}' (known: {})", name, known);
}

namespace {

using Ids = std::vector<int32_t>;
void append(Ids& dst, const Ids& src) { dst.insert(dst.end(), src.begin(), src.end()); }

// The prompt around the context: chat frame (rendered with a marker and split at it, as the
// needle prompts do), instruction, then after the context the question and answer prefix.
struct Frame {
  Ids prefix, suffix;
};
Frame make_frame(const Tokenizer& tok, const ChatTemplate* tmpl, const std::string& instruction,
                 const std::string& question, const std::string& answer_prefix) {
  std::string head, tail;
  if (tmpl) {
    const std::string marker = "\x01\x02MARKER\x02\x01";
    const std::string r = apply_chat_template(*tmpl, {{"user", marker}}, true);
    const size_t at = r.find(marker);
    DUO_CHECK(at != std::string::npos, "chat template dropped the user message");
    head = r.substr(0, at);
    tail = r.substr(at + marker.size());
  }
  Frame f;
  f.prefix = tok.encode(head, tok.vocab().add_bos, true);
  append(f.prefix, tok.encode(instruction, false, false));
  f.suffix = tok.encode(question, false, false);
  append(f.suffix, tok.encode(tail, false, true));
  append(f.suffix, tok.encode(answer_prefix, false, false));
  return f;
}

int64_t room(const Frame& f, int64_t length, int64_t needed, const std::string& task) {
  const int64_t budget = length - (int64_t)(f.prefix.size() + f.suffix.size()) - needed;
  DUO_CHECK(budget >= 16, "a {}-token prompt is too short for the {} task (needs at least {})", length, task,
            length - budget + 16);
  return budget;
}

struct Needle {
  Ids ids;
  double depth;
  bool answer;
};

// Filler pieces until `budget` tokens (the last one cut to fit), needles at the piece
// boundaries nearest to depth x filler length. `next` yields the next filler piece and says
// whether it is a distractor needle.
RulerPrompt assemble(const Frame& f, std::vector<Needle> needles, int64_t budget,
                     const std::function<std::pair<Ids, bool>()>& next) {
  std::vector<Ids> pieces;
  std::vector<bool> distractor;
  int64_t have = 0;
  while (have < budget) {
    auto [ids, d] = next();
    if (ids.empty()) continue;
    if (have + (int64_t)ids.size() > budget) ids.resize((size_t)(budget - have)), d = false;  // a cut needle is no needle
    have += (int64_t)ids.size();
    pieces.push_back(std::move(ids));
    distractor.push_back(d);
  }
  // Boundary index of each needle (stable: needles at one boundary keep their order).
  std::vector<int64_t> bounds(pieces.size() + 1, 0);
  for (size_t i = 0; i < pieces.size(); ++i) bounds[i + 1] = bounds[i] + (int64_t)pieces[i].size();
  std::vector<size_t> at(needles.size());
  for (size_t n = 0; n < needles.size(); ++n) {
    DUO_CHECK(needles[n].depth >= 0.0 && needles[n].depth <= 1.0, "needle depth {} is outside [0, 1]",
              needles[n].depth);
    const int64_t target = (int64_t)std::llround(needles[n].depth * (double)budget);
    at[n] = (size_t)(std::lower_bound(bounds.begin(), bounds.end(), target) - bounds.begin());
    if (at[n] > 0 && (at[n] == bounds.size() || target - bounds[at[n] - 1] <= bounds[at[n]] - target)) --at[n];
  }
  RulerPrompt p;
  p.tokens = f.prefix;
  p.body_begin = (int64_t)p.tokens.size();
  for (size_t i = 0; i <= pieces.size(); ++i) {
    for (size_t n = 0; n < needles.size(); ++n)
      if (at[n] == i) {
        const int64_t b = (int64_t)p.tokens.size();
        append(p.tokens, needles[n].ids);
        (needles[n].answer ? p.answer_spans : p.distractor_spans).push_back({b, (int64_t)p.tokens.size()});
      }
    if (i < pieces.size()) {
      const int64_t b = (int64_t)p.tokens.size();
      append(p.tokens, pieces[i]);
      if (distractor[i]) p.distractor_spans.push_back({b, (int64_t)p.tokens.size()});
    }
  }
  p.body_end = p.question_begin = (int64_t)p.tokens.size();
  append(p.tokens, f.suffix);
  return p;
}

// Draws values never drawn before in this prompt.
struct Unique {
  std::set<std::string> seen;
  std::string operator()(const std::function<std::string()>& draw) {
    for (int tries = 0;; ++tries) {
      std::string s = draw();
      DUO_CHECK(tries < 100000, "ran out of distinct keys or values");
      if (seen.insert(s).second) return s;
    }
  }
};

// Prose pieces come in seeded batches of 64; code and repeat likewise.
std::function<std::pair<Ids, bool>()> filler_source(const Tokenizer& tok, RulerHaystack kind, uint64_t seed) {
  struct State {
    std::vector<std::string> batch;
    size_t i = 0;
    uint64_t seed;
  };
  auto st = std::make_shared<State>();
  st->seed = seed;
  return [&tok, kind, st]() -> std::pair<Ids, bool> {
    if (st->i == st->batch.size()) st->batch = ruler_filler(kind, 64, st->seed++), st->i = 0;
    return {tok.encode(st->batch[st->i++], false, false), false};
  };
}

std::string join_keys(const std::vector<std::string>& k) {
  std::string s;
  for (size_t i = 0; i < k.size(); ++i) s += (i == 0 ? "" : i + 1 == k.size() ? " and " : ", ") + k[i];
  return s;
}

RulerPrompt build_niah(const Tokenizer& tok, const ChatTemplate* tmpl, const std::string& task, int64_t length,
                       double depth, RulerHaystack hay, std::mt19937_64& rng, uint64_t seed) {
  enum class V { Number, Word, Uuid };
  V value_type = V::Number;
  bool uuid_keys = false;
  int distractors = 0, values = 1, queries = 1;
  if (task == "niah_single_2") value_type = V::Word;
  if (task == "niah_single_3") value_type = V::Uuid;
  if (task == "niah_multikey_1") distractors = 3;
  if (task == "niah_multikey_3") value_type = V::Uuid, uuid_keys = true;
  if (task == "niah_multivalue") values = 4;
  if (task == "niah_multiquery") queries = 4;
  const char* kind = value_type == V::Number ? "number" : value_type == V::Word ? "word" : "uuid";
  const std::string sep = hay == RulerHaystack::Code ? "\n# " : " ";
  Unique keys, vals;
  auto key = [&] {
    return keys([&] {
      if (uuid_keys) return ruler_uuid(rng);
      // Two words give ~1000 keys; a needles haystack of long prompts needs more: a third word.
      std::string k = ruler_word_key(rng);
      if (keys.seen.size() > 600) {
        k += '-';
        k += ruler_word_key(rng);
      }
      return k;
    });
  };
  auto value = [&] {
    return vals([&] {
      return value_type == V::Number ? ruler_number(rng) : value_type == V::Word ? ruler_word_value(rng) : ruler_uuid(rng);
    });
  };
  auto needle_text = [&](const std::string& k, const std::string& v) {
    return sep + "One of the special magic " + kind + "s for " + k + " is: " + v + ".";
  };
  std::uniform_real_distribution<double> anywhere(0.0, 1.0);
  std::vector<std::string> qkeys;
  std::vector<Needle> needles;
  RulerPrompt out;
  std::vector<std::string> expected;
  for (int q = 0; q < queries; ++q) {
    qkeys.push_back(key());
    for (int v = 0; v < values; ++v) {
      const std::string val = value();
      expected.push_back(val);
      // The first answer at the asked depth, the others anywhere.
      needles.push_back({tok.encode(needle_text(qkeys.back(), val), false, false),
                         needles.empty() ? depth : anywhere(rng), true});
    }
  }
  for (int d = 0; d < distractors; ++d) {
    const std::string k = key();
    needles.push_back({tok.encode(needle_text(k, value()), false, false), anywhere(rng), false});
  }
  const std::string what = queries > 1 || values > 1 ? std::string(kind) + "s" : kind;
  const std::string instruction = std::string("Some special magic ") + kind +
                                  "s are hidden within the following text. Make sure to memorize them. I will quiz "
                                  "you about the " + kind + "s afterwards.\n";
  const std::string question =
      (queries > 1 || values > 1 ? "\nWhat are all the special magic " : "\nWhat is the special magic ") + what +
      " for " + join_keys(qkeys) + " mentioned in the provided text?";
  const std::string answer_prefix = "The special magic " + what + " for " + join_keys(qkeys) +
                                    " mentioned in the provided text " + (queries > 1 || values > 1 ? "are" : "is");
  const Frame f = make_frame(tok, tmpl, instruction, question, answer_prefix);
  int64_t needle_tokens = 0;
  for (const auto& n : needles) needle_tokens += (int64_t)n.ids.size();
  const int64_t budget = room(f, length, needle_tokens, task);
  std::function<std::pair<Ids, bool>()> next;
  if (hay == RulerHaystack::Needles) {
    // The haystack is made of needles for other keys, each with its own value.
    next = [&]() -> std::pair<Ids, bool> { return {tok.encode(needle_text(key(), value()), false, false), true}; };
  } else {
    next = filler_source(tok, hay, seed);
  }
  out = assemble(f, needles, budget, next);
  out.expected = expected;
  return out;
}

RulerPrompt build_vt(const Tokenizer& tok, const ChatTemplate* tmpl, int64_t length, std::mt19937_64& rng,
                     uint64_t seed) {
  const int hops = 4;  // RULER's default: one chain of four hops
  Unique names;
  const std::string value = ruler_number(rng, 5);
  std::vector<std::string> vars;
  for (int i = 0; i <= hops; ++i) vars.push_back(names([&] { return ruler_variable(rng); }));
  std::vector<double> depths;
  std::uniform_real_distribution<double> anywhere(0.0, 1.0);
  for (int i = 0; i <= hops; ++i) depths.push_back(anywhere(rng));
  std::sort(depths.begin(), depths.end());  // the chain reads in order
  std::vector<Needle> needles;
  for (int i = 0; i <= hops; ++i) {
    const std::string s = " VAR " + vars[i] + " = " + (i == 0 ? value : "VAR " + vars[i - 1]) + ".";
    needles.push_back({tok.encode(s, false, false), depths[i], true});
  }
  const Frame f = make_frame(
      tok, tmpl, "Memorize and track the chain of variable assignments hidden in the following text.\n",
      "\nQuestion: Find all variables that are assigned the value " + value + " in the text above.",
      "Answer: According to the chain of variable assignments in the text above, " + std::to_string(hops + 1) +
          " variables are assigned the value " + value + ", they are:");
  int64_t needle_tokens = 0;
  for (const auto& n : needles) needle_tokens += (int64_t)n.ids.size();
  RulerPrompt p = assemble(f, needles, room(f, length, needle_tokens, "vt"),
                           filler_source(tok, RulerHaystack::Repeat, seed));
  p.expected = vars;
  return p;
}

// A list of word pieces that fills `budget` tokens exactly (newline tokens pad the end).
// One entry of a word list: " word", or " 12. word" when numbered.
std::string list_entry(bool numbered, int64_t n, const std::string& word) {
  return numbered ? fmt::format(" {}. {}", n, word) : " " + word;
}

RulerPrompt fill_list(const Frame& f, const Tokenizer& tok, const std::vector<std::string>& words, bool numbered,
                      int64_t budget, int64_t* overflow) {
  RulerPrompt p;
  p.tokens = f.prefix;
  p.body_begin = (int64_t)p.tokens.size();
  int64_t used = 0;
  for (size_t i = 0; i < words.size(); ++i) {
    const Ids ids = tok.encode(list_entry(numbered, (int64_t)i + 1, words[i]), false, false);
    used += (int64_t)ids.size();
    append(p.tokens, ids);
    ++p.word_counts[words[i]];
  }
  *overflow = used - budget;
  if (used > budget) return p;
  const Ids nl = tok.encode("\n", false, false);
  DUO_CHECK(nl.size() == 1, "internal: a newline is {} tokens", nl.size());
  for (; used < budget; ++used) append(p.tokens, nl);
  p.body_end = p.question_begin = (int64_t)p.tokens.size();
  append(p.tokens, f.suffix);
  return p;
}

// Average tokens of a list entry, from a sample of entries.
double tokens_per_entry(const Tokenizer& tok, const std::vector<std::string>& words, bool numbered, int64_t from) {
  int64_t t = 0;
  for (size_t i = 0; i < words.size(); ++i)
    t += (int64_t)tok.encode(list_entry(numbered, from + (int64_t)i, words[i]), false, false).size();
  return (double)t / (double)words.size();
}

RulerPrompt build_cwe(const Tokenizer& tok, const ChatTemplate* tmpl, int64_t length, std::mt19937_64& rng) {
  const int n_common = 10;
  const Frame f = make_frame(tok, tmpl,
                             "Below is a numbered list of words. A few of the words appear many times, most appear "
                             "only a few times. Memorize the ones that appear most often.\n",
                             "\nQuestion: What are the 10 most common words in the list above?",
                             "Answer: The 10 words that appear most often in the list are:");
  const int64_t budget = room(f, length, 0, "cwe");
  Unique uniq;
  std::vector<std::string> common, probe;
  for (int i = 0; i < n_common; ++i) common.push_back(uniq([&] { return ruler_pseudo_word(rng); }));
  for (int i = 0; i < 16; ++i) probe.push_back(ruler_pseudo_word(rng));
  const int64_t entries = (int64_t)((double)budget / tokens_per_entry(tok, probe, true, std::max<int64_t>(1, budget / 8)));
  // RULER: common words 30 times, the others 3 times; fewer repeats where the list is short
  // (common words take at most half of it).
  const int f_cw = (int)std::clamp<int64_t>(entries / (2 * n_common), 2, 30);
  const int f_ucw = std::max(1, f_cw / 10);
  DUO_CHECK(f_cw > f_ucw && entries > n_common * f_cw, "a {}-token prompt is too short for the cwe task", length);
  int64_t n_ucw = (entries - n_common * f_cw) / f_ucw;
  std::vector<std::string> rare;
  for (int64_t i = 0; i < n_ucw; ++i) rare.push_back(uniq([&] { return ruler_pseudo_word(rng); }));
  for (;;) {
    std::vector<std::string> list;
    for (const auto& w : common) list.insert(list.end(), (size_t)f_cw, w);
    for (int64_t i = 0; i < n_ucw; ++i) list.insert(list.end(), (size_t)f_ucw, rare[(size_t)i]);
    std::shuffle(list.begin(), list.end(), rng);
    int64_t overflow = 0;
    RulerPrompt p = fill_list(f, tok, list, true, budget, &overflow);
    if (overflow <= 0) {
      p.expected = common;
      return p;
    }
    // Too long: drop enough rare words (about a few tokens an entry) and try again.
    n_ucw -= std::max<int64_t>(1, overflow / (3 * f_ucw) / 2);
    DUO_CHECK(n_ucw > 0, "a {}-token prompt is too short for the cwe task", length);
  }
}

RulerPrompt build_fwe(const Tokenizer& tok, const ChatTemplate* tmpl, int64_t length, std::mt19937_64& rng) {
  const Frame f = make_frame(tok, tmpl,
                             "Read the following coded text and keep track of how often each coded word occurs. "
                             "Find the three coded words that occur most often.\n",
                             "\nQuestion: What are the three most frequent coded words in the text above? Give only "
                             "the words.",
                             "Answer: According to the coded text above, the three most frequent coded words are:");
  const int64_t budget = room(f, length, 0, "fwe");
  for (;;) {
    // Word k (from 1) is drawn with probability proportional to 1 / k^2 (RULER's Zipf alpha 2).
    Unique uniq;
    const int vocab = 200;
    std::vector<std::string> words;
    std::vector<double> w;
    for (int k = 1; k <= vocab; ++k) words.push_back(uniq([&] { return ruler_coded_word(rng); })), w.push_back(1.0 / (k * k));
    std::discrete_distribution<int> zipf(w.begin(), w.end());
    std::vector<std::string> list;
    int64_t used = 0;
    for (;;) {
      const std::string& word = words[(size_t)zipf(rng)];
      const int64_t n = (int64_t)tok.encode(" " + word, false, false).size();
      if (used + n > budget) break;
      used += n;
      list.push_back(word);
    }
    int64_t overflow = 0;
    RulerPrompt p = fill_list(f, tok, list, false, budget, &overflow);
    DUO_CHECK(overflow <= 0, "internal: fwe list overflows by {} tokens", overflow);
    std::vector<std::pair<int, std::string>> by;
    for (const auto& [word, c] : p.word_counts) by.push_back({c, word});
    std::sort(by.rbegin(), by.rend());
    DUO_CHECK(by.size() >= 3, "a {}-token prompt is too short for the fwe task", length);
    // The answer must be unambiguous: draw again on a tie at the third place.
    if (by.size() > 3 && by[2].first == by[3].first) continue;
    for (int i = 0; i < 3; ++i) p.expected.push_back(by[(size_t)i].second);
    return p;
  }
}

}  // namespace

RulerPrompt build_ruler_prompt(const Tokenizer& tok, const ChatTemplate* tmpl, const std::string& task,
                               int64_t length, double depth, RulerHaystack haystack, uint64_t seed) {
  const RulerTaskInfo& info = ruler_task(task);
  DUO_CHECK(depth >= 0.0 && depth <= 1.0, "needle depth {} is outside [0, 1]", depth);
  const RulerHaystack hay = info.varied_haystack ? haystack : info.haystack;
  DUO_CHECK(hay != RulerHaystack::Needles || !info.varied_haystack, "the 'needles' haystack is only for multikey_2/3");
  std::mt19937_64 rng(seed * 0x2545F4914F6CDD1Dull + 11);
  RulerPrompt p;
  if (task.rfind("niah_", 0) == 0)
    p = build_niah(tok, tmpl, task, length, depth, hay, rng, seed);
  else if (task == "vt")
    p = build_vt(tok, tmpl, length, rng, seed);
  else if (task == "cwe")
    p = build_cwe(tok, tmpl, length, rng);
  else
    p = build_fwe(tok, tmpl, length, rng);
  p.haystack = hay;
  DUO_CHECK((int64_t)p.tokens.size() == length, "internal: {} built {} tokens instead of {}", task, p.tokens.size(),
            length);
  return p;
}

}  // namespace duo
