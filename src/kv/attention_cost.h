// How much work attention does under a HeadPlan, counted from the mask: the visible
// (query, key) pairs. Benchmarks turn kernel times into TFLOP/s and GB/s with these.
//  - FLOPs of a query head = 4 * head_dim * visible pairs (Q K^T and P V, a multiply-add = 2);
//  - bytes a decode step reads = 2 (K and V) * element bytes * head_dim * visible keys, per KV
//    head (all query heads of a GQA group share one read).
#pragma once
#include <cstdint>

#include "duo/head_plan.h"
#include "model/config.h"

namespace duo {

// Pairs visible to the queries at positions [pos0, pos0 + n) of one head of `kind`
// (retrieval: j <= i; streaming: min(i + 1, sink + recent) keys each).
double visible_pairs(HeadKind kind, const StreamingWindow& w, int64_t pos0, int64_t n);

// FLOPs of the attention of a whole pre-fill of `length` tokens in chunks of `chunk`, all layers.
double prefill_attention_flops(const ModelConfig& c, const HeadPlan& plan, int64_t length, int64_t chunk);

// K and V bytes one decode step reads with n_past positions in the cache, all layers.
double decode_attention_bytes(const ModelConfig& c, const HeadPlan& plan, int64_t n_past, int elem_bytes);

}  // namespace duo
