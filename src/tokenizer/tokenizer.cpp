#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <optional>
#include <queue>

#include "core/error.h"
#include "io/gguf.h"
#include "tokenizer/hf_decoder.h"
#include "tokenizer/normalize.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unigram.h"

namespace duo {

namespace {

// GPT-2 byte-level mapping: every byte gets a printable code point (the printable ASCII and
// Latin-1 bytes map to themselves, the rest to 256 + k), so tokens are valid text.
struct ByteMap {
  std::string to_text[256];          // byte -> UTF-8 of its code point
  std::unordered_map<uint32_t, uint8_t> from_cp;
  ByteMap() {
    int k = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + k++);
      to_text[b] = utf8(cp);
      from_cp[cp] = (uint8_t)b;
    }
  }
  static std::string utf8(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
      s += (char)cp;
    } else if (cp < 0x800) {
      s += (char)(0xC0 | (cp >> 6));
      s += (char)(0x80 | (cp & 0x3F));
    } else {
      s += (char)(0xE0 | (cp >> 12));
      s += (char)(0x80 | ((cp >> 6) & 0x3F));
      s += (char)(0x80 | (cp & 0x3F));
    }
    return s;
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// Decodes one UTF-8 code point at s[i]; returns its length (1 for an invalid byte: a lead byte
// not followed by its continuation bytes is a character of its own, so the valid text after
// it is tokenized as usual).
int utf8_next(std::string_view s, size_t i, uint32_t& cp) {
  const unsigned char c = (unsigned char)s[i];
  int n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
  if (i + n > s.size()) n = 1;
  for (int k = 1; k < n; ++k)
    if (((unsigned char)s[i + k] & 0xC0) != 0x80) n = 1;
  if (n == 1) {
    cp = c;
    return 1;
  }
  cp = c & (0x7F >> n);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
  return n;
}

// Symbols of a piece being merged, as a doubly linked list over byte ranges of `text`.
struct Symbol {
  int prev, next;
  size_t start, len;
};

// A candidate merge of symbols `left` and its right neighbour. `left_len`/`right_len`
// detect stale entries (a symbol changed since the candidate was queued).
struct Candidate {
  double priority;  // lower merges first (BPE: merge rank; SentencePiece: -score)
  int left;
  size_t left_len, right_len;
  bool operator<(const Candidate& o) const {
    return priority != o.priority ? priority > o.priority : left > o.left;
  }
};

// Merges adjacent symbols, the pair of lowest priority first (ties: the leftmost), until no
// pair merges; priority(a, b) gives a pair's priority, or nothing when it does not merge. The
// vocabularies differ only in their first symbols and in this function. The first symbol stays
// the head of the list.
template <class Priority>
void merge_symbols(std::vector<Symbol>& sym, Priority priority) {
  std::priority_queue<Candidate> q;
  auto try_pair = [&](int left) {
    if (left < 0 || sym[left].next < 0) return;
    const Symbol &a = sym[left], &b = sym[a.next];
    if (const std::optional<double> p = priority(a, b)) q.push({*p, left, a.len, b.len});
  };
  for (int i = 0; i + 1 < (int)sym.size(); ++i) try_pair(i);
  while (!q.empty()) {
    const Candidate c = q.top();
    q.pop();
    Symbol& a = sym[c.left];
    if (a.len == 0 || a.next < 0 || a.len != c.left_len || sym[a.next].len != c.right_len) continue;  // stale
    Symbol& b = sym[a.next];
    a.len += b.len;  // symbols are adjacent in their text
    b.len = 0;
    a.next = b.next;
    if (b.next >= 0) sym[b.next].prev = c.left;
    try_pair(a.prev);
    try_pair(c.left);
  }
}

// BPE (byte-level, and SentencePiece-style from a tokenizer.json): a pair merges when `merges`
// lists it, the earlier first.
std::optional<double> merge_rank(const std::unordered_map<std::string, int32_t>& ranks, const std::string& text,
                                 const Symbol& a, const Symbol& b) {
  thread_local std::string key;
  key.assign(text, a.start, a.len);
  key += ' ';
  key.append(text, b.start, b.len);
  auto it = ranks.find(key);
  if (it == ranks.end()) return std::nullopt;
  return (double)it->second;
}

const char kSpm[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space

}  // namespace

Tokenizer::Tokenizer(Vocab v) : vocab_(std::move(v)) {
  const size_t n = vocab_.tokens.size();
  token_to_id_.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) token_to_id_.emplace(vocab_.tokens[i], (int32_t)i);
  for (size_t i = 0; i < vocab_.merges.size(); ++i) merge_rank_.emplace(vocab_.merges[i], (int32_t)i);
  for (size_t i = 0; i < n; ++i)
    if ((vocab_.types[i] == TokenType::Control || vocab_.types[i] == TokenType::UserDefined) &&
        !vocab_.tokens[i].empty())
      specials_.push_back((int32_t)i);
  for (int32_t id : specials_) special_first_[(unsigned char)vocab_.tokens[id][0]] = true;
  std::stable_sort(specials_.begin(), specials_.end(),
                   [&](int32_t a, int32_t b) { return vocab_.tokens[a].size() > vocab_.tokens[b].size(); });
  eog_.assign(n, false);
  for (int32_t id : {vocab_.eos, vocab_.eot})
    if (id >= 0) eog_[id] = true;
  for (int32_t id : vocab_.eog_ids)
    if (id >= 0 && (size_t)id < n) eog_[id] = true;
  for (const char* t : {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>"}) {
    const int32_t id = token_id(t);
    if (id >= 0 && vocab_.types[id] == TokenType::Control) eog_[id] = true;
  }
  std::fill(std::begin(byte_tokens_), std::end(byte_tokens_), -1);
  if (vocab_.model == Vocab::Model::BPE) {
    pre_ = vocab_.pre_regexes.empty() ? std::make_unique<Pretokenizer>(vocab_.pre)
                                      : std::make_unique<Pretokenizer>(vocab_.pre_regexes);
    ignore_merges_ = vocab_.ignore_merges || vocab_.pre == "llama-bpe" || vocab_.pre == "llama3";
    for (int b = 0; b < 256; ++b) byte_tokens_[b] = token_id(byte_map().to_text[b]);
  } else {
    char buf[8];
    for (int b = 0; b < 256; ++b) {
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      byte_tokens_[b] = token_id(buf);
    }
  }
  if (vocab_.unigram) {
    unigram_ = std::make_unique<UnigramModel>(vocab_);
    normalizer_ = std::make_unique<Normalizer>(vocab_.normalizer);
  }
  // For min_tokens: the most input bytes one token stands for. A byte-level BPE token stands for
  // exactly its bytes, a SentencePiece piece for at most its bytes with U+2581 read as a space
  // (it may be the added space prefix); anything else (special tokens, or "<0x41>"-like text a
  // merge may reach) for at most its text.
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = vocab_.tokens[i];
    size_t covers = t.size();
    if (vocab_.types[i] == TokenType::Normal) {
      if (vocab_.model == Vocab::Model::BPE) {
        covers = piece_bytes((int32_t)i).size();
      } else {
        for (size_t at = t.find(kSpm); at != std::string::npos; at = t.find(kSpm, at + 3))
          covers -= 2;
      }
    }
    max_token_bytes_ = std::max(max_token_bytes_, covers);
  }
  // A byte is always covered by some token unless the fallbacks may drop it (BPE: a byte
  // token, else nothing; SentencePiece: a byte token, else the unknown token); keep this in
  // step with encode_bpe_piece and encode_spm.
  // SentencePiece: a space is U+2581, covered by that token or its first byte's byte token.
  all_bytes_kept_ = true;
  for (int b = 0; b < 256; ++b) {
    bool kept = byte_tokens_[b] >= 0 || (vocab_.model == Vocab::Model::SPM && vocab_.unk >= 0);
    if (vocab_.model == Vocab::Model::SPM && b == ' ')
      kept = token_id(kSpm) >= 0 || vocab_.unk >= 0 ||
             (vocab_.spm_merges ? byte_tokens_[0xE2] >= 0 && byte_tokens_[0x96] >= 0 && byte_tokens_[0x81] >= 0
                                : byte_tokens_[0xE2] >= 0);
    // tokenizer.json's byte fallback takes all of a character's bytes or none: without an
    // unknown token, a byte of a multi-byte character may be dropped with another one.
    if (vocab_.model == Vocab::Model::SPM && vocab_.spm_merges && vocab_.unk < 0 && b >= 0x80 &&
        std::find(std::begin(byte_tokens_) + 0x80, std::end(byte_tokens_), -1) != std::end(byte_tokens_))
      kept = false;
    byte_kept_[b] = kept;
    all_bytes_kept_ = all_bytes_kept_ && kept;
  }
  if (vocab_.unigram) unigram_min_tokens();
  // tokenizer.json's fuse_unk: one unknown token stands for a run of characters of any length,
  // which only happens where some byte has no <0xXX> token.
  if (vocab_.model == Vocab::Model::SPM && vocab_.spm_merges && vocab_.fuse_unk && vocab_.unk >= 0 &&
      std::find(std::begin(byte_tokens_), std::end(byte_tokens_), -1) != std::end(byte_tokens_))
    max_token_bytes_ = size_t(1) << 40;
}

