// What the two AVX-512 many-token kernels share (16-bit activations: matmul_avx512.cpp; 8-bit:
// matmul_act8_avx512.cpp): the panel geometry (16 weight rows in the lanes, kRV row vectors x
// kTT tokens a register tile, kRB rows a panel), packing a matrix's panels once, and the split of
// a call into (matrix, row block, token chunk) tasks. Only the panel's words differ (int16 pairs
// or u8 quads), so each kernel passes its word count, panel filler and tile runner.
#pragma once
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd_level.h"

#if DUO_HAVE_AVX512

#include <algorithm>
#include <memory>

#include "core/error.h"
#include "core/thread_pool.h"

namespace duo::mm {

constexpr int kRV = 3;         // row vectors per tile (48 rows)
constexpr int kTT = 4;         // tokens per tile
constexpr int kRB = 16 * kRV;  // rows per panel

// Packs every row block of w once: fill(w, r0, nr, q, d, m) writes a block's panel (words_per_block
// words a 32-block a row, then its scales and mins), act_bits says which kernel reads it.
template <typename Fill>
std::shared_ptr<const PackedWeight> pack_panels(const MatmulWeight& w, int words_per_block, int act_bits,
                                                ThreadPool& pool, Fill&& fill) {
  const int64_t nb = w.cols / QK, blocks = (w.rows + kRB - 1) / kRB;
  auto pw = std::make_shared<PackedWeight>();
  pw->data = w.data;
  pw->type = w.type;
  pw->rows = w.rows;
  pw->cols = w.cols;
  pw->act_bits = act_bits;
  grow(pw->q, (size_t)(blocks * nb * words_per_block * kRB));  // not resize: see grow()
  grow(pw->dm, (size_t)(blocks * 2 * nb * kRB));
  pool.parallel_for_dynamic(blocks, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      float* d = pw->dm.data() + blk * 2 * nb * kRB;
      fill(w, blk * kRB, (int)std::min<int64_t>(kRB, w.rows - blk * kRB), pw->q.data() + blk * nb * words_per_block * kRB,
           d, d + nb * kRB);
    }
  });
  return pw;
}

// Runs a many-token call on the pool. Tasks are (matrix, row block, token chunk); token chunks only
// split the work when there are too few row blocks to keep every thread busy (each chunk unpacks
// its panel again unless the matrix is packed). For each task: the row block's panel, from the
// packed matrix or made by fill(w, r0, nr, q, d, m) into the thread's scratch (q_scratch,
// dm_scratch: the thread's grow-only buffers), then run(i, pq, pd, pm, t0, t1, y, mask) for tokens
// [t0, t1) with y the block's first output and mask the valid rows of each row vector.
template <typename Scratch, typename Fill, typename Run>
void run_panel_tasks(const MatmulOut* outs, int count, int64_t n, int words_per_block, int act_bits, ThreadPool& pool,
                     Scratch&& scratch_of_thread, Fill&& fill, Run&& run) {
  const int64_t nb = outs[0].w.cols / QK;
  constexpr int kMaxOuts = 4;
  DUO_SIMD_CHECK(count <= kMaxOuts, "matmul: at most {} matrices share an input", kMaxOuts);
  int64_t blocks[kMaxOuts], first_task[kMaxOuts + 1], all_blocks = 0;
  bool all_packed = true;
  for (int i = 0; i < count; ++i) {
    all_blocks += blocks[i] = (outs[i].w.rows + kRB - 1) / kRB;
    all_packed = all_packed && outs[i].w.packed;
  }
  // Packed panels cost nothing to revisit, so then aim at ~8 tasks a thread: a thread that
  // finishes early waits for at most a small task (a batched step runs ~10 such calls a layer).
  const int64_t want_tasks = (all_packed ? 8 : 2) * pool.size();
  const int64_t tchunks =
      std::min<int64_t>((n + kTT - 1) / kTT, std::max<int64_t>(1, (want_tasks + all_blocks - 1) / all_blocks));
  const int64_t tper = ((n + tchunks - 1) / tchunks + kTT - 1) / kTT * kTT;
  first_task[0] = 0;
  for (int i = 0; i < count; ++i) first_task[i + 1] = first_task[i] + blocks[i] * tchunks;
  pool.parallel_for_dynamic(first_task[count], 1, [&](int64_t task0, int64_t task1, int) {
    for (int64_t task = task0; task < task1; ++task) {
      int i = 0;
      while (task >= first_task[i + 1]) ++i;
      const MatmulWeight& w = outs[i].w;
      DUO_SIMD_CHECK(!w.packed || (w.packed->data == w.data && w.packed->type == w.type && w.packed->rows == w.rows &&
                              w.packed->cols == w.cols && w.packed->act_bits == act_bits),
                "matmul: the packed panels were made from another weight matrix or for {}-bit activations",
                act_bits == 16 ? 8 : 16);
      const int64_t local = task - first_task[i];
      const int64_t blk = local / tchunks, t0 = (local % tchunks) * tper, t1 = std::min(n, t0 + tper);
      if (t0 >= t1) continue;
      const int64_t r0 = blk * kRB;
      const int nr = (int)std::min<int64_t>(kRB, w.rows - r0);
      const int32_t* pq;
      const float *pd, *pm;
      if (w.packed) {  // packed once (pack_panels): the panel of this row block, as fill makes it
        pq = w.packed->q.data() + blk * nb * words_per_block * kRB;
        pd = w.packed->dm.data() + blk * 2 * nb * kRB;
        pm = pd + nb * kRB;
      } else {
        auto [q_scratch, dm_scratch] = scratch_of_thread();
        int32_t* q = scratch(q_scratch, (size_t)(nb * words_per_block * kRB));
        float* d = scratch(dm_scratch, (size_t)(2 * nb * kRB));
        fill(w, r0, nr, q, d, d + nb * kRB);
        pq = q, pd = d, pm = d + nb * kRB;
      }
      __mmask16 mask[kRV];
      for (int v = 0; v < kRV; ++v) {
        const int valid = std::clamp(nr - 16 * v, 0, 16);
        mask[v] = (__mmask16)((1u << valid) - 1u);
      }
      run(i, pq, pd, pm, t0, t1, outs[i].y + r0, mask);
    }
  });
}

}  // namespace duo::mm

#endif  // DUO_HAVE_AVX512
