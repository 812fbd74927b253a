#include "tokenizer/unigram.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <unordered_map>

#include "tokenizer/pretokenize.h"

namespace duo {

UnigramModel::UnigramModel(const Vocab& v)
    : scores_(v.unigram_scores), unk_(v.unk), byte_fallback_(v.byte_fallback) {
  // Built with a hash map of edges keyed by (node << 8) | byte, then laid out sorted.
  std::unordered_map<uint64_t, int32_t> edges;
  node_id_.push_back(-1);
  const size_t n = std::min(scores_.size(), v.tokens.size());
  for (size_t id = 0; id < n; ++id) {
    const TokenType t = v.types[id];
    if (t != TokenType::Normal && t != TokenType::Byte && t != TokenType::Unknown) continue;
    int32_t node = 0;
    for (unsigned char c : v.tokens[id]) {
      auto [it, added] = edges.emplace(((uint64_t)node << 8) | c, (int32_t)node_id_.size());
      if (added) node_id_.push_back(-1);
      node = it->second;
    }
    if (node > 0) node_id_[node] = (int32_t)id;  // a repeated text: the later id, as HF's map keeps it
  }
  std::vector<std::pair<uint64_t, int32_t>> sorted(edges.begin(), edges.end());
  edges.clear();
  std::sort(sorted.begin(), sorted.end());
  first_edge_.assign(node_id_.size() + 1, 0);
  for (const auto& e : sorted) ++first_edge_[(e.first >> 8) + 1];
  for (size_t i = 1; i < first_edge_.size(); ++i) first_edge_[i] += first_edge_[i - 1];
  edge_byte_.reserve(sorted.size());
  edge_child_.reserve(sorted.size());
  for (const auto& e : sorted) edge_byte_.push_back((unsigned char)(e.first & 0xFF)), edge_child_.push_back(e.second);
  // The unknown token's score: the lowest of all the model's tokens (special ones too) less 10.
  double min_score = std::numeric_limits<double>::infinity();
  for (double s : scores_) min_score = std::min(min_score, s);
  unk_score_ = (scores_.empty() ? 0.0 : min_score) - 10.0;
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    byte_tokens_[b] = exact(buf);
  }
}

int32_t UnigramModel::exact(std::string_view s) const {
  int32_t node = 0;
  for (unsigned char c : s)
    if ((node = child(node, c)) < 0) return -1;
  return s.empty() ? -1 : node_id_[node];
}

void UnigramModel::encode(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  // best[i]: the best segmentation of text[0, i): its score, its last token and where that
  // starts. kUnk marks an unknown character (the unknown token, or bytes, or nothing).
  constexpr int32_t kUnk = -2;
  struct Best {
    double score = 0;
    int32_t id = -1;
    size_t from = 0;
    bool set = false;
  };
  std::vector<Best> best(text.size() + 1);
  best[0].set = true;
  auto offer = [&](size_t to, size_t from, int32_t id, double score) {
    Best& b = best[to];
    // Strictly better only: of equal paths the first offered stays (earlier start; at one start
    // the shorter token, then the unknown token), as HF's loop keeps it.
    if (!b.set || score > b.score) b = {score, id, from, true};
  };
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = std::max<size_t>(1, utf8_char_len(text, pos));
    const double here = best[pos].score;
    bool single = false;  // a token covers exactly this character
    int32_t node = 0;
    for (size_t k = pos; k < text.size(); ++k) {
      if ((node = child(node, (unsigned char)text[k])) < 0) break;
      if (const int32_t id = node_id_[node]; id >= 0) {
        offer(k + 1, pos, id, here + scores_[id]);
        single = single || k + 1 - pos == len;
      }
    }
    if (!single) offer(pos + len, pos, kUnk, here + unk_score_);
    pos += len;
  }
  // Back from the end; runs of unknown characters (and the unknown token itself) are fused.
  std::vector<std::pair<size_t, int32_t>> path;  // (start, id), last first
  for (size_t end = text.size(); end > 0;) {
    const Best& b = best[end];
    const bool unk = b.id == kUnk || (b.id >= 0 && b.id == unk_);
    if (unk && !path.empty() && path.back().second == kUnk)
      path.back().first = b.from;
    else
      path.push_back({b.from, unk ? kUnk : b.id});
    end = b.from;
  }
  size_t end = text.size();
  std::vector<int32_t> ids;
  for (auto it = path.begin(); it != path.end(); ++it) {  // last token first; reversed below
    const auto [from, id] = *it;
    const std::string_view s = text.substr(from, end - from);
    end = from;
    if (id != kUnk) {
      ids.push_back(id);
      continue;
    }
    // HF looks the fused text up as a token first (it may be the unknown token's own text).
    if (const int32_t whole = exact(s); whole >= 0) {
      ids.push_back(whole);
      continue;
    }
    bool bytes = byte_fallback_;
    for (unsigned char c : s) bytes = bytes && byte_tokens_[c] >= 0;
    if (bytes) {
      for (auto c = s.rbegin(); c != s.rend(); ++c) ids.push_back(byte_tokens_[(unsigned char)*c]);
    } else if (unk_ >= 0) {
      ids.push_back(unk_);
    }
    // No unknown token and no byte tokens for it: HF refuses the text; duo drops the characters
    // (min_tokens knows).
  }
  out.insert(out.end(), ids.rbegin(), ids.rend());
}

}  // namespace duo
