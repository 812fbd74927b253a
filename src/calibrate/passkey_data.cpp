#include "calibrate/passkey_data.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "eval/haystack.h"
#include "tokenizer/tokenizer.h"

namespace duo {

namespace {

const char* const kOrdinals[] = {"first",      "second",     "third",     "fourth",     "fifth",
                                 "sixth",      "seventh",    "eighth",    "ninth",      "tenth",
                                 "eleventh",   "twelfth",    "thirteenth", "fourteenth", "fifteenth",
                                 "sixteenth",  "seventeenth", "eighteenth", "nineteenth", "twentieth"};
constexpr int kMaxPasskeys = 20;
constexpr int64_t kMinHaystack = 64;  // tokens of prose a sample must keep

const std::string kIntro = "This is a very long story book: <book>";
const std::string kOutro = " </book>.\n\n";

std::string needle_text(int i, const std::string& passkey) {
  return std::string(" Remember this sequence of words, it's the ") + kOrdinals[i] + " passkey to the vault: " + passkey +
         ".";
}
std::string question_text(int i) {
  return std::string("Based on the content of the book, what is the ") + kOrdinals[i] + " passkey to the vault?";
}

void append(std::vector<int32_t>& dst, const std::vector<int32_t>& src) { dst.insert(dst.end(), src.begin(), src.end()); }

// The sample's text around the book and the answers, split into pieces: pieces[0] before the
// book, pieces[1] between the book and the first answer, pieces[i + 2] between answer i and
// answer i + 1. Rendered through the chat template with markers at the variable parts.
std::vector<std::string> frame_pieces(bool chat, const ChatTemplate& tmpl, int n) {
  std::vector<std::string> pieces;
  if (!chat) {
    pieces.push_back(kIntro);
    pieces.push_back(kOutro + question_text(0) + "\nPasskey: ");
    for (int i = 1; i < n; ++i) pieces.push_back("\n\n" + question_text(i) + "\nPasskey: ");
    return pieces;
  }
  auto marker = [](int i) { return "\x01\x02M" + std::to_string(i) + "\x02\x01"; };
  // Marker 0 is the book, marker i + 1 the answer i.
  std::vector<ChatMessage> msgs;
  msgs.push_back({"user", kIntro + marker(0) + kOutro + question_text(0)});
  for (int i = 0; i < n; ++i) {
    msgs.push_back({"assistant", marker(i + 1)});
    if (i + 1 < n) msgs.push_back({"user", question_text(i + 1)});
  }
  const std::string r = apply_chat_template(tmpl, msgs, false);
  size_t at = 0;
  for (int i = 0; i <= n; ++i) {
    const size_t m = r.find(marker(i), at);
    DUO_CHECK(m != std::string::npos, "chat template dropped part of the passkey conversation");
    pieces.push_back(r.substr(at, m - at));
    at = m + marker(i).size();
  }
  return pieces;  // the text after the last answer is not part of a sample
}

}  // namespace

uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  DUO_CHECK(n > 0, "uniform_below(0)");
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // accept [0, limit): a multiple of n values
  for (;;) {
    const uint64_t x = rng();
    if (x < limit) return x % n;
  }
}

double uniform_unit(std::mt19937_64& rng) { return (double)(rng() >> 11) * 0x1.0p-53; }

const std::vector<std::string>& PasskeyGenerator::alphabet() {
  static const std::vector<std::string> a = {"alpha",  "bravo",   "charlie", "delta",  "echo",    "foxtrot", "golf",
                                             "hotel",  "india",   "juliett", "kilo",   "lima",    "mike",    "november",
                                             "oscar",  "papa",    "quebec",  "romeo",  "sierra",  "tango",   "uniform",
                                             "victor", "whiskey", "xray",    "yankee", "zulu"};
  return a;
}

LossRows parse_loss_rows(const std::string& name) {
  if (name == "answers") return LossRows::Answers;
  if (name == "predictions") return LossRows::Predictions;
  if (name == "first") return LossRows::FirstWords;
  if (name == "questions") return LossRows::Questions;
  fail("unknown loss rows '{}' (answers, predictions, first or questions)", name);
}

const char* to_string(LossRows rows) {
  switch (rows) {
    case LossRows::Answers: return "answers";
    case LossRows::Predictions: return "predictions";
    case LossRows::FirstWords: return "first";
    case LossRows::Questions: return "questions";
  }
  return "?";
}

void PasskeyDataConfig::validate() const {
  DUO_CHECK(min_len >= 0 && max_len >= std::max<int64_t>(1, min_len), "sample lengths: need min ({}) <= max ({})",
            min_len, max_len);
  DUO_CHECK(length_intervals >= 1, "length intervals must be >= 1 (got {})", length_intervals);
  DUO_CHECK(n_passkeys >= 1 && n_passkeys <= kMaxPasskeys, "passkeys per sample must be in 1..{} (got {})",
            kMaxPasskeys, n_passkeys);
  DUO_CHECK(passkey_words >= 1, "passkey words must be >= 1 (got {})", passkey_words);
  DUO_CHECK(min_depth >= 0 && min_depth <= max_depth && max_depth <= 1,
            "passkey depths: need 0 <= min ({}) <= max ({}) <= 1", min_depth, max_depth);
  DUO_CHECK(depth_intervals >= n_passkeys, "depth intervals ({}) must be at least the passkeys per sample ({})",
            depth_intervals, n_passkeys);
}

