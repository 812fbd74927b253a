// Loading the reference implementation's published gate matrices, binarizing them, and the
// errors a user gets for malformed pattern files.
#include <gtest/gtest.h>

#include <cstdio>

#include "io/head_pattern.h"
#include "test_support.h"

namespace duo {
namespace {

TEST(HeadPattern, LoadsPublishedLlama31Pattern) {
  GateMatrix g = load_gates_tsv(test::fixture_path("patterns/Meta-Llama-3.1-8B-Instruct.tsv"));
  EXPECT_EQ(g.n_layers, 32);
  EXPECT_EQ(g.n_kv_heads, 8);
  EXPECT_FLOAT_EQ(g.at(0, 0), 0.60546875f);
  EXPECT_FLOAT_EQ(g.at(0, 2), 0.96875f);
  EXPECT_FLOAT_EQ(g.at(1, 3), 1.0f);
  for (double r : {0.0, 0.25, 0.5, 1.0}) {
    auto k = binarize_ratio(g, r);
    EXPECT_DOUBLE_EQ(retrieval_fraction(k), r);
    // Every retrieval head's gate is >= every streaming head's gate.
    float min_ret = 2.0f, max_str = -1.0f;
    for (int l = 0; l < 32; ++l)
      for (int h = 0; h < 8; ++h) {
        if (k[l][h] == HeadKind::Retrieval)
          min_ret = std::min(min_ret, g.at(l, h));
        else
          max_str = std::max(max_str, g.at(l, h));
      }
    if (r > 0.0 && r < 1.0) {
      EXPECT_GE(min_ret, max_str);
    }
  }
  auto t = binarize_threshold(g, 0.5f);
  EXPECT_EQ(t[0][0], HeadKind::Retrieval);   // 0.605
  EXPECT_EQ(t[0][1], HeadKind::Streaming);   // 0.0
  EXPECT_EQ(t[0][4], HeadKind::Streaming);   // 0.0249
}

TEST(HeadPattern, LoadsMhaPatternAndChecksModelShape) {
  GateMatrix g = load_gates_tsv(test::fixture_path("patterns/Llama-2-7B-32K-Instruct.tsv"));
  EXPECT_EQ(g.n_layers, 32);
  EXPECT_EQ(g.n_kv_heads, 32);
  auto k = binarize_ratio(g, 0.25);
  EXPECT_NO_THROW(make_head_plan(k, 32, 32, {64, 256}, "p.tsv"));
  try {
    make_head_plan(k, 30, 3, {64, 256}, "p.tsv");
    FAIL() << "shape mismatch accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("32 layers x 32 KV heads but the model has 30 layers x 3"), std::string::npos)
        << e.what();
  }
}

TEST(HeadPattern, RoundTripsThroughSave) {
  GateMatrix g = parse_gates_tsv("0.25\t1\n0\t0.125\n0.5\t0.75\n");
  const std::string path = ::testing::TempDir() + "/duo_pattern_roundtrip.tsv";
  save_gates_tsv(g, path);
  GateMatrix r = load_gates_tsv(path);
  EXPECT_EQ(r.n_layers, 3);
  EXPECT_EQ(r.n_kv_heads, 2);
  EXPECT_EQ(r.values, g.values);
  std::remove(path.c_str());
}

void expect_error(const std::string& text, const std::string& fragment) {
  try {
    parse_gates_tsv(text, "bad.tsv");
    FAIL() << "accepted: " << text;
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(HeadPattern, MalformedFilesGiveClearErrors) {
  expect_error("", "no gate values");
  expect_error("0.5\t0.5\n0.5\n", "bad.tsv:2: 1 columns, but the first row has 2");
  expect_error("0.5\tabc\n", "bad.tsv:1: column 2: 'abc' is not a number");
  expect_error("0.5\t1.5\n", "outside [0, 1]");
  expect_error("0.5\t-0.1\n", "outside [0, 1]");
  EXPECT_EQ(parse_gates_tsv("-0.0014\t1.0005\n").values, (std::vector<float>{0.0f, 1.0f}));  // clamped
  expect_error("nan\t0\n", "outside [0, 1]");
  expect_error("0.5\t\t0.2\n", "column 2 is empty");
  EXPECT_THROW(load_gates_tsv("/nonexistent/pattern.tsv"), std::runtime_error);
  EXPECT_THROW(binarize_ratio(parse_gates_tsv("0.5\n"), 1.5), std::runtime_error);
}

}  // namespace
}  // namespace duo
