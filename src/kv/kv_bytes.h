// How many bytes of keys and values a sequence's cache holds, from its plan alone: the
// accounting both backends' caches follow (the CPU cache, backend/cpu/kv_cache.h, and the CUDA
// one, backend/cuda/gpu_kv_cache.h, differ only in how they resolve KvType::Default), so
// admission control can price a sequence exactly before running it.
//  - retrieval heads grow a page of kPageTokens positions at a time (K and V pages); quantized
//    ones (q8 / q4) also hold their bf16 sink16 rows and one residual group from the start;
//  - streaming heads hold sink + recent rows from the start, whatever the length.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "duo/head_plan.h"
#include "duo/kv_type.h"

namespace duo {

// Bytes of one K (or V) page of a retrieval head. `type` is a resolved type (not Default).
size_t kv_page_bytes(KvType type, int head_dim);
// Bytes one head of `kind` holds once its sequence has n_past positions.
size_t kv_head_bytes(HeadKind kind, int head_dim, StreamingWindow w, int64_t n_past, KvType type);
// Bytes the heads of `kind` of a plan hold at n_past positions, and all of its heads. The
// plan's own kv_type is not read: the caller passes it resolved for its device. layer_window
// (empty, or one entry a layer, 0 for none): a layer with a window (gemma3's local layers) holds
// every head as a no-sink streaming head of that many rows, whatever the plan says.
size_t kv_plan_bytes(const HeadPlan& plan, KvType type, int head_dim, int64_t n_past, HeadKind kind,
                     const std::vector<int>& layer_window = {});
size_t kv_plan_bytes(const HeadPlan& plan, KvType type, int head_dim, int64_t n_past,
                     const std::vector<int>& layer_window = {});

}  // namespace duo
