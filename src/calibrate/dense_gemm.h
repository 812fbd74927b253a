// Dense matrix products of the calibration forward and backward passes, templated on the
// scalar type (float for real runs, double for finite-difference checks).
//
// A frozen linear layer y = x W^T (W stored rows x cols, as in GGUF) needs two products:
//   forward          C = A B^T   (A = x, B = W)          gemm(..., trans_b = true)
//   input gradient   C = A B     (A = dy, B = W)         gemm(..., trans_b = false)
// The float version packs panels and runs an AVX2 6x16 micro-kernel; any other type runs the
// same tiling with a plain micro-kernel. Each output tile is computed by one task with a fixed
// order of operations, so results do not depend on the number of threads.
#pragma once
#include <cstdint>

namespace duo {

class ThreadPool;

// C[m][n] (+)= sum_k A[m][k] * op(B)[k][n] for m < M, n < N, where op(B)[k][n] = B[n][k] when
// trans_b, else B[k][n]. Leading dimensions are row strides in elements. accumulate: add to C
// instead of overwriting it.
template <typename T>
void gemm(const T* A, int64_t lda, const T* B, int64_t ldb, bool trans_b, T* C, int64_t ldc, int64_t M, int64_t N,
          int64_t K, bool accumulate, ThreadPool& pool);

// Plain triple loop with a double accumulator: the reference the tiled version is tested against.
template <typename T>
void gemm_ref(const T* A, int64_t lda, const T* B, int64_t ldb, bool trans_b, T* C, int64_t ldc, int64_t M,
              int64_t N, int64_t K, bool accumulate);

}  // namespace duo
