// The CUDA forward against the CPU forward (the reference engine) through the same device
// seam, on small random models (both RoPE styles, QKV bias, GQA) and on the two real models,
// in full, streaming and duo modes, chunked and unchunked pre-fill, and decode.
//
// The GPU keeps bf16 weights and rounds GEMM inputs and Q/K/V to bf16 (8 significant bits),
// the CPU works in fp32 on the GGUF weights, so logits differ by the accumulated bf16 rounding:
// tolerances are stated on the relative RMS error of a logit row (||gpu - cpu|| / ||cpu||),
// and the top-1 token must agree wherever the CPU's top-1 / top-2 gap exceeds a margin. The
// numbers were estimated with a CPU emulation of the GPU's rounding (see bench/cuda/NOTES.md);
// every comparison prints what it measured.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "cuda_test_util.h"
#include "engine/backend.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "sample/sampler.h"
#include "test_support.h"

namespace duo::cuda {
namespace {

struct Tolerance {
  double rel_rms;    // per logit row
  double top1_gap;   // top-1 must agree where the CPU's top-1 / top-2 gap is above this
};

double top_gap(const float* row, int V) {
  float a = -INFINITY, b = -INFINITY;
  for (int i = 0; i < V; ++i) {
    if (row[i] > a)
      b = a, a = row[i];
    else if (row[i] > b)
      b = row[i];
  }
  return (double)a - b;
}

// Compares logit rows; prints the worst row's error and the smallest gap where top-1 agreed.
void expect_rows_close(const std::vector<float>& gpu, const std::vector<float>& cpu, int V, const Tolerance& tol,
                       const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size());
  const size_t rows = cpu.size() / V;
  double worst = 0, worst_abs = 0;
  size_t worst_row = 0, disagree = 0;
  for (size_t r = 0; r < rows; ++r) {
    const test::ErrorStats e = test::error_stats(&gpu[r * V], &cpu[r * V], V);
    if (e.rel_rms > worst) worst = e.rel_rms, worst_row = r;
    worst_abs = std::max(worst_abs, e.max_abs);
    const int32_t g = Sampler::argmax(&gpu[r * V], V), c = Sampler::argmax(&cpu[r * V], V);
    if (g != c && top_gap(&cpu[r * V], V) > tol.top1_gap) {
      if (disagree++ < 3)
        ADD_FAILURE() << what << ": row " << r << " top-1 " << g << " vs CPU " << c << " (CPU gap "
                      << top_gap(&cpu[r * V], V) << ")";
    }
  }
  std::printf("  %-58s %4zu rows: worst rel RMS %.4f (row %zu), max |d| %.4f\n", what.c_str(), rows, worst,
              worst_row, worst_abs);
  EXPECT_LE(worst, tol.rel_rms) << what << ": row " << worst_row;
  EXPECT_EQ(disagree, 0u) << what;
}

std::vector<float> run_all_logits(ModelBackend& be, const HeadPlan& plan, const std::vector<int32_t>& toks,
                                  int64_t chunk) {
  auto seq = be.new_sequence(plan, (int64_t)toks.size() + 64);
  std::vector<float> logits(toks.size() * be.config().n_vocab);
  be.forward(*seq, toks.data(), (int64_t)toks.size(), logits.data(), chunk, true);
  EXPECT_EQ(seq->n_past(), (int64_t)toks.size());
  return logits;
}

// Pre-fill `prefill` tokens, then decode the rest one at a time: the logits after each token.
std::vector<float> run_decode(ModelBackend& be, const HeadPlan& plan, const std::vector<int32_t>& toks,
                              int64_t prefill) {
  const int V = be.config().n_vocab;
  auto seq = be.new_sequence(plan, (int64_t)toks.size() + 64);
  std::vector<float> out, row(V);
  be.forward(*seq, toks.data(), prefill, row.data(), 512, false);
  out.insert(out.end(), row.begin(), row.end());
  for (size_t i = prefill; i < toks.size(); ++i) {
    be.forward(*seq, &toks[i], 1, row.data(), 512, false);
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Small random models: every code path of the forward, compared on all positions.

ModelConfig tiny(bool qwen_like) {
  ModelConfig c;
  c.arch = qwen_like ? "qwen2" : "llama";
  c.name = qwen_like ? "tiny-qwen" : "tiny-llama";
  c.n_layers = 3;
  c.n_embd = 256;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 64;  // the CUDA attention kernels take 64 or 128
  c.n_ff = 512;
  c.n_vocab = 512;
  c.n_ctx_train = 4096;
  c.rope_theta = qwen_like ? 1e6f : 10000.0f;
  c.rope_style = qwen_like ? RopeStyle::Neox : RopeStyle::Interleaved;
  c.qkv_bias = qwen_like;
  c.tied_embeddings = !qwen_like;
  return c;
}

std::vector<int32_t> tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = u(rng);
  return t;
}

constexpr Tolerance kTinyTol{0.05, 0.25};

class CudaForwardTiny : public ::testing::TestWithParam<bool> {};

TEST_P(CudaForwardTiny, FullAndStreamingChunkedAndNot) {
  auto m = Model::synthetic(tiny(GetParam()), 11);
  ThreadPool pool(4);
  auto cpu = make_cpu_backend(*m, pool);
  auto gpu = make_cuda_backend(*m);
  const auto toks = tokens(300, m->config().n_vocab, 1);
  const int V = m->config().n_vocab;
  for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming}) {
    const HeadPlan plan = HeadPlan::uniform(3, 2, kind, {4, 40});
    const auto want = run_all_logits(*cpu, plan, toks, 300);
    const std::string mode = kind == HeadKind::Retrieval ? "full" : "streaming";
    for (int64_t chunk : {300, 64, 1}) {
      if (chunk == 1 && kind == HeadKind::Retrieval) continue;  // decode path: tested below
      expect_rows_close(run_all_logits(*gpu, plan, toks, chunk), want, V, kTinyTol,
                        m->config().name + " " + mode + " chunk " + std::to_string(chunk));
    }
  }
}

