// Helpers for the GPU tests (duo_cuda_tests): device buffers filled from host vectors, bf16
// rounding on the host, and error statistics that print where the worst element is.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_memory.h"
#include "core/fp16.h"

namespace duo::cuda::test {

// A device copy of a host vector (or zeroed storage), downloadable again.
template <class T>
class Dev {
 public:
  explicit Dev(size_t n) : buf_(std::max<size_t>(1, n) * sizeof(T), "test buffer"), n_(n) {
    DUO_CUDA_TRY(cudaMemset(buf_.get(), 0, buf_.bytes()));
  }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) { upload(h); }
  void upload(const std::vector<T>& h) {
    DUO_CUDA_TRY(cudaMemcpy(buf_.get(), h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    DUO_CUDA_TRY(cudaDeviceSynchronize());
    std::vector<T> h(n_);
    DUO_CUDA_TRY(cudaMemcpy(h.data(), buf_.get(), sizeof(T) * n_, cudaMemcpyDeviceToHost));
    return h;
  }
  T* get() const { return buf_.as<T>(); }
  size_t size() const { return n_; }

 private:
  DeviceBuffer buf_;
  size_t n_;
};

inline float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }
inline float to_float(bf16 x) { return __bfloat162float(x); }
inline std::vector<float> to_float(const std::vector<bf16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = __bfloat162float(v[i]);
  return f;
}
inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = __float2bfloat16(v[i]);
  return b;
}

inline std::vector<float> randn(std::mt19937& rng, size_t n, float scale = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> nd(mean, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}
// Random values already rounded to bf16, so host and device start from the same numbers.
inline std::vector<float> randn_bf16(std::mt19937& rng, size_t n, float scale = 1.0f) {
  auto v = randn(rng, n, scale);
  for (auto& x : v) x = round_bf16(x);
  return v;
}

// Element-wise check |got - want| <= rel * |want| + abs; reports the count and the worst
// element (its index and both values) so a failure says where.
struct Mismatch {
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
};
inline Mismatch compare_close(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs) {
  Mismatch m;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = rel * std::fabs(want[i]) + abs;
    const double err = std::isfinite(got[i]) ? std::fabs((double)got[i] - want[i]) : INFINITY;
    if (err > tol) ++m.bad;
    if (err - tol > m.worst_excess) m.worst_excess = err - tol, m.worst = i;
  }
  return m;
}
#define EXPECT_ALL_CLOSE(got, want, rel, abs, what)                                                              \
  do {                                                                                                           \
    const auto _m = ::duo::cuda::test::compare_close((got), (want), (rel), (abs));                               \
    EXPECT_EQ(_m.bad, 0u) << (what) << ": " << _m.bad << " of " << (want).size() << " elements off; worst at " \
                          << _m.worst << ": got " << (got)[_m.worst] << ", want " << (want)[_m.worst];          \
  } while (0)

// Relative RMS error ||got - want|| / ||want|| and max |got - want|.
struct ErrorStats {
  double rel_rms = 0, max_abs = 0;
  size_t argmax = 0;
};
inline ErrorStats error_stats(const float* got, const float* want, size_t n) {
  double num = 0, den = 0;
  ErrorStats e;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::isfinite(got[i]) ? (double)got[i] - want[i] : INFINITY;
    num += d * d, den += (double)want[i] * want[i];
    if (std::fabs(d) > e.max_abs) e.max_abs = std::fabs(d), e.argmax = i;
  }
  e.rel_rms = std::sqrt(num / std::max(den, 1e-30));
  return e;
}

}  // namespace duo::cuda::test
