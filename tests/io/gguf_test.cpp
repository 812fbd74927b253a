// GGUF reader: round trips of every value type, tensor directory and data, and a clear
// duo::Error (never a crash) for every kind of corrupt input, including truncation at every
// byte of a small file.
#include "io/gguf.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <algorithm>
#include <fstream>

#include "core/error.h"
#include "gguf_writer.h"
#include "test_support.h"

namespace duo {
namespace {

using test::GgufWriter;

GgufWriter small_model(uint32_t version = 3) {
  GgufWriter w(version);
  w.kv_str("general.architecture", "llama");
  w.kv_u32("llama.block_count", 2);
  w.kv_f32("llama.rope.freq_base", 10000.0f);
  w.kv_bool("tokenizer.ggml.add_bos_token", true);
  w.kv_str_array("tokenizer.ggml.tokens", {"<s>", "a", "b", "ab"});
  w.kv_i32_array("tokenizer.ggml.token_type", {3, 1, 1, 1});
  w.kv_f32_array("tokenizer.ggml.scores", {0.0f, -1.0f, -1.0f, -0.5f});
  w.kv_u64("u64", 1ull << 40);
  w.kv_i64("i64", -5);
  w.kv_f64("f64", 2.5);
  w.kv_u8("u8", 200);
  w.kv_i16("i16", -300);
  std::vector<uint8_t> f32(4 * 8);
  for (int i = 0; i < 8; ++i) {
    const float v = (float)i;
    std::memcpy(f32.data() + 4 * i, &v, 4);
  }
  w.tensor("norm.weight", 0, {8}, f32);
  w.tensor("q8.weight", 8, {32, 2}, std::vector<uint8_t>(68, 1));  // 2 rows of one Q8_0 block
  return w;
}

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    GgufFile::from_memory(bytes.data(), bytes.size());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Gguf, RoundTripsMetadataAndTensors) {
  for (uint32_t version : {2u, 3u}) {
    const auto bytes = small_model(version).build();
    auto f = GgufFile::from_memory(bytes.data(), bytes.size());
    EXPECT_EQ(f->version(), version);
    EXPECT_EQ(f->get_string("general.architecture"), "llama");
    EXPECT_EQ(f->get_int("llama.block_count"), 2);
    EXPECT_EQ(f->get_float("llama.rope.freq_base"), 10000.0);
    EXPECT_EQ(f->get_float("llama.block_count"), 2.0);  // integers read as floats
    EXPECT_TRUE(f->get_bool("tokenizer.ggml.add_bos_token"));
    EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"<s>", "a", "b", "ab"}));
    EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{3, 1, 1, 1}));
    EXPECT_EQ(f->get_float_array("tokenizer.ggml.scores")[3], -0.5f);
    EXPECT_EQ(f->get_int("u64"), 1ll << 40);
    EXPECT_EQ(f->get_int("i64"), -5);
    EXPECT_EQ(f->get_float("f64"), 2.5);
    EXPECT_EQ(f->get_int("u8"), 200);
    EXPECT_EQ(f->get_int("i16"), -300);
    EXPECT_FALSE(f->opt_string("missing").has_value());
    ASSERT_EQ(f->tensors().size(), 2u);
    const auto& n = f->tensor("norm.weight");
    EXPECT_EQ(n.type, GgmlType::F32);
    EXPECT_EQ(n.nbytes, 32u);
    float v5;
    std::memcpy(&v5, f->tensor_data(n) + 20, 4);
    EXPECT_EQ(v5, 5.0f);
    const auto& q = f->tensor("q8.weight");
    EXPECT_EQ(q.rows(), 2);
    EXPECT_EQ(q.cols(), 32);
    EXPECT_EQ(q.nbytes, 68u);
    EXPECT_EQ((f->tensor_data(q) - f->tensor_data(n)) % 32, 0);  // aligned
    EXPECT_EQ(f->find_tensor("nope"), nullptr);
  }
}

TEST(Gguf, TypeMismatchAndMissingKeysNameTheKey) {
  const auto bytes = small_model().build();
  auto f = GgufFile::from_memory(bytes.data(), bytes.size());
  try {
    f->get_int("general.architecture");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'general.architecture' holds a string, expected an integer"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(f->get_string("missing.key"), Error);
  EXPECT_THROW(f->tensor("missing.tensor"), Error);
  EXPECT_THROW(f->get_string_array("llama.block_count"), Error);
}

TEST(Gguf, TruncationAtEveryByteIsAnError) {
  const auto bytes = small_model().build();
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + n);
    EXPECT_NE(error_of(cut), "") << "truncated to " << n << " of " << bytes.size() << " bytes was accepted";
  }
}

TEST(Gguf, CorruptHeadersGiveClearErrors) {
  auto bytes = small_model().build();
  auto with = [&](size_t off, const void* v, size_t n) {
    auto b = bytes;
    std::memcpy(b.data() + off, v, n);
    return error_of(b);
  };
  const uint32_t bad_magic = 0x46554748, v1 = 1, v4 = 4;
  EXPECT_NE(with(0, &bad_magic, 4).find("not a GGUF file"), std::string::npos);
  EXPECT_NE(with(4, &v1, 4).find("unsupported GGUF version 1"), std::string::npos);
  EXPECT_NE(with(4, &v4, 4).find("unsupported GGUF version 4"), std::string::npos);
  const uint64_t huge = 1ull << 60;
  EXPECT_NE(with(8, &huge, 8).find("tensor count"), std::string::npos);
  EXPECT_NE(with(16, &huge, 8).find("metadata count"), std::string::npos);
  // First key's length (offset 24) absurd.
  EXPECT_NE(with(24, &huge, 8).find("truncated"), std::string::npos);
}