TEST_P(CudaForwardTiny, DecodeMatchesCpu) {
  auto m = Model::synthetic(tiny(GetParam()), 12);
  ThreadPool pool(4);
  auto cpu = make_cpu_backend(*m, pool);
  auto gpu = make_cuda_backend(*m);
  const auto toks = tokens(330, m->config().n_vocab, 2);
  const int V = m->config().n_vocab;
  for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming}) {
    const HeadPlan plan = HeadPlan::uniform(3, 2, kind, {4, 40});
    expect_rows_close(run_decode(*gpu, plan, toks, 290), run_decode(*cpu, plan, toks, 290), V, kTinyTol,
                      m->config().name + (kind == HeadKind::Retrieval ? " full" : " streaming") + " decode");
  }
}

TEST_P(CudaForwardTiny, DuoReorderedHeads) {
  auto m = Model::synthetic(tiny(GetParam()), 13);
  HeadPlan mixed = HeadPlan::uniform(3, 2, HeadKind::Retrieval, {4, 40});
  mixed.kinds[0][0] = HeadKind::Streaming;  // moved behind the retrieval head by reorder_heads
  mixed.kinds[2][1] = HeadKind::Streaming;
  const HeadPlan plan = m->reorder_heads(mixed);
  ThreadPool pool(4);
  auto cpu = make_cpu_backend(*m, pool);
  auto gpu = make_cuda_backend(*m);  // uploads the reordered rows and permutes Wo's columns
  const auto toks = tokens(300, m->config().n_vocab, 3);
  const int V = m->config().n_vocab;
  const auto want = run_all_logits(*cpu, plan, toks, 300);
  expect_rows_close(run_all_logits(*gpu, plan, toks, 300), want, V, kTinyTol, m->config().name + " duo");
  expect_rows_close(run_all_logits(*gpu, plan, toks, 100), want, V, kTinyTol, m->config().name + " duo chunk 100");
  expect_rows_close(run_decode(*gpu, plan, toks, 280), run_decode(*cpu, plan, toks, 280), V, kTinyTol,
                    m->config().name + " duo decode");
}

INSTANTIATE_TEST_SUITE_P(LlamaAndQwen, CudaForwardTiny, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "qwen" : "llama"; });

TEST(CudaForward, RejectsBadInput) {
  auto m = Model::synthetic(tiny(false), 1);
  auto gpu = make_cuda_backend(*m);
  auto seq = gpu->new_sequence(HeadPlan::uniform(3, 2, HeadKind::Retrieval), 16);
  const int32_t bad[] = {1, 512};
  std::vector<float> logits(512);
  EXPECT_THROW(gpu->forward(*seq, bad, 2, logits.data(), 8, false), Error);
  EXPECT_EQ(seq->n_past(), 0);
  std::vector<int32_t> many(17, 1);
  EXPECT_THROW(gpu->forward(*seq, many.data(), 17, logits.data(), 8, false), Error);  // beyond max_tokens
}

