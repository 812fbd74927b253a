// Attention of a chunk of queries over KV segments with a per-head mask policy (causal for
// retrieval heads, Λ sink+recent for streaming heads). One routine serves pre-fill (many
// queries) and decode (one query, keys split across threads), for every attention mode.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "duo/head_plan.h"
#include "backend/cpu/kv_cache.h"

namespace duo {

class ThreadPool;

struct AttentionArgs {
  const float* q = nullptr;  // n x (n_heads * head_dim), RoPE applied
  float* out = nullptr;      // n x (n_heads * head_dim)
  int64_t n = 0;             // queries, at positions pos0 .. pos0 + n - 1
  int64_t pos0 = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  // For each KV head: the segments it may attend to (cached positions and the chunk itself),
  // and the head's kind. Query head h uses KV head h / (n_heads / n_kv_heads).
  const std::vector<std::vector<KvSegment>>* segments = nullptr;
  const std::vector<HeadKind>* kinds = nullptr;
  StreamingWindow window;
};

// Plain reference: one query, one key at a time, double accumulation.
void attention_ref(const AttentionArgs& a);
// Blocked online-softmax version, multithreaded. At the AVX-512 SIMD level pre-fill tasks of
// >= 16 query rows and decode go to the kernels in attention_avx512.cpp.
void attention(const AttentionArgs& a, ThreadPool& pool);
// Several independent calls (the sequences of a batched decode step): calls that split their
// keys across threads share one parallel region instead of one each. Each call's output is
// exactly what attention() gives it alone, except that with more than kExactDecodeCalls
// one-query calls those take each KV head's keys whole on one thread (enough tasks without
// splitting, and no merge): equal within rounding. (The same bound as the matmuls' few-token
// path: a batched step of at most 4 decoders computes exactly what each computes alone.)
constexpr size_t kExactDecodeCalls = 4;
void attention_many(const std::vector<AttentionArgs>& calls, ThreadPool& pool);

}  // namespace duo
