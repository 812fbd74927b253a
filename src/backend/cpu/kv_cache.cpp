#include "backend/cpu/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "core/error.h"
#include "kv/kv_bytes.h"
#include "kv/kv_codec.h"
#include "kv/kv_quant.h"

namespace duo {

namespace {

constexpr int64_t kGroup = kvq::kGroup;

std::unique_ptr<uint8_t[]> zeroed(size_t bytes) {
  std::unique_ptr<uint8_t[]> b(new uint8_t[std::max<size_t>(bytes, 1)]);
  std::memset(b.get(), 0, bytes);
  return b;
}

void check_type(KvType type, int d) {
  DUO_CHECK(type != KvType::Default, "HeadCache: resolve the KV type first");
  if (is_quantized(type))
    DUO_CHECK(d % kGroup == 0 && d <= 512, "KV type {} needs a head dimension that is a multiple of {} (got {})",
              to_string(type), kGroup, d);
}

}  // namespace

HeadCache::HeadCache(HeadKind kind, int head_dim, StreamingWindow w, KvType type)
    : kind_(kind), d_(head_dim), w_(w), type_(cpu_kv_type(type)) {
  check_type(type_, d_);
  quantized_ = kind_ == HeadKind::Retrieval && is_quantized(type_);
  page_bytes_ = kv_page_bytes(type_, d_);
  const size_t row = (size_t)row_elem_bytes(type_) * d_;
  if (kind_ == HeadKind::Streaming) {
    DUO_CHECK(w.sink >= 0 && w.recent >= 1, "streaming window needs sink >= 0 and recent >= 1 (got {}, {})",
              w.sink, w.recent);
    const size_t rows = (size_t)w.rows();
    k_ring_.reset(new uint8_t[rows * row]);
    v_ring_.reset(new uint8_t[rows * row]);
  } else if (quantized_) {
    DUO_CHECK(w.sink >= 0, "the sink must be >= 0 (got {})", w.sink);
    sink16_ = kvq::sink16(w.sink);
    k_sink_ = zeroed(sink16_ * row), v_sink_ = zeroed(sink16_ * row);
    k_resid_ = zeroed(kGroup * row), v_resid_ = zeroed(kGroup * row);
  }
}

void HeadCache::append(const float* k, const float* v, int64_t n, int64_t stride, int64_t n_past) {
  const KvType rt = row_type(type_);
  const size_t row = (size_t)row_elem_bytes(type_) * d_;
  if (kind_ == HeadKind::Retrieval) {
    for (int64_t r = 0; r < n;) {
      const int64_t pos = n_past + r;
      const size_t page = (size_t)(pos / kPageTokens), slot = (size_t)(pos % kPageTokens);
      while (page >= k_pages_.size()) {
        k_pages_.push_back(zeroed(page_bytes_));
        v_pages_.push_back(zeroed(page_bytes_));
      }
      if (!quantized_) {  // a run of rows inside this page
        const int64_t run = std::min<int64_t>(n - r, kPageTokens - (int64_t)slot);
        encode_rows(rt, k + r * stride, stride, run, d_, k_pages_[page].get() + slot * row);
        encode_rows(rt, v + r * stride, stride, run, d_, v_pages_[page].get() + slot * row);
        r += run;
        continue;
      }
      // Quantized: sink rows stay bf16; other rows wait in the residual until their group of 64
      // is complete, then the group is quantized from the bf16 rows (as the GPU does).
      if (pos < sink16_) {
        encode_rows(rt, k + r * stride, stride, 1, d_, k_sink_.get() + pos * row);
        encode_rows(rt, v + r * stride, stride, 1, d_, v_sink_.get() + pos * row);
      } else {
        const size_t rs = (size_t)(pos % kGroup);
        encode_rows(rt, k + r * stride, stride, 1, d_, k_resid_.get() + rs * row);
        encode_rows(rt, v + r * stride, stride, 1, d_, v_resid_.get() + rs * row);
        if (rs == kGroup - 1) {
          std::vector<float> kf((size_t)kGroup * d_), vf((size_t)kGroup * d_);
          decode_rows(rt, k_resid_.get(), d_, kGroup, d_, kf.data());
          decode_rows(rt, v_resid_.get(), d_, kGroup, d_, vf.data());
          quantize_group(kf.data(), vf.data(), d_, quant_bits(type_), (int)(slot / kGroup), k_pages_[page].get(),
                         v_pages_[page].get());
        }
      }
      ++r;
    }
    return;
  }
  // Streaming: only the sink and the last `recent` positions can ever be seen again.
  const int64_t end = n_past + n;
  const int64_t first_ring = w_.first_ring(end);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t pos = n_past + r;
    if (pos >= w_.sink && pos < first_ring) continue;
    const int64_t ring_row = w_.ring_row(pos);
    encode_rows(rt, k + r * stride, stride, 1, d_, k_ring_.get() + ring_row * row);
    encode_rows(rt, v + r * stride, stride, 1, d_, v_ring_.get() + ring_row * row);
  }
}

