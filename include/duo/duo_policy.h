// The DuoAttention head policy, defined once for every backend, cache and kernel (host and
// device, through DUO_HD):
//  - head kinds: retrieval heads keep every position; streaming heads keep the first `sink`
//    positions (attention sinks) and the last `recent` ones;
//  - the streaming window (StreamingWindow): which keys a streaming head's query sees (the
//    Λ-shaped mask), where a position sits in its sink + ring buffer, and the block-level forms
//    of the same rule that blockwise kernels use to skip or fully expose tiles (CausalMask /
//    StreamingMask);
//  - the page size of retrieval heads' caches (kPageTokens) and the layout of a quantized page
//    (kvq::kGroup, kvq::sink16, kvq::QuantLayout; the quantization arithmetic is kv/kv_quant.h).
// Every function is templated on the integer type of positions where callers differ: CUDA
// kernels keep 32-bit arithmetic (a 64-bit modulo or compare costs several instructions there),
// host code uses int64_t. Callers pass arguments of one type; the results do not depend on it
// for positions that fit.
#pragma once
#include <cstdint>

#include "duo/host_device.h"

namespace duo {

enum class HeadKind : uint8_t { Retrieval, Streaming };

// Positions a page of a retrieval head's cache holds (CPU and GPU caches, quantized or not).
constexpr int kPageTokens = 256;

// The window of a streaming head: a query at position i sees key j <= i when j < sink or
// j > i - recent (a Λ-shaped mask over (i, j)). A streaming head stores sink + recent rows:
// row r < sink holds position r, and position p >= sink sits in row sink + (p - sink) % recent.
struct StreamingWindow {
  int sink = 64;
  int recent = 256;

