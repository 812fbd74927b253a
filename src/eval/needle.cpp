#include "eval/needle.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "duo/engine.h"
#include "eval/haystack.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo {

const char* to_string(NeedleTask t) { return t == NeedleTask::Niah ? "niah" : "passkey"; }

namespace {

struct TaskText {
  std::string instruction, needle, question, answer_prefix, expected;
};

TaskText task_text(NeedleTask task, uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + 17);
  TaskText t;
  if (task == NeedleTask::Niah) {
    t.expected = std::to_string(std::uniform_int_distribution<int>(1000000, 9999999)(rng));
    t.instruction = "Below is a long text. Somewhere in it there is a special magic number. Read carefully.\n\n";
    t.needle = " The special magic number is " + t.expected + ".";
    t.question = "\n\nWhat is the special magic number mentioned in the text above?";
    t.answer_prefix = "The special magic number is";
  } else {
    t.expected = std::to_string(std::uniform_int_distribution<int>(10000, 99999)(rng));
    t.instruction = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n\n";
    t.needle = " The pass key is " + t.expected + ". Remember it. " + t.expected + " is the pass key.";
    t.question = "\n\nWhat is the pass key?";
    t.answer_prefix = "The pass key is";
  }
  return t;
}

void append(std::vector<int32_t>& dst, const std::vector<int32_t>& src) { dst.insert(dst.end(), src.begin(), src.end()); }

}  // namespace

NeedlePrompt build_needle_prompt(const Tokenizer& tok, const ChatTemplate* tmpl, NeedleTask task, int64_t length,
                                 double depth, uint64_t seed) {
  DUO_CHECK(depth >= 0.0 && depth <= 1.0, "needle depth {} is outside [0, 1]", depth);
  const TaskText t = task_text(task, seed);
  // The chat frame around the user message: render with a marker and split at it.
  std::string head, tail;
  const std::string marker = "\x01\x02MARKER\x02\x01";
  if (tmpl) {
    const std::string r = apply_chat_template(*tmpl, {{"user", marker}}, true);
    const size_t at = r.find(marker);
    DUO_CHECK(at != std::string::npos, "chat template dropped the user message");
    head = r.substr(0, at);
    tail = r.substr(at + marker.size());
  }
  std::vector<int32_t> prefix = tok.encode(head, tok.vocab().add_bos, true);
  append(prefix, tok.encode(t.instruction, false, false));
  std::vector<int32_t> suffix = tok.encode(t.question, false, false);
  append(suffix, tok.encode(tail, false, true));
  append(suffix, tok.encode(t.answer_prefix, false, false));
  const std::vector<int32_t> needle = tok.encode(t.needle, false, false);
  const int64_t budget = length - (int64_t)(prefix.size() + suffix.size() + needle.size());
  DUO_CHECK(budget >= 16, "a {}-token prompt is too short for the {} task (needs at least {})", length,
            to_string(task), prefix.size() + suffix.size() + needle.size() + 16);

  // Filler sentences until the budget is met; the last one is cut to fit exactly.
  std::vector<std::vector<int32_t>> sentences;
  int64_t have = 0;
  size_t batch = 64;
  uint64_t s = seed;
  while (have < budget) {
    for (const auto& text : haystack_sentences(batch, s++)) {
      auto ids = tok.encode(" " + text, false, false);
      if (have + (int64_t)ids.size() > budget) ids.resize((size_t)(budget - have));
      have += (int64_t)ids.size();
      sentences.push_back(std::move(ids));
      if (have >= budget) break;
    }
  }
  // Needle goes at the sentence boundary nearest to depth * filler length.
  const int64_t target = (int64_t)std::llround(depth * (double)budget);
  size_t insert_at = 0;
  int64_t acc = 0, best = INT64_MAX;
  for (size_t i = 0; i <= sentences.size(); ++i) {
    if (std::llabs(acc - target) < best) best = std::llabs(acc - target), insert_at = i;
    if (i < sentences.size()) acc += (int64_t)sentences[i].size();
  }
  NeedlePrompt p;
  p.expected = t.expected;
  p.tokens = prefix;
  for (size_t i = 0; i <= sentences.size(); ++i) {
    if (i == insert_at) {
      p.needle_begin = (int64_t)p.tokens.size();
      append(p.tokens, needle);
      p.needle_end = (int64_t)p.tokens.size();
    }
    if (i < sentences.size()) append(p.tokens, sentences[i]);
  }
  p.question_begin = (int64_t)p.tokens.size();
  append(p.tokens, suffix);
  DUO_CHECK((int64_t)p.tokens.size() == length, "internal: built {} tokens instead of {}", p.tokens.size(), length);
  return p;
}