PasskeyGenerator::PasskeyGenerator(const Tokenizer& tok, const ChatTemplate* tmpl, PasskeyDataConfig cfg)
    : tok_(tok), chat_(tmpl != nullptr), cfg_(cfg) {
  if (tmpl) tmpl_ = *tmpl;
  cfg_.validate();
  // The shortest allowed length must leave room for prose with the longest possible passkeys.
  std::string longest;
  size_t most = 0;
  for (const auto& w : alphabet()) {
    const size_t t = tok_.encode(" " + w, false, false).size();
    if (t > most) most = t, longest = w;
  }
  std::string key = longest;
  for (int i = 1; i < cfg_.passkey_words; ++i) key += " " + longest;
  const int64_t fixed = max_fixed_ = fixed_tokens(std::vector<std::string>((size_t)cfg_.n_passkeys, key));
  if (cfg_.min_len == 0) {
    cfg_.min_len = fixed + PasskeyDataConfig::kAutoHaystack;
    DUO_CHECK(cfg_.min_len <= cfg_.max_len,
              "{} passkeys of {} words with {} tokens of haystack need samples of {} tokens, more than the maximum "
              "length {}; use fewer/shorter passkeys or a longer maximum",
              cfg_.n_passkeys, cfg_.passkey_words, PasskeyDataConfig::kAutoHaystack, cfg_.min_len, cfg_.max_len);
  }
  DUO_CHECK(cfg_.min_len >= fixed + kMinHaystack,
            "minimum sample length {} is too short for {} passkeys of {} words: the question, answers and "
            "passkeys alone can take {} tokens; use a minimum length of at least {} or fewer/shorter passkeys",
            cfg_.min_len, cfg_.n_passkeys, cfg_.passkey_words, fixed, fixed + kMinHaystack);
}

int64_t PasskeyGenerator::fixed_tokens(const std::vector<std::string>& passkeys) const {
  const int n = (int)passkeys.size();
  const std::vector<std::string> pieces = frame_pieces(chat_, tmpl_, n);
  int64_t total = 0;
  for (size_t i = 0; i < pieces.size(); ++i)
    total += (int64_t)tok_.encode(pieces[i], i == 0 && tok_.vocab().add_bos, chat_).size();
  for (int i = 0; i < n; ++i)
    total += (int64_t)(tok_.encode(needle_text(i, passkeys[i]), false, false).size() +
                       tok_.encode(passkeys[i], false, false).size());
  return total;
}

