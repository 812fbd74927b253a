#include "kv/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace duo {

HeadCache::HeadCache(HeadKind kind, int head_dim, StreamingWindow w) : kind_(kind), d_(head_dim), w_(w) {
  if (kind_ == HeadKind::Streaming) {
    DUO_CHECK(w.sink >= 0 && w.recent >= 1, "streaming window needs sink >= 0 and recent >= 1 (got {}, {})",
              w.sink, w.recent);
    const size_t rows = (size_t)(w.sink + w.recent);
    k_ring_.reset(new float[rows * d_]);
    v_ring_.reset(new float[rows * d_]);
  }
}

void HeadCache::append(const float* k, const float* v, int64_t n, int64_t stride, int64_t n_past) {
  const size_t row_bytes = sizeof(float) * d_;
  if (kind_ == HeadKind::Retrieval) {
    for (int64_t r = 0; r < n; ++r) {
      const int64_t pos = n_past + r;
      const size_t page = (size_t)(pos / kPageTokens), slot = (size_t)(pos % kPageTokens);
      if (page >= k_pages_.size()) {
        k_pages_.emplace_back(new float[kPageTokens * d_]);
        v_pages_.emplace_back(new float[kPageTokens * d_]);
      }
      std::memcpy(k_pages_[page].get() + slot * d_, k + r * stride, row_bytes);
      std::memcpy(v_pages_[page].get() + slot * d_, v + r * stride, row_bytes);
    }
    return;
  }
  // Streaming: only the sink and the last `recent` positions can ever be seen again.
  const int64_t end = n_past + n;
  const int64_t first_recent = std::max<int64_t>(w_.sink, end - w_.recent);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t pos = n_past + r;
    int64_t row;
    if (pos < w_.sink)
      row = pos;
    else if (pos >= first_recent)
      row = w_.sink + (pos - w_.sink) % w_.recent;
    else
      continue;
    std::memcpy(k_ring_.get() + row * d_, k + r * stride, row_bytes);
    std::memcpy(v_ring_.get() + row * d_, v + r * stride, row_bytes);
  }
}

void HeadCache::segments(int64_t n_past, std::vector<KvSegment>& out) const {
  if (kind_ == HeadKind::Retrieval) {
    for (int64_t p0 = 0; p0 < n_past; p0 += kPageTokens) {
      const size_t page = (size_t)(p0 / kPageTokens);
      out.push_back({k_pages_[page].get(), v_pages_[page].get(), p0, std::min(kPageTokens, n_past - p0), d_});
    }
    return;
  }
  const int64_t n_sink = std::min<int64_t>(w_.sink, n_past);
  if (n_sink > 0) out.push_back({k_ring_.get(), v_ring_.get(), 0, n_sink, d_});
  const int64_t first = std::max<int64_t>(w_.sink, n_past - w_.recent);
  // Ring rows hold positions [first, n_past); the slot of position p is (p - sink) % recent,
  // so the run splits at most once where the slots wrap.
  int64_t p = first;
  while (p < n_past) {
    const int64_t slot = (p - w_.sink) % w_.recent;
    const int64_t run = std::min(n_past - p, w_.recent - slot);
    const size_t off = (size_t)(w_.sink + slot) * d_;
    out.push_back({k_ring_.get() + off, v_ring_.get() + off, p, run, d_});
    p += run;
  }
}

size_t HeadCache::bytes_for(HeadKind kind, int head_dim, StreamingWindow w, int64_t n_past) {
  if (kind == HeadKind::Retrieval) {
    const size_t pages = (size_t)((std::max<int64_t>(n_past, 0) + kPageTokens - 1) / kPageTokens);
    return pages * 2 * sizeof(float) * kPageTokens * head_dim;
  }
  return 2 * sizeof(float) * (size_t)(w.sink + w.recent) * head_dim;
}

size_t HeadCache::bytes() const {
  return bytes_for(kind_, d_, w_, (int64_t)k_pages_.size() * kPageTokens);
}

KvCache::KvCache(int n_layers, int n_kv_heads, int head_dim, HeadPlan plan)
    : n_layers_(n_layers), n_kv_(n_kv_heads), d_(head_dim), plan_(std::move(plan)) {
  DUO_CHECK((int)plan_.kinds.size() == n_layers, "head plan has {} layers, the model {}", plan_.kinds.size(),
            n_layers);
  heads_.reserve((size_t)n_layers * n_kv_heads);
  for (int l = 0; l < n_layers; ++l) {
    DUO_CHECK((int)plan_.kinds[l].size() == n_kv_heads, "head plan layer {} has {} KV heads, the model {}", l,
              plan_.kinds[l].size(), n_kv_heads);
    for (int h = 0; h < n_kv_heads; ++h) heads_.emplace_back(plan_.kinds[l][h], head_dim, plan_.window);
  }
}

size_t KvCache::bytes() const {
  size_t b = 0;
  for (const auto& h : heads_) b += h.bytes();
  return b;
}

size_t KvCache::bytes(HeadKind kind) const {
  size_t b = 0;
  for (const auto& h : heads_)
    if (h.kind() == kind) b += h.bytes();
  return b;
}

size_t KvCache::bytes_for(const HeadPlan& plan, int head_dim, int64_t n_past, HeadKind kind) {
  size_t heads = 0;
  for (const auto& layer : plan.kinds) heads += (size_t)std::count(layer.begin(), layer.end(), kind);
  return heads * HeadCache::bytes_for(kind, head_dim, plan.window, n_past);
}

size_t KvCache::bytes_for(const HeadPlan& plan, int head_dim, int64_t n_past) {
  return bytes_for(plan, head_dim, n_past, HeadKind::Retrieval) + bytes_for(plan, head_dim, n_past, HeadKind::Streaming);
}

void KvCache::clear() {
  std::vector<HeadCache> fresh;
  fresh.reserve(heads_.size());
  for (int l = 0; l < n_layers_; ++l)
    for (int h = 0; h < n_kv_; ++h) fresh.emplace_back(plan_.kinds[l][h], d_, plan_.window);
  heads_ = std::move(fresh);
  n_past_ = 0;
}

}  // namespace duo