void HeadCache::segments(int64_t n_past, std::vector<KvSegment>& out) const {
  const KvType rt = row_type(type_);
  const size_t row = (size_t)row_elem_bytes(type_) * d_;
  // A run of rows of the row type starting at `base`.
  auto rows = [&](const uint8_t* kb, const uint8_t* vb, int64_t pos0, int64_t n) {
    KvSegment s;
    s.pos0 = pos0, s.n = n, s.stride = d_, s.type = rt;
    if (rt == KvType::F32)
      s.k = reinterpret_cast<const float*>(kb), s.v = reinterpret_cast<const float*>(vb);
    else
      s.kx = kb, s.vx = vb;
    out.push_back(s);
  };
  if (kind_ == HeadKind::Retrieval) {
    if (!quantized_) {
      for (int64_t p0 = 0; p0 < n_past; p0 += kPageTokens) {
        const size_t page = (size_t)(p0 / kPageTokens);
        rows(k_pages_[page].get(), v_pages_[page].get(), p0, std::min<int64_t>(kPageTokens, n_past - p0));
      }
      return;
    }
    const int64_t n_sink = std::min<int64_t>(sink16_, n_past);
    if (n_sink > 0) rows(k_sink_.get(), v_sink_.get(), 0, n_sink);
    const int64_t quant_end = n_past / kGroup * kGroup;  // complete groups end here
    for (int64_t p0 = sink16_; p0 < quant_end; p0 += kGroup) {
      KvSegment s;
      s.pos0 = p0, s.n = kGroup, s.type = type_;
      s.kx = k_pages_[(size_t)(p0 / kPageTokens)].get(), s.vx = v_pages_[(size_t)(p0 / kPageTokens)].get();
      s.group = (int)(p0 % kPageTokens / kGroup);
      out.push_back(s);
    }
    const int64_t r0 = std::max<int64_t>(sink16_, quant_end);
    if (r0 < n_past) rows(k_resid_.get(), v_resid_.get(), r0, n_past - r0);  // slots 0 .. n - 1 (r0 % 64 == 0)
    return;
  }
  const int64_t n_sink = std::min<int64_t>(w_.sink, n_past);
  if (n_sink > 0) rows(k_ring_.get(), v_ring_.get(), 0, n_sink);
  // Ring rows hold positions [first_ring, n_past); position p sits in row ring_row(p), so the
  // run splits at most once where the rows wrap.
  int64_t p = w_.first_ring(n_past);
  while (p < n_past) {
    const int64_t ring_row = w_.ring_row(p);
    const int64_t run = std::min<int64_t>(n_past - p, w_.rows() - ring_row);
    const size_t off = (size_t)ring_row * row;
    rows(k_ring_.get() + off, v_ring_.get() + off, p, run);
    p += run;
  }
}

size_t HeadCache::bytes_for(HeadKind kind, int head_dim, StreamingWindow w, int64_t n_past, KvType type) {
  return kv_head_bytes(kind, head_dim, w, n_past, cpu_kv_type(type));
}

size_t HeadCache::bytes() const {
  return bytes_for(kind_, d_, w_, (int64_t)k_pages_.size() * kPageTokens, type_);
}

KvCache::KvCache(int n_layers, int n_kv_heads, int head_dim, HeadPlan plan, std::vector<int> layer_window)
    : n_layers_(n_layers),
      n_kv_(n_kv_heads),
      d_(head_dim),
      plan_(std::move(plan)),
      layer_window_(std::move(layer_window)),
      type_(cpu_kv_type(plan_.kv_type)) {
  DUO_CHECK((int)plan_.kinds.size() == n_layers, "head plan has {} layers, the model {}", plan_.kinds.size(),
            n_layers);
  DUO_CHECK(layer_window_.empty() || (int)layer_window_.size() == n_layers, "{} layer windows for {} layers",
            layer_window_.size(), n_layers);
  for (int l = 0; l < n_layers; ++l)
    DUO_CHECK((int)plan_.kinds[l].size() == n_kv_heads, "head plan layer {} has {} KV heads, the model {}", l,
              plan_.kinds[l].size(), n_kv_heads);
  make_heads();
}

void KvCache::make_heads() {
  heads_.clear();
  heads_.reserve((size_t)n_layers_ * n_kv_);
  for (int l = 0; l < n_layers_; ++l) {
    const int w = layer_window(l);
    for (int h = 0; h < n_kv_; ++h) {
      if (w > 0)
        heads_.emplace_back(HeadKind::Streaming, d_, StreamingWindow{0, w}, type_);
      else
        heads_.emplace_back(plan_.kinds[l][h], d_, plan_.window, type_);
    }
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

size_t KvCache::bytes_for(const HeadPlan& plan, int head_dim, int64_t n_past, HeadKind kind,
                          const std::vector<int>& layer_window) {
  return kv_plan_bytes(plan, cpu_kv_type(plan.kv_type), head_dim, n_past, kind, layer_window);
}

size_t KvCache::bytes_for(const HeadPlan& plan, int head_dim, int64_t n_past, const std::vector<int>& layer_window) {
  return kv_plan_bytes(plan, cpu_kv_type(plan.kv_type), head_dim, n_past, layer_window);
}

void KvCache::clear() {
  make_heads();
  n_past_ = 0;
}

void KvCache::fill_random(int64_t n, uint64_t seed) {
  DUO_CHECK(n_past_ == 0, "fill_random needs an empty cache (it holds {} positions)", n_past_);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t chunk = 1024;
  std::vector<float> rows((size_t)chunk * d_);
  for (int64_t p = 0; p < n; p += chunk) {
    const int64_t m = std::min(chunk, n - p);
    for (auto& x : rows) x = nd(rng);
    // Every head gets the same rows (k = v): their values do not matter, only how many there are.
    for (HeadCache& h : heads_) h.append(rows.data(), rows.data(), m, d_, p);
    advance(m);
  }
}

}  // namespace duo
