// Watching a layer's attention during forward passes, whatever the backend: what tools that
// measure where heads look read (head ranking, src/eval/head_ranking.cpp). A backend that can
// show its attention accepts an observer (ModelBackend::set_attention_observer; the CPU backend
// does); one that cannot refuses it, so such tools fail with a clear message instead of
// reaching for a backend's internals.
#pragma once
#include <cstdint>
#include <functional>

namespace duo {

// One forward step's attention in one layer for one sequence (each item of a batched step is
// shown on its own): the queries, and the keys each KV head attends to.
class ObservedAttention {
 public:
  virtual ~ObservedAttention() = default;
  int layer = 0;
  // Query head h reads KV head h / (n_heads / n_kv_heads).
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t pos0 = 0, n = 0;   // the queries' positions: pos0 .. pos0 + n - 1
  const float* q = nullptr;  // n x n_heads x head_dim floats, RoPE applied

  // A run of keys at consecutive positions pos0 .. pos0 + n - 1: row r (head_dim floats) at
  // k + r * stride. Valid during the call only.
  using KeyRun = std::function<void(int64_t pos0, int64_t n, const float* k, int64_t stride)>;
  // Calls `visit` for the keys KV head `kv_head` holds for this step (its cache and the step's
  // own tokens) at positions <= `last`, in the order the head stores them (the order the
  // backend's attention reads them). Rows stored in another format arrive as floats.
  virtual void keys(int kv_head, int64_t last, const KeyRun& visit) const = 0;
};

class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;
  virtual void on_attention(const ObservedAttention& attention) = 0;
};

}  // namespace duo
