#include "tokenizer/jinja/text.h"

#include <algorithm>

namespace duo::jinja {

void Text::append(const Text& o) {
  const size_t base = s.size();
  s += o.s;
  for (auto [b, e] : o.trusted) {
    if (!trusted.empty() && trusted.back().second == base + b)
      trusted.back().second = base + e;  // ranges that touch merge
    else
      trusted.push_back({base + b, base + e});
  }
}

Text Text::substr(size_t pos, size_t n) const {
  Text t;
  pos = std::min(pos, s.size());
  const size_t end = n == std::string::npos ? s.size() : std::min(s.size(), pos + n);
  t.s = s.substr(pos, end - pos);
  for (auto [b, e] : trusted) {
    const size_t cb = std::max(b, pos), ce = std::min(e, end);
    if (cb < ce) t.trusted.push_back({cb - pos, ce - pos});
  }
  return t;
}

}  // namespace duo::jinja