Tokenizer::~Tokenizer() = default;

// min_tokens for a Unigram model, whose fallbacks and normalizer differ (keep in step with
// UnigramModel::encode and Normalizer::apply).
void Tokenizer::unigram_min_tokens() {
  // A run of characters no token covers is one unknown token (HF always fuses them) unless
  // byte_fallback has a byte token for each of its bytes; else its characters are dropped.
  bool all_bytes = vocab_.byte_fallback;
  for (int b = 0; b < 256; ++b) all_bytes = all_bytes && byte_tokens_[b] >= 0;
  if (vocab_.unk >= 0 && !all_bytes) max_token_bytes_ = size_t(1) << 40;
  // A normalizer that may shrink the text (a Replace of something longer than what it becomes,
  // a regex, a Precompiled table): a token may stand for any number of input bytes, and any
  // byte may vanish.
  // One that strips: whitespace (multi-byte whitespace too, so any byte >= 0x80) may vanish.
  if (normalizer_->shrinks()) max_token_bytes_ = size_t(1) << 40;
  all_bytes_kept_ = true;
  for (int b = 0; b < 256; ++b) {
    bool kept = (vocab_.unk >= 0 || all_bytes) && !normalizer_->shrinks();
    if (normalizer_->strips() && (b >= 0x80 || b == ' ' || (b >= 0x09 && b <= 0x0D))) kept = false;
    byte_kept_[b] = kept;
    all_bytes_kept_ = all_bytes_kept_ && kept;
  }
}

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& f) { return std::make_unique<Tokenizer>(load_vocab(f)); }

