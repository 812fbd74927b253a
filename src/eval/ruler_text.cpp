#include "eval/ruler_text.h"

#include "core/error.h"
#include "eval/haystack.h"

namespace duo {

const char* to_string(RulerHaystack h) {
  switch (h) {
    case RulerHaystack::Repeat: return "repeat";
    case RulerHaystack::Prose: return "prose";
    case RulerHaystack::Code: return "code";
    case RulerHaystack::Needles: return "needles";
  }
  return "?";
}

RulerHaystack parse_ruler_haystack(const std::string& s) {
  for (RulerHaystack h : {RulerHaystack::Repeat, RulerHaystack::Prose, RulerHaystack::Code, RulerHaystack::Needles})
    if (s == to_string(h)) return h;
  fail("unknown haystack kind '{}' (expected repeat, prose, code or needles)", s);
}

namespace {

template <size_t N>
const char* pick(const char* const (&arr)[N], std::mt19937_64& rng) {
  return arr[std::uniform_int_distribution<size_t>(0, N - 1)(rng)];
}

// The same few sentences over and over: the easiest haystack (nothing in it looks like a fact).
const char* const kRepeat[] = {"The river runs down to the sea.", "The hills are quiet in the evening.",
                               "The wind moves slowly through the trees.", "Here we go once again.",
                               "Back and forth along the road we walk."};

// Code: short Python-like lines with identifiers from word lists (no digits).
const char* const kVerbsCode[] = {"load", "parse", "merge", "split", "render", "fetch", "update", "build",
                                  "check", "encode", "decode", "filter", "collect", "format", "resolve"};
const char* const kNounsCode[] = {"ledger", "record", "token", "buffer", "header", "entry", "config", "path",
                                  "stream", "cache", "window", "report", "batch", "schema", "handle", "table"};
const char* const kLineTemplates[] = {
    "def {v}_{n}({n}, {n}_list):",
    "    {n} = {v}_{n}({n})",
    "    if {n} is None:",
    "        return {n}_list",
    "    for item in {n}_list:",
    "        item.{v}({n})",
    "    result = [{v}_{n}(x) for x in {n}_list if x]",
    "    return {v}_{n}(result, {n})",
    "class {N}{N}:",
    "    def {v}(self, {n}):",
    "        self.{n} = {n}",
    "        raise ValueError(\"cannot {v} the {n}\")",
    "    # {v} the {n} before the {n} is used",
    "import {n}",
    "from {n} import {v}_{n}",
    "",
};

std::string code_line(std::mt19937_64& rng) {
  const std::string t = pick(kLineTemplates, rng);
  std::string out;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == '{' && i + 2 < t.size() && t[i + 2] == '}') {
      if (t[i + 1] == 'v') out += pick(kVerbsCode, rng);
      if (t[i + 1] == 'n') out += pick(kNounsCode, rng);
      if (t[i + 1] == 'N') {
        std::string w = pick(kNounsCode, rng);
        w[0] = (char)(w[0] - 'a' + 'A');
        out += w;
      }
      i += 2;
    } else {
      out += t[i];
    }
  }
  return out;
}

const char* const kKeyAdj[] = {"amber", "brisk", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy",
                               "jolly", "keen", "lofty", "mellow", "nimble", "odd", "proud", "quick", "rustic",
                               "shy", "tidy", "upbeat", "vivid", "wary", "young", "zesty", "bold", "crisp", "dim",
                               "fierce", "grand", "humble", "lucky"};
const char* const kKeyNoun[] = {"falcon", "badger", "otter", "heron", "lynx", "walrus", "beetle", "salmon",
                                "magpie", "bison", "gecko", "marmot", "pelican", "ferret", "tapir", "weasel",
                                "condor", "puffin", "jackal", "iguana", "toucan", "mole", "stoat", "newt",
                                "raven", "moose", "cobra", "hyena", "koala", "llama", "panda", "zebra"};
const char* const kValAdj[] = {"scarlet", "cobalt", "golden", "silver", "violet", "olive", "ivory", "copper",
                               "indigo", "coral", "ochre", "teal", "maroon", "azure", "bronze", "jade"};
const char* const kValNoun[] = {"anchor", "compass", "harbor", "lantern", "meadow", "orchard", "pillar", "quarry",
                                "saddle", "thicket", "valley", "willow", "citadel", "glacier", "canyon", "prairie"};

// `lead` then `s`, built by appending: GCC 12 warns falsely (-Wrestrict) on `" " + s` and on
// inserting at the front.
std::string with_lead(char lead, const std::string& s) {
  std::string out(1, lead);
  out.append(s);
  return out;
}

}  // namespace

std::vector<std::string> ruler_filler(RulerHaystack kind, size_t count, uint64_t seed) {
  std::vector<std::string> out;
  out.reserve(count);
  switch (kind) {
    case RulerHaystack::Repeat:
      // Always the same cycle; the seed only picks where in it a batch starts.
      for (size_t i = 0; i < count; ++i) {
        out.push_back(with_lead(' ', kRepeat[(seed + i) % std::size(kRepeat)]));
      }
      break;
    case RulerHaystack::Prose:
      for (auto& s : haystack_sentences(count, seed)) out.push_back(with_lead(' ', s));
      break;
    case RulerHaystack::Code: {
      std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 3);
      for (size_t i = 0; i < count; ++i) out.push_back(with_lead('\n', code_line(rng)));
      break;
    }
    case RulerHaystack::Needles: fail("the 'needles' haystack is drawn by the task, not as filler text");
  }
  return out;
}

std::string ruler_word_key(std::mt19937_64& rng) { return std::string(pick(kKeyAdj, rng)) + "-" + pick(kKeyNoun, rng); }
std::string ruler_word_value(std::mt19937_64& rng) {
  return std::string(pick(kValAdj, rng)) + "-" + pick(kValNoun, rng);
}

std::string ruler_uuid(std::mt19937_64& rng) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 32; ++i) {
    if (i == 8 || i == 12 || i == 16 || i == 20) s += '-';
    s += hex[std::uniform_int_distribution<int>(0, 15)(rng)];
  }
  return s;
}

std::string ruler_number(std::mt19937_64& rng, int digits) {
  int64_t lo = 1;
  for (int i = 1; i < digits; ++i) lo *= 10;
  return std::to_string(std::uniform_int_distribution<int64_t>(lo, lo * 10 - 1)(rng));
}

std::string ruler_variable(std::mt19937_64& rng) {
  std::string s;
  for (int i = 0; i < 5; ++i) s += (char)('A' + std::uniform_int_distribution<int>(0, 25)(rng));
  return s;
}

std::string ruler_pseudo_word(std::mt19937_64& rng) {
  static const char* cons = "bdfgklmnprstvz";
  static const char* vow = "aeiou";
  std::string s;
  for (int i = 0; i < 3; ++i) {
    s += cons[std::uniform_int_distribution<int>(0, 13)(rng)];
    s += vow[std::uniform_int_distribution<int>(0, 4)(rng)];
  }
  return s;
}

std::string ruler_coded_word(std::mt19937_64& rng, int letters) {
  std::string s;
  for (int i = 0; i < letters; ++i) s += (char)('a' + std::uniform_int_distribution<int>(0, 25)(rng));
  return s;
}

}  // namespace duo