PasskeySample PasskeyGenerator::build(int64_t length, const std::vector<std::string>& passkeys,
                                      const std::vector<double>& depths, uint64_t haystack_seed) const {
  const int n = (int)passkeys.size();
  DUO_CHECK(n >= 1 && n <= kMaxPasskeys && depths.size() == passkeys.size(),
            "passkey sample: {} passkeys and {} depths (need 1..{} of each)", n, depths.size(), kMaxPasskeys);
  for (size_t i = 0; i < depths.size(); ++i)
    DUO_CHECK(depths[i] >= 0 && depths[i] <= 1 && (i == 0 || depths[i] >= depths[i - 1]),
              "passkey depths must be ascending in [0, 1]");
  const std::vector<std::string> pieces = frame_pieces(chat_, tmpl_, n);
  std::vector<std::vector<int32_t>> piece_ids, needles, answers;
  for (size_t i = 0; i < pieces.size(); ++i)
    piece_ids.push_back(tok_.encode(pieces[i], i == 0 && tok_.vocab().add_bos, chat_));
  for (int i = 0; i < n; ++i) {
    needles.push_back(tok_.encode(needle_text(i, passkeys[i]), false, false));
    answers.push_back(tok_.encode(passkeys[i], false, false));
  }
  int64_t fixed = 0;
  for (const auto& v : piece_ids) fixed += (int64_t)v.size();
  for (int i = 0; i < n; ++i) fixed += (int64_t)(needles[i].size() + answers[i].size());
  const int64_t budget = length - fixed;
  DUO_CHECK(budget >= kMinHaystack,
            "a {}-token passkey sample with {} passkeys leaves {} tokens of haystack (needs at least {}); "
            "use longer samples or fewer/shorter passkeys",
            length, n, budget, kMinHaystack);

  // Haystack sentences until the budget is met; the last one is cut to fit exactly.
  std::vector<std::vector<int32_t>> sentences;
  int64_t have = 0;
  for (uint64_t s = haystack_seed; have < budget; ++s)
    for (const auto& text : haystack_sentences(64, s)) {
      auto ids = tok_.encode(" " + text, false, false);
      if (have + (int64_t)ids.size() > budget) ids.resize((size_t)(budget - have));
      have += (int64_t)ids.size();
      sentences.push_back(std::move(ids));
      if (have >= budget) break;
    }
  // Each needle goes at the sentence boundary nearest to depth * haystack length.
  std::vector<size_t> at((size_t)n);
  for (int i = 0; i < n; ++i) {
    const int64_t target = (int64_t)std::llround(depths[i] * (double)budget);
    int64_t acc = 0, best = INT64_MAX;
    for (size_t b = 0; b <= sentences.size(); ++b) {
      if (std::llabs(acc - target) < best) best = std::llabs(acc - target), at[i] = b;
      if (b < sentences.size()) acc += (int64_t)sentences[b].size();
    }
  }

  PasskeySample s;
  s.passkeys = passkeys;
  s.depths = depths;
  std::vector<int32_t>& t = s.tokens;
  t.reserve((size_t)length);
  append(t, piece_ids[0]);
  int next_needle = 0;
  for (size_t b = 0; b <= sentences.size(); ++b) {
    while (next_needle < n && at[next_needle] == b) {
      s.needle_positions.push_back((int64_t)t.size());
      append(t, needles[next_needle++]);
    }
    if (b < sentences.size()) append(t, sentences[b]);
  }
  const int64_t questions_begin = (int64_t)t.size();
  append(t, piece_ids[1]);
  for (int i = 0; i < n; ++i) {
    const int64_t begin = (int64_t)t.size();
    append(t, answers[i]);
    s.answer_spans.push_back({begin, (int64_t)t.size()});
    if (i + 1 < n) append(t, piece_ids[i + 2]);
  }
  DUO_CHECK((int64_t)t.size() == length, "passkey sample has {} tokens, expected {}", t.size(), length);
  mark_answers(s, cfg_.loss_rows, questions_begin);
  return s;
}

int64_t draw_sample_length(std::mt19937_64& rng, int64_t min_len, int64_t max_len, int intervals) {
  if (intervals <= 1 || max_len <= min_len) return min_len;
  const uint64_t k = uniform_below(rng, (uint64_t)intervals);
  return min_len + (max_len - min_len) * (int64_t)k / (intervals - 1);
}

void mark_answers(PasskeySample& s, LossRows rows, int64_t questions_begin) {
  s.answer_mask.assign(s.tokens.size(), 0);
  for (const auto& span : s.answer_spans)
    for (int64_t p = span[0]; p < span[1]; ++p) s.answer_mask[(size_t)p] = 1;
  s.loss_rows.clear();
  switch (rows) {
    case LossRows::Answers:
      for (const auto& span : s.answer_spans)
        for (int64_t p = span[0]; p < span[1]; ++p) s.loss_rows.push_back(p);
      break;
    case LossRows::Predictions:  // (an answer follows at least one template or question token)
      for (const auto& span : s.answer_spans)
        for (int64_t p = span[0] - 1; p < span[1] - 1; ++p) s.loss_rows.push_back(p);
      break;
    case LossRows::FirstWords:
      for (const auto& span : s.answer_spans) s.loss_rows.push_back(span[0] - 1);
      break;
    case LossRows::Questions:
      for (int64_t p = questions_begin; p < (int64_t)s.tokens.size(); ++p) s.loss_rows.push_back(p);
      break;
  }
}

PasskeySample PasskeyGenerator::next(std::mt19937_64& rng) {
  const PasskeyDataConfig& c = cfg_;
  const int64_t length = draw_sample_length(rng, c.min_len, c.max_len, c.length_intervals);
  // Distinct depth slots (partial Fisher-Yates), ascending.
  std::vector<int> slots(c.depth_intervals);
  for (int i = 0; i < c.depth_intervals; ++i) slots[i] = i;
  for (int i = 0; i < c.n_passkeys; ++i)
    std::swap(slots[i], slots[i + (int)uniform_below(rng, (uint64_t)(c.depth_intervals - i))]);
  slots.resize(c.n_passkeys);
  std::sort(slots.begin(), slots.end());
  std::vector<double> depths;
  for (int k : slots)
    depths.push_back(c.depth_intervals == 1 ? c.min_depth
                                            : c.min_depth + (c.max_depth - c.min_depth) * k / (c.depth_intervals - 1));
  std::vector<std::string> keys;
  for (int i = 0; i < c.n_passkeys; ++i) {
    std::string key;
    for (int w = 0; w < c.passkey_words; ++w)
      key += (w ? " " : "") + alphabet()[uniform_below(rng, alphabet().size())];
    keys.push_back(key);
  }
  const uint64_t haystack_seed = rng();
  return build(length, keys, depths, haystack_seed);
}

}  // namespace duo