int32_t Tokenizer::token_id(std::string_view text) const {
  auto it = token_to_id_.find(std::string(text));
  return it == token_to_id_.end() ? -1 : it->second;
}

bool Tokenizer::is_eog(int32_t id) const { return id >= 0 && (size_t)id < eog_.size() && eog_[id]; }

void Tokenizer::encode_bpe_piece(const std::string& piece, std::vector<int32_t>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(piece);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  // Map bytes to their code points; each byte starts as one symbol.
  std::string text;
  std::vector<Symbol> sym;
  for (unsigned char c : piece) {
    const std::string& t = byte_map().to_text[c];
    sym.push_back({(int)sym.size() - 1, (int)sym.size() + 1, text.size(), t.size()});
    text += t;
  }
  if (!sym.empty()) sym.back().next = -1;
  // Llama-3 style vocabularies (tokenizer.json "ignore_merges": true): a piece that is a token
  // as a whole is that token, even when the merges would split it differently.
  if (ignore_merges_ && sym.size() > 1) {
    const int32_t whole = token_id(text);
    if (whole >= 0) {
      out.push_back(whole);
      remember_piece(piece, {whole});
      return;
    }
  }
  merge_symbols(sym, [&](const Symbol& a, const Symbol& b) { return merge_rank(merge_rank_, text, a, b); });
  std::vector<int32_t> ids;
  for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
    const std::string s = text.substr(sym[i].start, sym[i].len);
    const int32_t id = token_id(s);
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    // Not in the vocabulary: fall back to one token per byte (min_tokens relies on which bytes
    // this may drop).
    for (size_t k = 0; k < s.size();) {
      uint32_t cp;
      const int len = utf8_next(s, k, cp);
      auto bt = byte_map().from_cp.find(cp);
      const int32_t bid = bt != byte_map().from_cp.end() ? byte_tokens_[bt->second] : -1;
      // A byte without a token of its own is dropped, as HF tokenizers (BPE without
      // unk_token) and llama.cpp do: the unknown token of a byte-level vocabulary is usually
      // <|endoftext|>, which must not appear inside a user's text.
      if (bid >= 0) ids.push_back(bid);
      k += len;
    }
  }
  out.insert(out.end(), ids.begin(), ids.end());
  remember_piece(piece, std::move(ids));
}

