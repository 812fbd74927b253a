// The very large RoPE base of Llama-3-8B-Instruct-Gradient-4194k (rope_theta 45218125210) on a
// tiny llama (tests/fixtures/hf/tiny-llama-4194k, dev/make_hf_long_rope_fixture.py) against
// transformers at positions up to 2047.
//
// The angle math: transformers computes inv_freq = 1 / base ** (arange(0, D, 2) / D) in float32
// (the base rounded to float32, a float32 pow and reciprocal) and the angle as the float32
// product position * inv_freq. duo computes inv_freq the same way (model.cpp torch_inv_freq: the
// power in double rounded to float, which torch's float pow is within 2 ulps of) and forms the
// same float32 product (backend/cpu/ops.cpp rope). The correctly rounded base^(-2i/D) duo took
// before was an ulp off transformers' at 10 of this model's 32 frequencies: 6e-5 rad at position
// 2047, growing with the position (3e-2 rad at 1M). The logits then agree within the tolerance
// of the other architectures.
#include <gtest/gtest.h>

#include <cmath>

#include "backend/cpu/cpu_forward.h"
#include "core/thread_pool.h"
#include "io/hf_fixture.h"
#include "model/model.h"

namespace duo {
namespace {

const char* kKey = "tiny-llama-4194k";

TEST(HfLongRope, ConfigKeepsTheBase) {
  auto m = Model::load(test::hf_dir(kKey));
  // float32, as transformers rounds it (the nearest float: 45218123776, 3e-8 relative).
  EXPECT_EQ(m->config().rope_theta, (float)45218125210.0);
  EXPECT_EQ(m->config().head_dim, 64);
  EXPECT_EQ(m->config().n_ctx_train, 2048);
}

// Every inverse frequency equal to transformers' float32 value here (torch's pow can be 2 ulps off
// ours for other bases: then the angle at position 2047 differs by < 1e-4 rad).
TEST(HfLongRope, InvFreqEqualsTransformers) {
  const auto ref = test::hf_reference(kKey);
  auto m = Model::load(test::hf_dir(kKey));
  const auto& inv = m->rope_inv_freq();
  const auto hf = ref["inv_freq"].get<std::vector<double>>();
  ASSERT_EQ(inv.size(), hf.size());
  double worst_ulps = 0, worst_angle = 0;
  for (size_t i = 0; i < inv.size(); ++i) {
    const float h = (float)hf[i];
    const double ulp = std::nextafter(h, INFINITY) - h;
    worst_ulps = std::max(worst_ulps, std::fabs((double)inv[i] - h) / ulp);
    worst_angle = std::max(worst_angle, 2047.0 * std::fabs((double)inv[i] - h));
  }
  std::printf("  inv_freq: max %.1f ulps from transformers'; angle at position 2047 differs by <= %.2e rad\n",
              worst_ulps, worst_angle);
  EXPECT_EQ(worst_ulps, 0.0);
  EXPECT_EQ(worst_angle, 0.0);
}

// Measured max |dlogit| (logit std ~1, reference rounded to 1e-5): see the printed values.
// The same weights under the 1048k model's theta move the logits by the fixture's
// max_logit_change_with_1048k_theta (5.5 when written): the tolerance is far below it.
constexpr double kTol = 2e-4;

double max_logit_error(int64_t chunk) {
  const auto ref = test::hf_reference(kKey);
  auto m = Model::load(test::hf_dir(kKey));
  CpuForward cpu(*m);
  const int V = m->config().n_vocab;
  const auto ids = ref["ids"].get<std::vector<int32_t>>();
  const auto positions = ref["positions"].get<std::vector<int64_t>>();
  const int64_t n = (int64_t)ids.size();
  ThreadPool pool(2);
  auto cache = cpu.new_cache(HeadPlan::uniform(m->config().n_layers, m->config().n_kv_heads, HeadKind::Retrieval, {}));
  std::vector<float> got((size_t)(n * V));
  cpu.forward(*cache, ids.data(), n, got.data(), pool, true, chunk);
  double worst = 0;
  for (size_t r = 0; r < positions.size(); ++r)
    for (int v = 0; v < V; ++v)
      worst = std::max(worst, std::fabs((double)got[positions[r] * V + v] - ref["logits"][r][v].get<double>()));
  std::printf("  chunk %4lld: max |dlogit| %.2e at %zu positions up to %lld\n", (long long)chunk, worst,
              positions.size(), (long long)positions.back());
  return worst;
}

TEST(HfLongRope, LogitsMatchTransformersUpTo2K) {
  const auto ref = test::hf_reference(kKey);
  ASSERT_EQ(ref["positions"].back().get<int64_t>(), 2047);
  EXPECT_GT(ref["max_logit_change_with_1048k_theta"].get<double>(), 100 * kTol);
  for (int64_t chunk : {512, 97}) EXPECT_LT(max_logit_error(chunk), kTol);
}

}  // namespace
}  // namespace duo