  // Rows of a streaming head's buffer.
  DUO_HD int rows() const { return sink + recent; }
  // The window test for a key j <= i (callers check causality themselves, or use visible()).
  template <class I>
  DUO_HD bool keeps(I i, I j) const {
    return j < (I)sink || j > i - (I)recent;
  }
  // keeps(i, base + c), written so that with i and base fixed only c varies: a kernel's
  // unrolled loop over constant c then costs one compare a bound.
  template <class I>
  DUO_HD bool keeps_at(I i, I base, I c) const {
    return c < (I)sink - base || c > i - (I)recent - base;
  }
  // Causal and inside the window.
  template <class I>
  DUO_HD bool visible(I i, I j) const {
    return j <= i && keeps(i, j);
  }
  // The buffer row of position pos (any pos < sink or in the ring).
  template <class I>
  DUO_HD I ring_row(I pos) const {
    return pos < (I)sink ? pos : (I)sink + (pos - (I)sink) % (I)recent;
  }
  // Once positions [0, end) exist, the ring holds positions [first_ring(end), end); positions in
  // [sink, first_ring(end)) can never be seen again.
  template <class I>
  DUO_HD I first_ring(I end) const {
    return end - (I)recent > (I)sink ? end - (I)recent : (I)sink;
  }
  // Does some query at a position >= qmin keep some key in [k0, k_last]? (false: the block of
  // keys lies after the sink and before every such query's recent window).
  template <class I>
  DUO_HD bool reaches(I qmin, I k0, I k_last) const {
    return k0 < (I)sink || k_last > qmin - (I)recent;
  }
  // Does every query at a position <= qmax keep every key in [k0, k_last]? (a sufficient
  // test: the keys are all sinks, or all inside qmax's recent window, hence every earlier one's).
  template <class I>
  DUO_HD bool covers(I qmax, I k0, I k_last) const {
    return k_last < (I)sink || k0 > qmax - (I)recent;
  }
  // No gap yet at qmax: the sink and qmax's recent window overlap, so queries <= qmax keep
  // every key.
  template <class I>
  DUO_HD bool gapless(I qmax) const {
    return (I)sink > qmax - (I)recent;
  }
};

// Is key position j visible to a query at position i for a head of this kind?
template <class I>
DUO_HD bool visible(HeadKind kind, const StreamingWindow& w, I i, I j) {
  return j <= i && (kind == HeadKind::Retrieval || w.keeps(i, j));
}

// Mask policies of blockwise attention kernels (the CPU and CUDA calibration kernels, the CUDA
// pre-fill), instantiated with the kernel's position type I:
//  visible(i, j)            may query i see key j?
//  any(i0, i1, j0, j1)      some (i, j) in [i0, i1) x [j0, j1) visible (non-empty ranges)
//  all(i0, i1, j0, j1)      every such (i, j) visible (exact)
//  tiles(qmin, qmax, bn, ..) key tiles of width bn a query block [qmin, qmax] visits, as two
//                           index ranges [r0b, r0e) and [r1b, r1e)
//  tile_full(qmin, qmax, k0, k1)  no element of keys [k0, k1) needs masking for the block
//                           (sufficient, cheaper than all())
template <class I>
struct CausalMask {
  DUO_HD bool visible(I i, I j) const { return j <= i; }
  DUO_HD bool any(I, I i1, I j0, I) const { return j0 <= i1 - 1; }
  DUO_HD bool all(I i0, I, I, I j1) const { return j1 - 1 <= i0; }
  DUO_HD void tiles(I qmin, I qmax, I bn, I& r0b, I& r0e, I& r1b, I& r1e) const {
    (void)qmin;
    r0b = 0, r0e = qmax / bn + 1, r1b = r1e = r0e;
  }
  DUO_HD bool tile_full(I qmin, I qmax, I k0, I k1) const {
    (void)qmax, (void)k0;
    return k1 - 1 <= qmin;
  }
};

template <class I>
struct StreamingMask {
  StreamingWindow w;
  DUO_HD bool visible(I i, I j) const { return w.visible(i, j); }
  DUO_HD bool any(I i0, I i1, I j0, I j1) const { return j0 <= i1 - 1 && w.reaches(i0, j0, j1 - 1); }
  // Causal everywhere, and the invisible gap [sink, i - recent] of the last row (the widest
  // gap) misses the key range.
  DUO_HD bool all(I i0, I i1, I j0, I j1) const {
    return j1 - 1 <= i0 && (w.gapless(i1 - 1) || w.covers(i1 - 1, j0, j1 - 1));
  }
  DUO_HD void tiles(I qmin, I qmax, I bn, I& r0b, I& r0e, I& r1b, I& r1e) const {
    const I last = qmax / bn + 1;                                    // tiles past the newest query are invisible
    const I win = qmin - (I)w.recent + 1;                            // first key in qmin's recent window
    r1b = (win > 0 ? win : 0) / bn, r1e = last;                      // recent window of the block
    const I sink_tiles = ((I)w.sink + bn - 1) / bn;                  // sink tiles
    r0b = 0, r0e = sink_tiles < last ? sink_tiles : last;
    if (r1b < r0e) r1b = r0e;
    if (r1b > r1e) r1b = r1e;
  }
  DUO_HD bool tile_full(I qmin, I qmax, I k0, I k1) const { return k1 - 1 <= qmin && w.covers(qmax, k0, k1 - 1); }
};

// Quantized retrieval-head pages (KIVI, kv/kv_quant.h has the header comment with the whole
// format): groups of kGroup positions (keys: per channel; values: per position and group of
// kGroup channels).
namespace kvq {

constexpr int kGroup = 64;
constexpr int kGroupsPerPage = kPageTokens / kGroup;

// Rows kept in 16 bits at the start of a quantized retrieval head: whole groups covering the sink.
DUO_HD int sink16(int sink) { return (sink + kGroup - 1) / kGroup * kGroup; }

// Where things are in a quantized page:
//   K page: [kPageTokens][row_bytes] codes (position-major) | [kGroupsPerPage][d channels] params
//   V page: [kPageTokens][row_bytes] codes                  | [kPageTokens][d / kGroup] params
// one 32-bit params word each.
struct QuantLayout {
  int d = 0, bits = 0;
  DUO_HD int row_bytes() const { return d * bits / 8; }
  DUO_HD int64_t code_bytes() const { return (int64_t)kPageTokens * row_bytes(); }
  DUO_HD int64_t page_bytes() const { return code_bytes() + (int64_t)kGroupsPerPage * d * 4; }
  // K params of channel c in group gi (0..3) of the page.
  DUO_HD int64_t k_params(int gi, int c) const { return code_bytes() + ((int64_t)gi * d + c) * 4; }
  // V params of position t (0..255) of the page, channel group cg (channel / 64).
  DUO_HD int64_t v_params(int t, int cg) const { return code_bytes() + ((int64_t)t * (d / kGroup) + cg) * 4; }
  // Codes of position t (0..255) of the page.
  DUO_HD int64_t codes(int t) const { return (int64_t)t * row_bytes(); }
};

}  // namespace kvq
}  // namespace duo