size_t Tokenizer::piece_cache_bytes() const {
  std::lock_guard<std::mutex> lock(cache_mu_);
  return cache_bytes_;
}

// The cache serves the pieces of ordinary text (words), which repeat. It is bounded in bytes,
// not entries, and a long piece (a hostile prompt can be one multi-megabyte "word") is not kept:
// its bytes would stay in memory for nothing.
void Tokenizer::remember_piece(const std::string& piece, std::vector<int32_t> ids) const {
  constexpr size_t kMaxPieceBytes = 256, kMaxCacheBytes = size_t(32) << 20;
  if (piece.size() > kMaxPieceBytes) return;
  const size_t bytes = piece.size() + ids.size() * sizeof(int32_t) + 96;  // + node and string overhead
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_bytes_ + bytes > kMaxCacheBytes) {
    cache_.clear();
    cache_bytes_ = 0;
  }
  if (cache_.emplace(piece, std::move(ids)).second) cache_bytes_ += bytes;
}

void Tokenizer::encode_spm(const std::string& raw, bool at_start, std::vector<int32_t>& out) const {
  if (unigram_) {
    encode_unigram(raw, at_start, out);
    return;
  }
  // SentencePiece: spaces become U+2581, and a run of text gets a leading one as the vocabulary
  // says (see Vocab::add_space_prefix).
  std::string text;
  for (char c : raw) {
    if (c == ' ')
      text += kSpm;
    else
      text += c;
  }
  const bool prefix = vocab_.add_space_prefix && !text.empty() && (at_start || !vocab_.prefix_first_only) &&
                      !(vocab_.prefix_unless_space && text.compare(0, 3, kSpm) == 0);
  if (prefix) text.insert(0, kSpm);
  if (!vocab_.split_on_space) {
    encode_spm_piece(text, out);
    return;
  }
  // Metaspace's split: every U+2581 begins a piece (a run of them is one piece each).
  size_t start = 0;
  for (size_t at = text.find(kSpm, 1); at != std::string::npos; at = text.find(kSpm, at + 3)) {
    encode_spm_piece(text.substr(start, at - start), out);
    start = at;
  }
  encode_spm_piece(text.substr(start), out);
}

// A tokenizer.json Unigram model, in HF's order: the normalizer's steps on the run of text, then
// Metaspace (spaces to U+2581, the prefix as its prepend_scheme says: "first" only on the run
// that begins the input and whose first character the normalizer kept, as HF checks the
// run's original offset; a split before every U+2581), then the model on each piece.
void Tokenizer::encode_unigram(const std::string& raw, bool at_start, std::vector<int32_t>& out) const {
  bool start_kept = true;
  std::string text = normalizer_->apply(raw, &start_kept);
  if (!vocab_.metaspace) {
    unigram_->encode(text, out);
    return;
  }
  std::string spaced;
  for (char c : text) {
    if (c == ' ')
      spaced += kSpm;
    else
      spaced += c;
  }
  if (vocab_.add_space_prefix && !spaced.empty() && ((at_start && start_kept) || !vocab_.prefix_first_only) &&
      spaced.compare(0, 3, kSpm) != 0)
    spaced.insert(0, kSpm);
  if (!vocab_.split_on_space) {
    unigram_->encode(spaced, out);
    return;
  }
  size_t start = 0;
  for (size_t at = spaced.find(kSpm, 1); at != std::string::npos; at = spaced.find(kSpm, at + 3)) {
    unigram_->encode(std::string_view(spaced).substr(start, at - start), out);
    start = at;
  }
  unigram_->encode(std::string_view(spaced).substr(start), out);
}