TEST(Gguf, BadTensorsAndValuesGiveClearErrors) {
  auto expect_error = [](GgufWriter w, const std::string& fragment) {
    const auto bytes = w.build();
    const std::string e = error_of(bytes);
    EXPECT_NE(e.find(fragment), std::string::npos) << "expected '" << fragment << "', got '" << e << "'";
  };
  {
    GgufWriter w;
    w.tensor("t", 77, {32}, std::vector<uint8_t>(128));
    expect_error(w, "tensor 't' has unknown type id 77");
  }
  {
    GgufWriter w;
    w.tensor("t", 8, {33}, std::vector<uint8_t>(68));
    expect_error(w, "not a multiple of the Q8_0 block size");
  }
  {
    GgufWriter w;
    w.tensor("t", 0, {0}, {});
    expect_error(w, "dimension 0 is 0");
  }
  {
    GgufWriter w;
    w.tensor("t", 0, {1, 2, 3, 4, 5}, std::vector<uint8_t>(480));
    expect_error(w, "5 dimensions");
  }
  {
    GgufWriter w;
    w.tensor("t", 0, {16}, std::vector<uint8_t>(64));
    w.tensor("t", 0, {16}, std::vector<uint8_t>(64));
    expect_error(w, "duplicate tensor name 't'");
  }
  {
    GgufWriter w;
    w.kv_u32("k", 1);
    w.kv_u32("k", 2);
    expect_error(w, "duplicate metadata key 'k'");
  }
  {
    GgufWriter w;
    w.kv_u32("general.alignment", 24);
    expect_error(w, "not a power of two");
  }
  {
    // Tensor data shorter than the tensor: the file ends early.
    GgufWriter w;
    w.tensor("big", 0, {1024}, std::vector<uint8_t>(100));
    expect_error(w, "tensor 'big'");
  }
  {
    // Overflowing element count.
    GgufWriter w;
    w.tensor("t", 0, {1ll << 40, 1ll << 40}, std::vector<uint8_t>(4));
    expect_error(w, "absurd number of elements");
  }
}

TEST(Gguf, MisalignedOffsetAndAbsurdArrayAreErrors) {
  auto bytes = small_model().build();
  // Find the first tensor's offset field: it follows "norm.weight", n_dims, dims and type.
  const std::string name = "norm.weight";
  auto it = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
  ASSERT_NE(it, bytes.end());
  const size_t off_field = (it - bytes.begin()) + name.size() + 4 + 8 + 4;
  auto b = bytes;
  const uint64_t misaligned = 3;
  std::memcpy(b.data() + off_field, &misaligned, 8);
  EXPECT_NE(error_of(b).find("not aligned"), std::string::npos) << error_of(b);
  // Array length of the token list set to 2^58.
  const std::string key = "tokenizer.ggml.tokens";
  auto k = std::search(bytes.begin(), bytes.end(), key.begin(), key.end());
  const size_t count_field = (k - bytes.begin()) + key.size() + 4 + 4;
  b = bytes;
  const uint64_t huge = 1ull << 58;
  std::memcpy(b.data() + count_field, &huge, 8);
  EXPECT_NE(error_of(b).find("cannot fit"), std::string::npos) << error_of(b);
}

TEST(Gguf, FileErrors) {
  EXPECT_THROW(GgufFile::open("/nonexistent/model.gguf"), Error);
  EXPECT_THROW(GgufFile::open("/tmp"), Error);
  const std::string empty = ::testing::TempDir() + "/duo_empty.gguf";
  std::ofstream(empty).close();
  EXPECT_THROW(GgufFile::open(empty), Error);
  std::remove(empty.c_str());
}

TEST(Gguf, RealModels) {
  DUO_REQUIRE_MODEL(smol, test::kSmolLM2);
  auto s = GgufFile::open(smol);
  EXPECT_EQ(s->get_string("general.architecture"), "llama");
  EXPECT_EQ(s->get_int("llama.block_count"), 30);
  EXPECT_EQ(s->tensors().size(), 272u);
  const auto& e = s->tensor("token_embd.weight");
  EXPECT_EQ(e.type, GgmlType::Q8_0);
  EXPECT_EQ(e.dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(s->get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  DUO_REQUIRE_MODEL(qwen, test::kQwenCoder);
  auto q = GgufFile::open(qwen);
  EXPECT_EQ(q->get_string("general.architecture"), "qwen2");
  EXPECT_EQ(q->tensors().size(), 339u);
  EXPECT_EQ(q->tensor("output.weight").type, GgmlType::Q6_K);
  EXPECT_EQ(q->tensor("output.weight").dims, (std::vector<int64_t>{1536, 151936}));
  EXPECT_EQ(q->get_float("qwen2.rope.freq_base"), 1e6);
  EXPECT_EQ(q->get_string_array("tokenizer.ggml.tokens").size(), 151936u);
}

}  // namespace
}  // namespace duo