TEST(CudaForward, SyntheticFullSizeShapeRuns) {
  // A real shape's layer (Llama-3-8B attention and FFN widths, 2 layers, smaller vocabulary)
  // with weights made on the GPU: finite logits, greedy pick equals the argmax of the logits.
  ModelConfig c = tiny(false);
  c.n_layers = 2, c.n_embd = 4096, c.n_ff = 14336, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128;
  c.n_vocab = 32000, c.rope_theta = 500000.0f, c.tied_embeddings = false;
  auto gpu = make_cuda_synthetic_backend(c, 5);
  const auto toks = tokens(700, c.n_vocab, 4);
  auto seq = gpu->new_sequence(HeadPlan::uniform(2, 8, HeadKind::Retrieval), 1024);
  std::vector<float> logits(c.n_vocab);
  gpu->forward(*seq, toks.data(), 699, logits.data(), 256, false);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  auto seq2 = gpu->new_sequence(HeadPlan::uniform(2, 8, HeadKind::Retrieval), 1024);
  Sampler greedy(SamplerConfig{});
  const int32_t picked = gpu->forward_pick(*seq2, toks.data(), 699, 256, greedy);
  EXPECT_EQ(picked, Sampler::argmax(logits.data(), c.n_vocab));
  std::vector<float> stats(logits);
  double mean = 0, sq = 0;
  for (float x : stats) mean += x, sq += (double)x * x;
  mean /= c.n_vocab;
  std::printf("  synthetic 4096-wide logits: mean %.3f rms %.3f\n", mean, std::sqrt(sq / c.n_vocab));
  EXPECT_GT(std::sqrt(sq / c.n_vocab), 0.05) << "logits of random weights should not vanish";
}

// ---------------------------------------------------------------------------------------------
// The real models: prompts of the HF reference fixtures (tests/fixtures/models).

struct RealModel {
  const char* file;
  const char* fixture;
  Tolerance tol;
};

std::vector<std::vector<int32_t>> fixture_prompts(const std::string& fixture) {
  std::ifstream f(duo::test::fixture_path("models/" + fixture + ".json"));
  EXPECT_TRUE(f.good()) << fixture;
  const auto j = nlohmann::json::parse(f);
  std::vector<std::vector<int32_t>> out;
  for (const auto& p : j["prompts"]) out.push_back(p["ids"].get<std::vector<int32_t>>());
  return out;
}

// A duo plan with half the heads retrieval heads, from seeded random gates.
HeadPlan random_duo_plan(const ModelConfig& c, StreamingWindow w) {
  GateMatrix g;
  g.n_layers = c.n_layers, g.n_kv_heads = c.n_kv_heads;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0, 1);
  for (int i = 0; i < c.n_layers * c.n_kv_heads; ++i) g.values.push_back(u(rng));
  return make_head_plan(binarize_ratio(g, 0.5), c.n_layers, c.n_kv_heads, w, "random gates");
}

// Last-token logits of every fixture prompt, CPU vs GPU, for full / streaming / duo and
// chunked / unchunked pre-fill (streaming window small enough that the 1000-token prompt
// wraps the ring).
void check_real_model(const RealModel& rm) {
  const std::string path = duo::test::models_dir() + "/" + rm.file;
  const StreamingWindow w{16, 128};
  const auto prompts = fixture_prompts(rm.fixture);
  for (const std::string mode : {"full", "streaming", "duo"}) {
    auto m = Model::load(path);
    const ModelConfig& c = m->config();
    HeadPlan plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, w);
    if (mode == "streaming") plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, w);
    if (mode == "duo") plan = m->reorder_heads(random_duo_plan(c, w));
    ThreadPool pool(0);
    auto cpu = make_cpu_backend(*m, pool);
    auto gpu = make_cuda_backend(*m);
    const int V = c.n_vocab;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto& ids = prompts[i];
      const int64_t n = (int64_t)ids.size();
      std::vector<float> want(V), got(V);
      auto s = cpu->new_sequence(plan, n);
      cpu->forward(*s, ids.data(), n, want.data(), 512, false);
      for (int64_t chunk : {n, (int64_t)128}) {
        if (chunk == 128 && n <= 128) continue;
        auto g = gpu->new_sequence(plan, n);
        gpu->forward(*g, ids.data(), n, got.data(), chunk, false);
        expect_rows_close(got, want, V, rm.tol,
                          fmt::format("{} {} prompt {} ({} tokens) chunk {}", c.name.substr(0, 12), mode, i, n, chunk));
      }
    }
  }
}

