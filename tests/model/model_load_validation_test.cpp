// Model loading refuses what the engine would later rely on and trip over: a vocabulary that
// does not match the embedding rows, BYTE tokens that do not spell a byte, 64-bit counts beyond
// int, non-finite hyper-parameters and norm weights. Each case is a tiny GGUF (one llama layer,
// F32 weights) built in memory and written to a temporary file, with one thing broken.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "../tokenizer/gguf_builder.h"
#include "core/error.h"
#include "io/gguf.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

constexpr int kEmbd = 8, kFf = 16, kHeads = 2, kKvHeads = 1, kHeadDim = kEmbd / kHeads;

struct Knobs {
  int64_t embd_rows = 6;  // token_embd.weight rows (the model's n_vocab)
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "<0x41>", "\xE2\x96\x81" "a", "b"};
  std::vector<int32_t> types = {2, 3, 3, 6, 1, 1};
  bool output = false;      // an untied output.weight
  int64_t output_rows = 6;
  std::vector<float> norm = {1.0f};  // values of output_norm.weight
  std::vector<float> ffn_up = {0.01f, -0.02f, 0.03f};  // values of blk.0.ffn_up.weight (repeated)
  // Hyper-parameters written with the builder; each test may replace one.
  std::function<void(test::GgufBuilder&)> block_count = [](test::GgufBuilder& b) { b.u32("llama.block_count", 1); };
  std::function<void(test::GgufBuilder&)> context = [](test::GgufBuilder& b) { b.u32("llama.context_length", 256); };
  std::function<void(test::GgufBuilder&)> eps = [](test::GgufBuilder& b) {
    b.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  };
  std::function<void(test::GgufBuilder&)> freq_base = [](test::GgufBuilder& b) { b.f32("llama.rope.freq_base", 1e4f); };
};

std::vector<uint8_t> tiny_gguf(const Knobs& k) {
  test::GgufBuilder b;
  b.str("general.architecture", "llama");
  k.block_count(b);
  k.context(b);
  b.u32("llama.embedding_length", kEmbd)
      .u32("llama.feed_forward_length", kFf)
      .u32("llama.attention.head_count", kHeads)
      .u32("llama.attention.head_count_kv", kKvHeads);
  k.eps(b);
  k.freq_base(b);
  std::vector<float> scores(k.tokens.size(), 0.0f);
  b.str("tokenizer.ggml.model", "llama")
      .strs("tokenizer.ggml.tokens", k.tokens)
      .i32s("tokenizer.ggml.token_type", k.types)
      .f32s("tokenizer.ggml.scores", scores)
      .u32("tokenizer.ggml.bos_token_id", 1)
      .u32("tokenizer.ggml.eos_token_id", 2);
  const std::vector<float> w = {0.01f, -0.02f, 0.03f};
  b.tensor_f32("token_embd.weight", {kEmbd, k.embd_rows}, w);
  if (k.output) b.tensor_f32("output.weight", {kEmbd, k.output_rows}, w);
  b.tensor_f32("output_norm.weight", {kEmbd}, k.norm)
      .tensor_f32("blk.0.attn_norm.weight", {kEmbd}, {1.0f})
      .tensor_f32("blk.0.ffn_norm.weight", {kEmbd}, {1.0f})
      .tensor_f32("blk.0.attn_q.weight", {kEmbd, kHeads * kHeadDim}, w)
      .tensor_f32("blk.0.attn_k.weight", {kEmbd, kKvHeads * kHeadDim}, w)
      .tensor_f32("blk.0.attn_v.weight", {kEmbd, kKvHeads * kHeadDim}, w)
      .tensor_f32("blk.0.attn_output.weight", {kHeads * kHeadDim, kEmbd}, w)
      .tensor_f32("blk.0.ffn_gate.weight", {kEmbd, kFf}, w)
      .tensor_f32("blk.0.ffn_up.weight", {kEmbd, kFf}, k.ffn_up)
      .tensor_f32("blk.0.ffn_down.weight", {kFf, kEmbd}, w);
  return b.bytes();
}

class ModelLoadValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("duo_model_load_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const Knobs& k, const std::string& name = "m.gguf") {
    const std::vector<uint8_t> b = tiny_gguf(k);
    const std::string path = (dir_ / name).string();
    std::ofstream o(path, std::ios::binary);
    o.write(reinterpret_cast<const char*>(b.data()), (std::streamsize)b.size());
    return path;
  }
  // Model and tokenizer load as the engine loads them.
  void load(const Knobs& k) {
    auto m = Model::load(write(k));
    auto tok = Tokenizer::from_gguf(m->gguf());
    (void)tok;
  }
  // Loading throws duo::Error (no other type) whose message contains every one of `parts`.
  void expect_refused(const Knobs& k, const std::vector<std::string>& parts) {
    try {
      load(k);
      ADD_FAILURE() << "loaded; expected an error containing: " << parts[0];
    } catch (const Error& e) {
      const std::string msg = e.what();
      for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "threw a " << typeid(e).name() << " (not duo::Error): " << e.what();
    }
  }
  std::filesystem::path dir_;
};

TEST_F(ModelLoadValidation, TheTinyModelLoadsAndRuns) {
  Knobs k;
  auto m = Model::load(write(k));
  auto tok = Tokenizer::from_gguf(m->gguf());
  EXPECT_EQ(m->config().n_vocab, 6);
  EXPECT_EQ(tok->n_vocab(), 6);
  EXPECT_EQ(tok->token_to_piece(3), "A");  // the BYTE token <0x41>
  k.output = true;
  EXPECT_NO_THROW(load(k));
}

// A vocabulary smaller than the embedding: a greedy pick of a row past it used to fail only at
// generation time (on the server's scheduler thread).
TEST_F(ModelLoadValidation, VocabularyMustMatchEmbeddingRows) {
  Knobs k;
  k.embd_rows = 9;
  k.output = true, k.output_rows = 9;
  expect_refused(k, {"the vocabulary has 6 tokens but token_embd.weight has 9 rows"});
  k = Knobs();
  k.embd_rows = 4;
  expect_refused(k, {"the vocabulary has 6 tokens but token_embd.weight has 4 rows"});
  k = Knobs();
  k.output = true, k.output_rows = 9;
  expect_refused(k, {"output.weight", "expected [8, 6]"});
}

TEST_F(ModelLoadValidation, ByteTokensMustSpellAByte) {
  for (const char* bad : {"<0xZZ>", "<0x4>", "abcdef", "<0x41"}) {
    Knobs k;
    k.tokens[3] = bad;
    expect_refused(k, {"token 3 is of type BYTE", "<0xHH>"});
  }
  Knobs k;
  k.types[4] = 99;
  expect_refused(k, {"token 4 has token type 99"});
}

// 64-bit values that used to be cast to int: 2^32 + 1 layers became 1.
TEST_F(ModelLoadValidation, CountsBeyondIntAreRefused) {
  Knobs k;
  k.block_count = [](test::GgufBuilder& b) { b.u64("llama.block_count", (1ull << 32) + 1); };
  expect_refused(k, {"llama.block_count = 4294967297 is out of range"});
  k = Knobs();
  k.context = [](test::GgufBuilder& b) { b.u64("llama.context_length", (1ull << 32) + 256); };
  expect_refused(k, {"llama.context_length = 4294967552 is out of range"});
  k = Knobs();
  k.context = [](test::GgufBuilder& b) { b.u32("llama.context_length", 0); };
  expect_refused(k, {"llama.context_length = 0 is out of range"});
}