std::vector<NeedleResult> run_needle_sweep(Engine& engine, const NeedleSweep& sw,
                                           const std::function<void(size_t, size_t, const NeedleResult&)>& progress) {
  DUO_CHECK(!sw.lengths.empty() && !sw.depths.empty(), "needle sweep needs lengths and depths");
  const Tokenizer& tok = engine.tokenizer();
  std::unique_ptr<ChatTemplate> tmpl;
  if (sw.use_chat_template) tmpl = std::make_unique<ChatTemplate>(chat_template_of(engine.model(), engine.tokenizer(), sw.chat_template_file));
  for (int64_t L : sw.lengths)
    DUO_CHECK(L + sw.max_new_tokens <= engine.max_context(),
              "context length {} (+{} answer tokens) exceeds the limit of {} tokens (raise --max-context)", L,
              sw.max_new_tokens, engine.max_context());
  std::vector<NeedleResult> out;
  const size_t total = sw.lengths.size() * sw.depths.size();
  size_t cell = 0;
  for (int64_t L : sw.lengths)
    for (double d : sw.depths) {
      const NeedlePrompt p = build_needle_prompt(tok, tmpl.get(), sw.task, L, d, sw.seed + cell);
      auto session = engine.new_session();
      Sampler greedy(SamplerConfig{});
      NeedleResult r;
      r.task = sw.task;
      r.length = L;
      r.depth = d;
      r.expected = p.expected;
      GenerationStats st = session->generate(p.tokens, sw.max_new_tokens, greedy, [&](int32_t, const std::string& t) {
        r.output += t;
        return true;
      });
      r.correct = r.output.find(p.expected) != std::string::npos;
      r.prefill_seconds = st.prefill_seconds;
      r.decode_seconds = st.decode_seconds;
      r.kv_bytes = st.kv_bytes;
      r.kv_bytes_retrieval = st.kv_bytes_retrieval;
      r.kv_bytes_streaming = st.kv_bytes_streaming;
      out.push_back(r);
      ++cell;
      if (progress) progress(cell, total, out.back());
    }
  return out;
}

double needle_accuracy(const std::vector<NeedleResult>& r) {
  if (r.empty()) return 0.0;
  size_t ok = 0;
  for (const auto& x : r) ok += x.correct;
  return (double)ok / (double)r.size();
}

namespace {
std::string csv_escape(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"') o += '"';
    o += (c == '\n' || c == '\r') ? ' ' : c;
  }
  return o + "\"";
}
std::ofstream open_out(const std::string& path) {
  std::ofstream f(path);
  DUO_CHECK(f.good(), "cannot write '{}'", path);
  return f;
}
}  // namespace

void write_needle_csv(const std::vector<NeedleResult>& rs, const std::string& path) {
  auto f = open_out(path);
  f << "task,length,depth,correct,expected,output,prefill_s,decode_s,kv_bytes,kv_bytes_retrieval,kv_bytes_streaming\n";
  for (const auto& r : rs)
    f << to_string(r.task) << ',' << r.length << ',' << r.depth << ',' << (r.correct ? 1 : 0) << ',' << r.expected
      << ',' << csv_escape(r.output) << ',' << r.prefill_seconds << ',' << r.decode_seconds << ',' << r.kv_bytes << ','
      << r.kv_bytes_retrieval << ',' << r.kv_bytes_streaming << '\n';
}