void Tokenizer::encode_spm_piece(const std::string& piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (!vocab_.spm_merges) {
    encode_spm_scores(piece, out);
    return;
  }
  // tokenizer.json's BPE with byte_fallback, as HF tokenizers' BPE::merge_word: a piece that is
  // a token is that token (ignore_merges); else its characters, each a token of the vocabulary,
  // or its bytes' <0xXX> tokens, or the unknown token (a run of them one token, fuse_unk).
  // The symbols are written as their tokens' text, so that merges, which name tokens, apply to
  // byte and unknown tokens as HF's do.
  if (vocab_.ignore_merges) {
    if (const int32_t whole = token_id(piece); whole >= 0) {
      out.push_back(whole);
      return;
    }
  }
  std::string text;
  std::vector<Symbol> sym;
  auto add = [&](std::string_view t) {
    sym.push_back({(int)sym.size() - 1, (int)sym.size() + 1, text.size(), t.size()});
    text += t;
  };
  // HF keeps a pending unknown token until the next character of the vocabulary (or the end),
  // so byte tokens met meanwhile come before it.
  bool pending_unk = false;
  for (size_t i = 0; i < piece.size();) {
    uint32_t cp;
    const int n = utf8_next(piece, i, cp);
    const std::string_view ch(piece.data() + i, (size_t)n);
    i += (size_t)n;
    if (token_id(ch) >= 0) {
      if (pending_unk) add(vocab_.tokens[vocab_.unk]), pending_unk = false;
      add(ch);
      continue;
    }
    bool bytes = true;
    for (char c : ch) bytes = bytes && byte_tokens_[(unsigned char)c] >= 0;
    if (bytes) {
      for (char c : ch) add(vocab_.tokens[byte_tokens_[(unsigned char)c]]);
      continue;
    }
    if (vocab_.unk < 0) continue;  // no unknown token: the character is dropped (min_tokens knows)
    if (pending_unk && !vocab_.fuse_unk) add(vocab_.tokens[vocab_.unk]);
    pending_unk = true;
  }
  if (pending_unk) add(vocab_.tokens[vocab_.unk]);
  if (sym.empty()) return;
  sym.back().next = -1;
  merge_symbols(sym, [&](const Symbol& a, const Symbol& b) { return merge_rank(merge_rank_, text, a, b); });
  for (int i = 0; i >= 0; i = sym[i].next) {
    const int32_t id = token_id(std::string_view(text).substr(sym[i].start, sym[i].len));
    // Every symbol is a token: its first ones are, and the loader checks that merges give tokens.
    DUO_CHECK(id >= 0, "tokenizer: a merge gave '{}', which is not a token", text.substr(sym[i].start, sym[i].len));
    out.push_back(id);
  }
}

void Tokenizer::encode_spm_scores(const std::string& text, std::vector<int32_t>& out) const {
  // SentencePiece as GGUF stores it: the highest-scoring merges of adjacent symbols win;
  // unknown symbols fall back to <0xXX> byte tokens.
  std::vector<Symbol> sym;
  for (size_t i = 0; i < text.size();) {
    uint32_t cp;
    const int n = utf8_next(text, i, cp);
    sym.push_back({(int)sym.size() - 1, (int)sym.size() + 1, i, (size_t)n});
    i += n;
  }
  if (sym.empty()) return;
  sym.back().next = -1;
  // Higher score merges first (ties: leftmost first, as SentencePiece and llama.cpp).
  merge_symbols(sym, [&](const Symbol& a, const Symbol& b) -> std::optional<double> {
    const int32_t id = token_id(std::string_view(text).substr(a.start, a.len + b.len));
    if (id < 0) return std::nullopt;
    return -(double)vocab_.scores[id];
  });
  for (int i = 0; i >= 0; i = sym[i].next) {
    const std::string s = text.substr(sym[i].start, sym[i].len);
    const int32_t id = token_id(s);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (unsigned char c : s) {  // byte fallback (min_tokens relies on which bytes this may drop)
      if (byte_tokens_[c] >= 0)
        out.push_back(byte_tokens_[c]);
      else if (vocab_.unk >= 0)
        out.push_back(vocab_.unk);
    }
  }
}