TEST_F(ModelLoadValidation, HyperParametersMustBeFinite) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (double v : {nan, inf, -1e-5, 0.0}) {
    Knobs k;
    k.eps = [v](test::GgufBuilder& b) { b.f64("llama.attention.layer_norm_rms_epsilon", v); };
    expect_refused(k, {"llama.attention.layer_norm_rms_epsilon", "is not a finite number"});
  }
  for (double v : {nan, inf, -1e4, 1e300}) {
    Knobs k;
    k.freq_base = [v](test::GgufBuilder& b) { b.f64("llama.rope.freq_base", v); };
    expect_refused(k, {"llama.rope.freq_base", "is not a finite number"});
  }
  Knobs k;
  k.norm = {1.0f, std::numeric_limits<float>::quiet_NaN()};
  expect_refused(k, {"output_norm.weight", "non-finite value", "index 1"});
}

TEST_F(ModelLoadValidation, SmallAlignmentIsRefused) {
  // Tensor data laid out at alignment 4 and saying so.
  test::GgufBuilder g;
  g.u32("general.alignment", 4).str("general.architecture", "llama").layout_alignment(4);
  g.tensor_f32("token_embd.weight", {kEmbd, 6});
  const std::vector<uint8_t> bytes = g.bytes();
  try {
    GgufFile::from_memory(bytes.data(), bytes.size());
    ADD_FAILURE() << "alignment 4 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("general.alignment 4 is less than 8"), std::string::npos) << e.what();
  }
}

// RoPE scaling that the engine does not implement (YaRN) is refused, not ignored: ignoring it
// would run the model at the wrong frequencies without any error. Linear scaling (Llama-2-7B-32K)
// is implemented: its factor divides every inverse frequency. Llama-3.1's scaling comes as
// rope_freqs.weight instead (tests/model/tiny_reference_test.cpp).
TEST_F(ModelLoadValidation, UnsupportedRopeScalingIsRefused) {
  Knobs yarn;
  yarn.freq_base = [](test::GgufBuilder& b) {
    b.f32("llama.rope.freq_base", 1e4f).str("llama.rope.scaling.type", "yarn").f32("llama.rope.scaling.factor", 4.0f);
  };
  expect_refused(yarn, {"RoPE scaling 'yarn' is not supported"});
  Knobs none;
  none.freq_base = [](test::GgufBuilder& b) { b.f32("llama.rope.freq_base", 1e4f).str("llama.rope.scaling.type", "none"); };
  EXPECT_NO_THROW(load(none));
  const auto plain = Model::load(write(none, "plain.gguf"));
  Knobs linear;
  linear.freq_base = [](test::GgufBuilder& b) {
    b.f32("llama.rope.freq_base", 1e4f).str("llama.rope.scaling.type", "linear").f32("llama.rope.scaling.factor", 4.0f);
  };
  EXPECT_NO_THROW(load(linear));
  const auto scaled = Model::load(write(linear, "linear.gguf"));
  EXPECT_EQ(scaled->config().rope_linear_factor, 4.0f);
  const auto a = plain->rope_inv_freq(), b = scaled->rope_inv_freq();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_FLOAT_EQ(b[i], a[i] / 4.0f) << i;
}

// `-m` naming a FIFO: refused at once instead of waiting for a writer forever.
TEST_F(ModelLoadValidation, FifoIsRefused) {
  const std::string fifo = (dir_ / "fifo.gguf").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  try {
    Model::load(fifo);
    ADD_FAILURE() << "a FIFO loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace duo

namespace duo {
namespace {

// A NaN or infinite matrix weight is refused at load, naming the tensor and the element (the
// scan reads every value of plain float tensors).
TEST_F(ModelLoadValidation, NonFiniteMatrixWeightsAreRefused) {
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    Knobs k;
    k.ffn_up.assign(kEmbd * kFf, 0.01f);
    k.ffn_up[37] = bad;
    expect_refused(k, {"blk.0.ffn_up.weight", "non-finite", "element 37"});
  }
}

}  // namespace
}  // namespace duo
