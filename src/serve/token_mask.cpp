#include "serve/token_mask.h"

#include <algorithm>
#include <numeric>

namespace duo::serve {

namespace {
bool plain_string_byte(unsigned char c) { return c >= 0x20 && c != '"' && c != '\\'; }
}  // namespace

TokenMask::TokenMask(const std::vector<std::string>& pieces, const std::vector<bool>& include) {
  for (int32_t t = 0; t < (int32_t)pieces.size(); ++t)
    if (include[t] && !pieces[t].empty()) tokens_.push_back(t);
  std::stable_sort(tokens_.begin(), tokens_.end(), [&](int32_t a, int32_t b) { return pieces[a] < pieces[b]; });
  // Pre-order: sorted pieces visit the trie depth first. `path[k]` is the open node at depth k.
  nodes_.emplace_back();
  std::vector<uint32_t> path{0}, parent{0};
  auto close_to = [&](size_t depth, uint32_t token_index) {
    while (path.size() > depth + 1) {
      Node& n = nodes_[path.back()];
      n.end = (uint32_t)nodes_.size();
      n.tok_sub_end = token_index;
      path.pop_back();
    }
  };
  const std::string* prev = nullptr;
  for (uint32_t i = 0; i < tokens_.size(); ++i) {
    const std::string& p = pieces[tokens_[i]];
    size_t common = 0;
    if (prev)
      while (common < prev->size() && common < p.size() && (*prev)[common] == p[common]) ++common;
    close_to(common, i);
    for (size_t k = common; k < p.size(); ++k) {
      Node n;
      n.byte = (unsigned char)p[k];
      n.depth = (uint16_t)(k + 1);
      n.tok_begin = n.tok_own_end = i;
      parent.push_back(path.back());
      path.push_back((uint32_t)nodes_.size());
      nodes_.push_back(n);
    }
    ++nodes_[path.back()].tok_own_end;  // a piece equal to the previous one joins its node
    prev = &p;
  }
  close_to(0, (uint32_t)tokens_.size());
  nodes_[0].end = (uint32_t)nodes_.size();
  nodes_[0].tok_sub_end = (uint32_t)tokens_.size();
  // Children come after their parent in pre-order: a backward pass carries "not plain" up.
  for (auto& n : nodes_) n.plain = plain_string_byte(n.byte);
  for (size_t j = nodes_.size() - 1; j >= 1; --j)
    if (!nodes_[j].plain) nodes_[parent[j]].plain = false;
  uint16_t deepest = 0;
  for (const auto& n : nodes_) deepest = std::max(deepest, n.depth);
  stack_.resize(deepest + 1);
}

void TokenMask::allowed(const JsonMatcher& m, std::vector<int32_t>& out) {
  stack_[0] = m;
  std::vector<uint8_t>& plain = plain_;
  plain.resize(stack_.size());
  plain[0] = m.in_plain_string();
  for (uint32_t i = 1; i < nodes_.size();) {
    const Node& n = nodes_[i];
    const int d = n.depth;
    if (plain[d - 1] && n.plain) {  // bytes that leave a plain string as it is: all taken
      out.insert(out.end(), tokens_.begin() + n.tok_begin, tokens_.begin() + n.tok_sub_end);
      i = n.end;
    } else if (stack_[d].step_from(stack_[d - 1], n.byte)) {
      out.insert(out.end(), tokens_.begin() + n.tok_begin, tokens_.begin() + n.tok_own_end);
      plain[d] = stack_[d].in_plain_string();
      ++i;
    } else {
      i = n.end;
    }
  }
}

}  // namespace duo::serve