void Tokenizer::encode_segment(const std::string& text, bool at_start, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  if (vocab_.model == Vocab::Model::SPM) {
    encode_spm(text, at_start, out);
    return;
  }
  for (const std::string& piece : pre_->split(text)) encode_bpe_piece(piece, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
  encode_text(text, parse_special, {}, true, out);
  if (vocab_.add_eos && vocab_.eos >= 0) out.push_back(vocab_.eos);
  return out;
}

std::vector<int32_t> Tokenizer::encode_parts(const std::vector<PromptPart>& parts, bool add_bos) const {
  auto marker_id = [&](const PromptPart& p) {
    if (!p.special) return -1;
    const int32_t id = token_id(p.text);
    return id >= 0 && (vocab_.types[id] == TokenType::Control || vocab_.types[id] == TokenType::UserDefined) ? id : -1;
  };
  std::vector<int32_t> markers;
  for (const auto& p : parts)
    if (const int32_t id = marker_id(p); id >= 0 && std::find(markers.begin(), markers.end(), id) == markers.end())
      markers.push_back(id);
  std::vector<int32_t> out;
  if (add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
  std::string run;  // text up to the next marker, across part boundaries
  bool at_start = true;  // the run begins the prompt (SentencePiece "first" prefix)
  for (const auto& p : parts) {
    const int32_t id = marker_id(p);
    if (id < 0) {
      run += p.text;
      continue;
    }
    encode_text(run, false, markers, at_start, out);
    at_start = false;
    run.clear();
    out.push_back(id);
  }
  encode_text(run, false, markers, at_start, out);
  if (vocab_.add_eos && vocab_.eos >= 0) out.push_back(vocab_.eos);
  return out;
}

size_t Tokenizer::min_tokens(std::string_view text) const {
  size_t kept = text.size();
  if (!all_bytes_kept_) {
    kept = 0;
    for (unsigned char c : text) kept += byte_kept_[c];
  }
  return (kept + max_token_bytes_ - 1) / max_token_bytes_;
}

void Tokenizer::encode_text(std::string_view text, bool parse_special, const std::vector<int32_t>& never,
                            bool at_start, std::vector<int32_t>& out) const {
  // Split out special tokens (longest match first at the earliest position), encode the
  // text between them.
  // SentencePiece: like llama.cpp, every run of text (at the start or after a special token)
  // gets the space prefix when the vocabulary asks for one.
  size_t pos = 0, seg_start = 0;
  while (pos < text.size()) {
    int32_t hit = -1;
    if (special_first_[(unsigned char)text[pos]]) {
      for (int32_t id : specials_) {
        if (!parse_special && vocab_.types[id] == TokenType::Control) continue;
        const std::string& s = vocab_.tokens[id];
        if (text.compare(pos, s.size(), s) == 0 && std::find(never.begin(), never.end(), id) == never.end()) {
          hit = id;
          break;
        }
      }
    }
    if (hit < 0) {
      ++pos;
      continue;
    }
    encode_segment(std::string(text.substr(seg_start, pos - seg_start)), at_start && seg_start == 0, out);
    out.push_back(hit);
    pos += vocab_.tokens[hit].size();
    seg_start = pos;
  }
  encode_segment(std::string(text.substr(seg_start)), at_start && seg_start == 0, out);
}

std::string Tokenizer::piece_bytes(int32_t id) const {
  DUO_CHECK(id >= 0 && id < n_vocab(), "token id {} is outside the vocabulary", id);
  const std::string& t = vocab_.tokens[id];
  const TokenType type = vocab_.types[id];
  if (type == TokenType::Control || type == TokenType::UserDefined) return t;
  if (vocab_.model == Vocab::Model::SPM) {
    if (type == TokenType::Byte && t.size() == 6) return std::string(1, (char)std::stoi(t.substr(3, 2), nullptr, 16));
    std::string s;
    for (size_t i = 0; i < t.size(); ++i) {
      if (t.compare(i, 3, kSpm) == 0) {
        s += ' ';
        i += 2;
      } else {
        s += t[i];
      }
    }
    return s;
  }
  std::string s;
  for (size_t i = 0; i < t.size();) {
    uint32_t cp;
    const int n = utf8_next(t, i, cp);
    auto it = byte_map().from_cp.find(cp);
    if (it != byte_map().from_cp.end())
      s += (char)it->second;
    else
      s.append(t, i, n);
    i += n;
  }
  return s;
}

std::string Tokenizer::token_to_piece(int32_t id) const {
  if (id >= 0 && id < n_vocab() && vocab_.types[id] == TokenType::Control) return "";
  return piece_bytes(id);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  if (unigram_) {  // the decoder's steps as declared, on the tokens' texts (special ones too, as HF)
    std::vector<std::string> texts;
    for (int32_t id : ids) {
      DUO_CHECK(id >= 0 && id < n_vocab(), "token id {} is outside the vocabulary", id);
      if (vocab_.types[id] != TokenType::Unused) texts.push_back(vocab_.tokens[id]);  // HF skips ids it lacks
    }
    return decode_tokens(vocab_.decoder, std::move(texts));
  }
  std::string s;
  for (int32_t id : ids) s += piece_bytes(id);
  // SentencePiece: the space prefix added on encoding is dropped again (tokenizer.json: its
  // decoder's Strip, which is there when the prefix is).
  if (vocab_.model == Vocab::Model::SPM && vocab_.add_space_prefix && !vocab_.decode_keeps_space && !s.empty() &&
      s[0] == ' ')
    s.erase(0, 1);
  return s;
}

}  // namespace duo
