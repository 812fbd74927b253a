// Blockwise (flash-style) causal attention over one whole sequence with its backward pass,
// for the calibration forward/backward. Memory is O(block x L) per task: no L x L matrix is
// ever formed; the softmax statistics (log-sum-exp per query row) are kept from the forward
// and the probabilities are recomputed block by block in the backward.
//
// Two mask policies, the two attention kinds of DuoAttention: CausalMask (retrieval heads) and
// StreamingMask (streaming heads: sinks + recent window). They are small policy types
// (duo/duo_policy.h, the one definition of the window) with a per-element test and two block
// tests, so the kernels are written once (and a CUDA twin includes the same policies).
//
// Backward schedule (deterministic, no atomics): pass 1 runs one task per (KV head, key block)
// and accumulates dK, dV over every visible query block of the group's query heads; pass 2 runs
// one task per (query head, query block) and accumulates dQ. Both recompute P = exp(S - lse).
#pragma once
#include <cstdint>

#include "calibrate/attention_mask.h"

namespace duo {

class ThreadPool;

// Shapes: q and o are n x (n_heads * head_dim), k and v are n x (n_kv_heads * head_dim),
// query head h uses KV head h / (n_heads / n_kv_heads); positions are 0 .. n-1.
struct AttentionDims {
  int64_t n = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
};

// o = softmax(q k^T / sqrt(head_dim) + mask) v; lse[h * n + i] = log-sum-exp of row i's scaled
// scores for query head h (kept for the backward).
template <typename T>
void flash_attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const AttentionDims& dims,
                             const AttentionMask& mask, ThreadPool& pool);

// Gradients w.r.t. q, k, v from d_o, given the forward's o and lse. accumulate: add to dq, dk,
// dv instead of overwriting them (the gated layer runs causal and Λ attention on the same q, k, v).
template <typename T>
void flash_attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse, const T* d_o, T* dq,
                              T* dk, T* dv, bool accumulate, const AttentionDims& dims, const AttentionMask& mask,
                              ThreadPool& pool);

// Plain reference: one query row at a time, explicit softmax, double accumulation.
template <typename T>
void attention_reference(const T* q, const T* k, const T* v, T* o, const AttentionDims& dims,
                         const AttentionMask& mask);

}  // namespace duo