TEST(CudaForwardReal, SmolLM2LogitsMatchCpu) {
  DUO_REQUIRE_MODEL(path, duo::test::kSmolLM2);
  check_real_model({duo::test::kSmolLM2, "smollm2", {0.05, 1.0}});
}

TEST(CudaForwardReal, QwenCoderLogitsMatchCpu) {
  DUO_REQUIRE_MODEL(path, duo::test::kQwenCoder);
  check_real_model({duo::test::kQwenCoder, "qwen2.5-coder-1.5b", {0.05, 1.0}});
}

// End to end: SmolLM2 greedy generation of 64 tokens on the GPU (token picked on the device)
// equals the CPU's wherever the CPU's path leaves room for bf16 rounding: for every prompt
// they must agree up to the first step whose top-1 / top-2 gap is below kGreedyMargin, and a
// prompt whose whole path stays above it must match all 64 tokens.
TEST(CudaForwardReal, SmolLM2GreedyGenerationMatchesCpu) {
  DUO_REQUIRE_MODEL(path, duo::test::kSmolLM2);
  constexpr double kGreedyMargin = 1.0;
  constexpr int kSteps = 64;
  auto m = Model::load(path);
  const ModelConfig& c = m->config();
  const HeadPlan plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval);
  ThreadPool pool(0);
  auto cpu = make_cpu_backend(*m, pool);
  auto gpu = make_cuda_backend(*m);
  const int V = c.n_vocab;
  int fully_checked = 0;
  for (const auto& prompt : fixture_prompts("smollm2")) {
    // CPU path and its gaps.
    std::vector<int32_t> cpu_path;
    std::vector<double> gaps;
    {
      auto s = cpu->new_sequence(plan, (int64_t)prompt.size() + kSteps);
      std::vector<float> row(V);
      cpu->forward(*s, prompt.data(), (int64_t)prompt.size(), row.data(), 512, false);
      for (int i = 0; i < kSteps; ++i) {
        const int32_t next = Sampler::argmax(row.data(), V);
        cpu_path.push_back(next);
        gaps.push_back(top_gap(row.data(), V));
        if (i + 1 < kSteps) cpu->forward(*s, &next, 1, row.data(), 512, false);
      }
    }
    // GPU path, tokens picked on the device.
    std::vector<int32_t> gpu_path;
    {
      auto s = gpu->new_sequence(plan, (int64_t)prompt.size() + kSteps);
      Sampler greedy(SamplerConfig{});
      int32_t next = gpu->forward_pick(*s, prompt.data(), (int64_t)prompt.size(), 512, greedy);
      for (int i = 0; i < kSteps; ++i) {
        gpu_path.push_back(next);
        if (i + 1 < kSteps) next = gpu->forward_pick(*s, &next, 1, 512, greedy);
      }
    }
    size_t must = 0;
    while (must < gaps.size() && gaps[must] >= kGreedyMargin) ++must;
    size_t same = 0;
    while (same < gpu_path.size() && gpu_path[same] == cpu_path[same]) ++same;
    const double min_gap = *std::min_element(gaps.begin(), gaps.end());
    std::printf("  prompt of %4zu tokens: CPU min gap %.3f, gap >= %.1f for the first %2zu steps, GPU agrees for %2zu/%d\n",
                prompt.size(), min_gap, kGreedyMargin, must, same, kSteps);
    EXPECT_GE(same, must) << "GPU greedy path left the CPU's at step " << same << " where the CPU gap was "
                          << gaps[std::min(same, gaps.size() - 1)];
    if (must == gaps.size()) {
      ++fully_checked;
      EXPECT_EQ(gpu_path, cpu_path);
    }
  }
  EXPECT_GE(fully_checked, 1) << "no prompt had a path with enough margin to require all 64 tokens";
}

}  // namespace
}  // namespace duo::cuda