void write_needle_json(const std::vector<NeedleResult>& rs, const std::string& mode, const std::string& model,
                       const std::string& path) {
  nlohmann::json j;
  j["model"] = model;
  j["attention"] = mode;
  j["accuracy"] = needle_accuracy(rs);
  for (const auto& r : rs)
    j["cells"].push_back({{"task", to_string(r.task)},
                          {"length", r.length},
                          {"depth", r.depth},
                          {"correct", r.correct},
                          {"expected", r.expected},
                          {"output", r.output},
                          {"prefill_s", r.prefill_seconds},
                          {"decode_s", r.decode_seconds},
                          {"kv_bytes", r.kv_bytes},
                          {"kv_bytes_retrieval", r.kv_bytes_retrieval},
                          {"kv_bytes_streaming", r.kv_bytes_streaming}});
  auto f = open_out(path);
  // A model's output is any bytes (a cut-off UTF-8 character, a random model's noise): they are
  // written as U+FFFD rather than the dump throwing.
  f << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

void write_needle_svg(const std::vector<NeedleResult>& rs, const std::string& title, const std::string& path) {
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  std::map<std::pair<int64_t, double>, std::pair<int, int>> cells;  // correct, total
  for (const auto& r : rs) {
    if (std::find(lengths.begin(), lengths.end(), r.length) == lengths.end()) lengths.push_back(r.length);
    if (std::find(depths.begin(), depths.end(), r.depth) == depths.end()) depths.push_back(r.depth);
    auto& c = cells[{r.length, r.depth}];
    c.first += r.correct;
    c.second += 1;
  }
  std::sort(lengths.begin(), lengths.end());
  std::sort(depths.begin(), depths.end());
  const int cw = 70, ch = 34, left = 90, top = 60;
  // Wide enough for the title too (about 0.55 em a character at 16 px).
  const int title_w = (int)(title.size() + 20) * 9 + 20;
  const int W = std::max(left + cw * (int)lengths.size() + 30, title_w), H = top + ch * (int)depths.size() + 70;
  auto f = open_out(path);
  f << fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\">\n", W, H);
  f << fmt::format("<rect width=\"{}\" height=\"{}\" fill=\"white\"/>\n", W, H);
  f << fmt::format("<text x=\"{}\" y=\"24\" font-size=\"16\" text-anchor=\"middle\">{} (accuracy {:.0f}%)</text>\n", W / 2,
                   title, 100.0 * needle_accuracy(rs));
  for (size_t yi = 0; yi < depths.size(); ++yi) {
    f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{:.0f}%</text>\n", left - 8,
                     top + ch * (int)yi + ch / 2 + 4, depths[yi] * 100);
    for (size_t xi = 0; xi < lengths.size(); ++xi) {
      auto it = cells.find({lengths[xi], depths[yi]});
      const double score = it == cells.end() ? 0.0 : (double)it->second.first / it->second.second;
      // Red (0) to green (1).
      const int red = (int)std::lround(220 * (1 - score) + 30 * score), green = (int)std::lround(60 * (1 - score) + 170 * score);
      f << fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"rgb({},{},70)\" stroke=\"white\"/>\n",
                       left + cw * (int)xi, top + ch * (int)yi, cw, ch, red, green);
      f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"white\" text-anchor=\"middle\">{:.0f}</text>\n",
                       left + cw * (int)xi + cw / 2, top + ch * (int)yi + ch / 2 + 4, score * 100);
    }
  }
  for (size_t xi = 0; xi < lengths.size(); ++xi)
    f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n",
                     left + cw * (int)xi + cw / 2, top + ch * (int)depths.size() + 18, lengths[xi]);
  f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\">context length (tokens)</text>\n",
                   left + cw * (int)lengths.size() / 2, top + ch * (int)depths.size() + 42);
  f << fmt::format("<text x=\"16\" y=\"{}\" font-size=\"13\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">needle depth</text>\n",
                   top + ch * (int)depths.size() / 2, top + ch * (int)depths.size() / 2);
  f << "</svg>\n";
}

}  // namespace duo
