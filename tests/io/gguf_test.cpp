// GGUF reader tests. A tiny GGUF writer below builds valid (and deliberately broken) files in
// memory, so every error path is exercised without fixtures; real models are checked when fetched.
#include "io/gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "core/error.h"
#include "test_support.h"

namespace duo {
namespace {

using Bytes = std::vector<uint8_t>;

// ---- A minimal GGUF writer --------------------------------------------------------------------

struct Buf {
  Bytes b;
  template <typename T>
  Buf& put(T v) {
    const size_t n = b.size();
    b.resize(n + sizeof(T));
    std::memcpy(b.data() + n, &v, sizeof(T));
    return *this;
  }
  Buf& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Buf& raw(const Bytes& o) {
    b.insert(b.end(), o.begin(), o.end());
    return *this;
  }
};

// Value payloads (type id + bytes), usable as metadata values or array elements.
struct Val {
  uint32_t type;
  Bytes bytes;
};
template <typename T>
Val scalar(uint32_t type, T v) {
  Buf b;
  b.put<T>(v);
  return {type, b.b};
}
Val u8(uint8_t v) { return scalar(0, v); }
Val i8(int8_t v) { return scalar(1, v); }
Val u16(uint16_t v) { return scalar(2, v); }
Val i16(int16_t v) { return scalar(3, v); }
Val u32(uint32_t v) { return scalar(4, v); }
Val i32(int32_t v) { return scalar(5, v); }
Val f32(float v) { return scalar(6, v); }
Val boolean(bool v) { return scalar<uint8_t>(7, v ? 1 : 0); }
Val str(const std::string& s) {
  Buf b;
  b.str(s);
  return {8, b.b};
}
Val u64(uint64_t v) { return scalar(10, v); }
Val i64(int64_t v) { return scalar(11, v); }
Val f64(double v) { return scalar(12, v); }
// Array of elements that all have type `elem` (only the payload bytes of each are written).
Val array(uint32_t elem, const std::vector<Val>& items) {
  Buf b;
  b.put<uint32_t>(elem).put<uint64_t>(items.size());
  for (const Val& v : items) b.raw(v.bytes);
  return {9, b.b};
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> dims;
  uint32_t type = 0;               // raw GGUF type id
  int64_t offset = -1;             // -1: next aligned offset
  uint64_t nbytes = 0;             // data bytes written for it (0: computed from the shape)
  std::vector<uint64_t> raw_dims;  // when set, written instead of dims (for n_dims tests)
  bool raw_dims_set = false;
};

struct GgufBuilder {
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  uint64_t alignment = 32;  // used for layout; write general.alignment yourself to change the reader's
  std::vector<std::pair<std::string, Val>> kv;
  std::vector<TensorSpec> tensors;
  std::optional<uint64_t> n_kv_override, n_tensors_override;

  GgufBuilder& add(const std::string& key, Val v) {
    kv.emplace_back(key, std::move(v));
    return *this;
  }
  GgufBuilder& tensor(const std::string& name, std::vector<int64_t> dims, uint32_t type, int64_t offset = -1) {
    TensorSpec t;
    t.name = name;
    t.dims = std::move(dims);
    t.type = type;
    t.offset = offset;
    tensors.push_back(std::move(t));
    return *this;
  }

  static uint64_t bytes_of(const TensorSpec& t) {
    if (t.nbytes) return t.nbytes;
    const TypeTraits* tt = type_traits(t.type);
    uint64_t n = 1;
    for (int64_t d : t.dims) n *= static_cast<uint64_t>(d);
    return tt ? n / tt->block_elems * tt->block_bytes : n;
  }

  // Data of tensor i is filled with bytes (i * 37 + j) & 0xff so tests can check the pointers.
  static uint8_t pattern(size_t i, size_t j) { return static_cast<uint8_t>(i * 37 + j * 7 + 1); }

  Bytes build() const {
    Buf b;
    b.put<uint32_t>(magic).put<uint32_t>(version);
    b.put<uint64_t>(n_tensors_override.value_or(tensors.size()));
    b.put<uint64_t>(n_kv_override.value_or(kv.size()));
    for (const auto& [k, v] : kv) {
      b.str(k).put<uint32_t>(v.type);
      b.raw(v.bytes);
    }
    // Lay out the data section: each tensor at the next aligned offset unless given.
    std::vector<uint64_t> offsets;
    uint64_t end = 0;
    for (const TensorSpec& t : tensors) {
      const uint64_t off =
          t.offset >= 0 ? static_cast<uint64_t>(t.offset) : (end + alignment - 1) / alignment * alignment;
      offsets.push_back(off);
      end = std::max(end, off + bytes_of(t));
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorSpec& t = tensors[i];
      b.str(t.name);
      if (t.raw_dims_set) {
        b.put<uint32_t>(t.raw_dims.size());
        for (uint64_t d : t.raw_dims) b.put<uint64_t>(d);
      } else {
        b.put<uint32_t>(t.dims.size());
        for (int64_t d : t.dims) b.put<int64_t>(d);
      }
      b.put<uint32_t>(t.type).put<uint64_t>(offsets[i]);
    }
    if (tensors.empty()) return b.b;
    while (b.b.size() % alignment) b.b.push_back(0);
    const size_t base = b.b.size();
    b.b.resize(base + end, 0);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const uint64_t n = bytes_of(tensors[i]);
      if (offsets[i] + n > end) continue;
      for (uint64_t j = 0; j < n; ++j) b.b[base + offsets[i] + j] = pattern(i, j);
    }
    return b.b;
  }
};

std::unique_ptr<GgufFile> parse(const Bytes& b) { return GgufFile::from_memory(b.data(), b.size()); }

// Parsing must throw duo::Error whose message contains every one of `parts`.
void expect_error(const Bytes& b, const std::vector<std::string>& parts) {
  try {
    parse(b);
    ADD_FAILURE() << "parsed without error; expected: " << parts[0];
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

template <typename F>
void expect_throw_msg(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected: " << parts[0];
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

// A small valid file with a bit of everything: the base of the error tests.
GgufBuilder small_model(uint32_t version = 3) {
  GgufBuilder g;
  g.version = version;
  g.add("general.architecture", str("llama"))
      .add("llama.block_count", u32(2))
      .add("llama.rope.freq_base", f32(10000.0f))
      .add("tokenizer.ggml.tokens", array(8, {str("<s>"), str("a"), str("bc")}))
      .add("tokenizer.ggml.scores", array(6, {f32(0.f), f32(-1.f), f32(-2.f)}));
  g.tensor("token_embd.weight", {32, 3}, 8)   // Q8_0
      .tensor("norm.weight", {4}, 0)          // F32
      .tensor("blk.0.ffn.weight", {256, 1}, 12);  // Q4_K
  return g;
}

// ---- Round trips ------------------------------------------------------------------------------

TEST(GgufRoundTrip, EveryValueType) {
  GgufBuilder g;
  g.add("u8", u8(200))
      .add("i8", i8(-100))
      .add("u16", u16(60000))
      .add("i16", i16(-30000))
      .add("u32", u32(4000000000u))
      .add("i32", i32(-2000000000))
      .add("f32", f32(1.5f))
      .add("bool_t", boolean(true))
      .add("bool_f", boolean(false))
      .add("str", str("hello \xe2\x82\xac"))
      .add("empty_str", str(""))
      .add("u64", u64(std::numeric_limits<uint64_t>::max()))
      .add("i64", i64(std::numeric_limits<int64_t>::min()))
      .add("f64", f64(-2.25e300));
  auto f = parse(g.build());
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->metadata().size(), 14u);
  EXPECT_EQ(f->get_int("u8"), 200);
  EXPECT_EQ(f->get_int("i8"), -100);
  EXPECT_EQ(f->get_int("u16"), 60000);
  EXPECT_EQ(f->get_int("i16"), -30000);
  EXPECT_EQ(f->get_int("u32"), 4000000000LL);
  EXPECT_EQ(f->get_int("i32"), -2000000000);
  EXPECT_EQ(f->get_float("f32"), 1.5);
  EXPECT_TRUE(f->get_bool("bool_t"));
  EXPECT_FALSE(f->get_bool("bool_f"));
  EXPECT_EQ(f->get_string("str"), "hello \xe2\x82\xac");
  EXPECT_EQ(f->get_string("empty_str"), "");
  EXPECT_EQ(std::get<uint64_t>(*f->find("u64")), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f->get_int("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f->get_float("f64"), -2.25e300);
  // get_float accepts integers; get_int accepts uint64 that fits.
  EXPECT_EQ(f->get_float("u16"), 60000.0);
  EXPECT_EQ(f->get_float("i64"), static_cast<double>(std::numeric_limits<int64_t>::min()));
  EXPECT_TRUE(f->tensors().empty());
}

TEST(GgufRoundTrip, Arrays) {
  GgufBuilder g;
  g.add("a_u8", array(0, {u8(1), u8(255)}))
      .add("a_i8", array(1, {i8(-1), i8(2)}))
      .add("a_u16", array(2, {u16(65535)}))
      .add("a_i16", array(3, {i16(-5)}))
      .add("a_u32", array(4, {u32(7), u32(8), u32(9)}))
      .add("a_i32", array(5, {i32(-7), i32(0)}))
      .add("a_f32", array(6, {f32(0.5f), f32(-0.25f)}))
      .add("a_bool", array(7, {boolean(true), boolean(false)}))
      .add("a_str", array(8, {str("x"), str(""), str("yz")}))
      .add("a_u64", array(10, {u64(1ull << 40)}))
      .add("a_i64", array(11, {i64(-(1ll << 40))}))
      .add("a_f64", array(12, {f64(3.25)}))
      .add("a_empty", array(5, {}))
      .add("a_nested", array(9, {array(5, {i32(1), i32(2)}), array(5, {}), array(5, {i32(3)})}))
      .add("a_nested_str", array(9, {array(8, {str("p"), str("q")})}))
      .add("a_deep", array(9, {array(9, {array(9, {array(0, {u8(42)})})})}));  // 4 levels: allowed
  auto f = parse(g.build());
  EXPECT_EQ(f->get_int_array("a_u8"), (std::vector<int64_t>{1, 255}));
  EXPECT_EQ(f->get_int_array("a_i8"), (std::vector<int64_t>{-1, 2}));
  EXPECT_EQ(f->get_int_array("a_u16"), (std::vector<int64_t>{65535}));
  EXPECT_EQ(f->get_int_array("a_i16"), (std::vector<int64_t>{-5}));
  EXPECT_EQ(f->get_int_array("a_u32"), (std::vector<int64_t>{7, 8, 9}));
  EXPECT_EQ(f->get_int_array("a_i32"), (std::vector<int64_t>{-7, 0}));
  EXPECT_EQ(f->get_float_array("a_f32"), (std::vector<float>{0.5f, -0.25f}));
  EXPECT_EQ(f->get_float_array("a_i32"), (std::vector<float>{-7.f, 0.f}));
  const auto& ab = std::get<std::shared_ptr<GgufArray>>(*f->find("a_bool"));
  EXPECT_EQ(ab->elem_type, GgufValueType::BOOL);
  EXPECT_EQ(std::get<bool>(ab->items[0]), true);
  EXPECT_EQ(std::get<bool>(ab->items[1]), false);
  EXPECT_EQ(f->get_string_array("a_str"), (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(f->get_int_array("a_u64"), (std::vector<int64_t>{1ll << 40}));
  EXPECT_EQ(f->get_int_array("a_i64"), (std::vector<int64_t>{-(1ll << 40)}));
  EXPECT_EQ(f->get_float_array("a_f64"), (std::vector<float>{3.25f}));
  EXPECT_TRUE(f->get_int_array("a_empty").empty());
  const auto& nested = std::get<std::shared_ptr<GgufArray>>(*f->find("a_nested"));
  ASSERT_EQ(nested->elem_type, GgufValueType::ARRAY);
  ASSERT_EQ(nested->items.size(), 3u);
  const auto& n0 = std::get<std::shared_ptr<GgufArray>>(nested->items[0]);
  EXPECT_EQ(n0->elem_type, GgufValueType::INT32);
  ASSERT_EQ(n0->items.size(), 2u);
  EXPECT_EQ(std::get<int64_t>(n0->items[1]), 2);
  EXPECT_TRUE(std::get<std::shared_ptr<GgufArray>>(nested->items[1])->items.empty());
  const auto& ns = std::get<std::shared_ptr<GgufArray>>(*f->find("a_nested_str"));
  EXPECT_EQ(std::get<std::string>(std::get<std::shared_ptr<GgufArray>>(ns->items[0])->items[1]), "q");
  EXPECT_EQ(to_string(*f->find("a_deep")), "[1 x array: [1 x array: [1 x array: [1 x uint8: 42]]]]");
}

TEST(GgufRoundTrip, ToString) {
  GgufBuilder g;
  g.add("i", i32(-3)).add("u", u64(5)).add("f", f32(0.5f)).add("b", boolean(true)).add("s", str("a\nb\"c"));
  std::vector<Val> many;
  for (int i = 0; i < 20; ++i) many.push_back(i32(i));
  g.add("arr", array(5, many)).add("long", str(std::string(500, 'x')));
  g.add("eps", f32(1e-5f)).add("third", f64(1.0 / 3.0));
  auto f = parse(g.build());
  EXPECT_EQ(to_string(*f->find("i")), "-3");
  EXPECT_EQ(to_string(*f->find("u")), "5");
  EXPECT_EQ(to_string(*f->find("f")), "0.5");
  EXPECT_EQ(to_string(*f->find("b")), "true");
  EXPECT_EQ(to_string(*f->find("s")), "\"a\\nb\\\"c\"");
  EXPECT_EQ(to_string(*f->find("arr"), 3), "[20 x int32: 0, 1, 2, ...]");
  EXPECT_LT(to_string(*f->find("long")).size(), 200u);
  EXPECT_EQ(to_string(*f->find("eps")), "1e-05");  // float32 printed at float precision
  EXPECT_EQ(to_string(*f->find("third")), "0.3333333333333333");
}

TEST(GgufRoundTrip, Accessors) {
  GgufBuilder g;
  g.add("name", str("m")).add("n", u32(3)).add("big", u64(1ull << 63)).add("flag", boolean(true));
  g.add("toks", array(8, {str("a")})).add("ints", array(5, {i32(1)})).add("x", f64(2.0));
  auto f = parse(g.build());
  EXPECT_TRUE(f->has("name"));
  EXPECT_FALSE(f->has("nope"));
  EXPECT_EQ(f->find("nope"), nullptr);
  EXPECT_EQ(f->opt_string("nope"), std::nullopt);
  EXPECT_EQ(f->opt_int("nope"), std::nullopt);
  EXPECT_EQ(f->opt_float("nope"), std::nullopt);
  EXPECT_EQ(f->opt_bool("nope"), std::nullopt);
  EXPECT_EQ(f->opt_string("name"), "m");
  EXPECT_EQ(f->opt_int("n"), 3);
  EXPECT_EQ(f->opt_float("x"), 2.0);
  EXPECT_EQ(f->opt_bool("flag"), true);
  expect_throw_msg([&] { f->get_string("nope"); }, {"'nope'", "missing"});
  expect_throw_msg([&] { f->get_string("n"); }, {"'n'", "integer", "expected a string"});
  expect_throw_msg([&] { f->get_int("name"); }, {"'name'", "string", "expected an integer"});
  expect_throw_msg([&] { f->get_int("x"); }, {"'x'", "float"});
  expect_throw_msg([&] { f->get_int("big"); }, {"'big'", "9223372036854775808"});
  expect_throw_msg([&] { f->get_float("name"); }, {"'name'", "string"});
  expect_throw_msg([&] { f->get_bool("n"); }, {"'n'", "expected a bool"});
  expect_throw_msg([&] { f->opt_int("name"); }, {"'name'", "string"});
  expect_throw_msg([&] { f->get_string_array("ints"); }, {"'ints'", "array of int32"});
  expect_throw_msg([&] { f->get_int_array("toks"); }, {"'toks'", "string"});
  expect_throw_msg([&] { f->get_int_array("n"); }, {"'n'", "expected an array"});
  EXPECT_EQ(f->get_float("big"), 9223372036854775808.0);
}

// ---- Tensors, alignment, versions -------------------------------------------------------------

void check_tensor_data(const GgufFile& f) {
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const GgufTensorInfo& t = f.tensors()[i];
    const uint8_t* p = f.tensor_data(t);
    for (uint64_t j = 0; j < t.nbytes; ++j)
      ASSERT_EQ(p[j], GgufBuilder::pattern(i, j)) << t.name << " byte " << j;
  }
}

TEST(GgufTensors, InfosAndData) {
  for (uint32_t version : {2u, 3u}) {
    GgufBuilder g = small_model(version);
    g.tensor("blk.0.attn_q.weight", {64, 2, 3}, 2)  // Q4_0, 3-d
        .tensor("bf", {3, 1, 1, 2}, 30);            // BF16, 4-d
    auto f = parse(g.build());
    EXPECT_EQ(f->version(), version);
    ASSERT_EQ(f->tensors().size(), 5u);
    const GgufTensorInfo& e = f->tensor("token_embd.weight");
    EXPECT_EQ(e.type, GgmlType::Q8_0);
    EXPECT_EQ(e.dims, (std::vector<int64_t>{32, 3}));
    EXPECT_EQ(e.n_elements(), 96);
    EXPECT_EQ(e.cols(), 32);
    EXPECT_EQ(e.rows(), 3);
    EXPECT_EQ(e.nbytes, 3u * 34);
    EXPECT_EQ(e.offset, 0u);
    const GgufTensorInfo& n = f->tensor("norm.weight");
    EXPECT_EQ(n.type, GgmlType::F32);
    EXPECT_EQ(n.nbytes, 16u);
    EXPECT_EQ(n.offset, 128u);  // 102 bytes rounded up to 32
    EXPECT_EQ(f->tensor("blk.0.ffn.weight").nbytes, 144u);
    const GgufTensorInfo& q = f->tensor("blk.0.attn_q.weight");
    EXPECT_EQ(q.type, GgmlType::Q4_0);
    EXPECT_EQ(q.rows(), 6);
    EXPECT_EQ(q.nbytes, 2u * 6 * 18);
    EXPECT_EQ(f->tensor("bf").nbytes, 12u);
    EXPECT_EQ(f->tensor("bf").dims.size(), 4u);
    EXPECT_EQ(f->find_tensor("missing"), nullptr);
    expect_throw_msg([&] { f->tensor("missing"); }, {"'missing'", "missing"});
    // Tensor order is kept, and the data pointers see the right bytes.
    EXPECT_EQ(f->tensors()[0].name, "token_embd.weight");
    check_tensor_data(*f);
    // The data section starts aligned (from_memory copies into a vector: its storage is
    // 16-aligned, so check the distance from the first tensor instead).
    EXPECT_EQ((f->tensor_data(n) - f->tensor_data(e)), 128);
    EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 3u);
  }
}

TEST(GgufTensors, CustomAlignment) {
  for (uint64_t al : {8u, 64u, 4096u}) {
    GgufBuilder g;
    g.alignment = al;
    g.add("general.alignment", u32(static_cast<uint32_t>(al)));
    g.tensor("a", {3}, 0).tensor("b", {5}, 1).tensor("c", {32}, 8);
    const Bytes b = g.build();
    auto f = parse(b);
    EXPECT_EQ(f->tensor("b").offset, (12 + al - 1) / al * al);
    check_tensor_data(*f);
    // Data section start = first multiple of al after the directory: the file's first tensor byte.
    const size_t data_start = b.size() - (f->tensor("c").offset + f->tensor("c").nbytes);
    EXPECT_EQ(data_start % al, 0u);
    EXPECT_EQ(f->tensor_data(f->tensor("a"))[0], b[data_start]);
  }
}

TEST(GgufTensors, AlignmentAsOtherIntegerTypes) {
  for (const Val& v : {u64(64), i32(64), u16(64), u8(64)}) {
    GgufBuilder g;
    g.alignment = 64;
    g.add("general.alignment", v).tensor("a", {3}, 0).tensor("b", {3}, 0);
    auto f = parse(g.build());
    EXPECT_EQ(f->tensor("b").offset, 64u);
    check_tensor_data(*f);
  }
}

TEST(GgufTensors, NoTensorsNoPadding) {
  GgufBuilder g;
  g.add("general.alignment", u32(1024)).add("k", str("v"));
  auto f = parse(g.build());  // no data section at all: fine
  EXPECT_EQ(f->get_string("k"), "v");
}

TEST(GgufTensors, OpenFromPath) {
  const auto dir = std::filesystem::temp_directory_path() / ("duo_gguf_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "model.gguf").string();
  Bytes b = small_model().build();
  {
    std::ofstream o(path, std::ios::binary);
    o.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  {
    auto f = GgufFile::open(path);
    EXPECT_EQ(f->path(), path);
    EXPECT_EQ(f->file_size(), b.size());
    check_tensor_data(*f);
  }
  // Truncated on disk: the message names the file, the tensor and the byte counts.
  std::filesystem::resize_file(path, b.size() - 10);
  expect_throw_msg([&] { GgufFile::open(path); },
                   {path + ": truncated: tensor 'blk.0.ffn.weight'", "needs bytes up to " + std::to_string(b.size()),
                    "the file has " + std::to_string(b.size() - 10)});
  std::filesystem::resize_file(path, 0);
  expect_throw_msg([&] { GgufFile::open(path); }, {path, "empty"});
  expect_throw_msg([&] { GgufFile::open((dir / "nope.gguf").string()); }, {"nope.gguf", "cannot open"});
  expect_throw_msg([&] { GgufFile::open(dir.string()); }, {"not a regular file"});
  // A FIFO with no writer: refused at once (opening it blocking would wait forever).
  const std::string fifo = (dir / "fifo.gguf").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_throw_msg([&] { GgufFile::open(fifo); }, {"fifo.gguf", "not a regular file"});
  std::filesystem::remove_all(dir);
}

// ---- Errors -----------------------------------------------------------------------------------

TEST(GgufErrors, WrongMagic) {
  GgufBuilder g = small_model();
  g.magic = 0x4c4c4747;  // "GGLL"
  expect_error(g.build(), {"<memory>", "not a GGUF file", "GGLL"});
  expect_error(Bytes{'G', 'G'}, {"truncated", "magic"});
  expect_error(Bytes{}, {"truncated", "magic"});
}

TEST(GgufErrors, UnsupportedVersion) {
  for (uint32_t v : {0u, 1u, 4u, 0x03000000u}) {
    GgufBuilder g = small_model();
    g.version = v;
    expect_error(g.build(), {"unsupported GGUF version " + std::to_string(v)});
  }
}

TEST(GgufErrors, TruncationAtEveryByte) {
  for (uint32_t version : {2u, 3u}) {
    const Bytes b = small_model(version).build();
    ASSERT_NO_THROW(parse(b));
    for (size_t n = 0; n < b.size(); ++n) {
      const Bytes cut(b.begin(), b.begin() + n);
      try {
        parse(cut);
        ADD_FAILURE() << "a file cut to " << n << " of " << b.size() << " bytes parsed";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << n << ": " << e.what();
      }
    }
  }
}

TEST(GgufErrors, TruncationMessagesSayWhere) {
  const Bytes b = small_model().build();
  // Cut inside the value of llama.block_count: header(24) + key(8+20) + type(4) + str(8+5) + key(8+17) + type(4).
  const size_t at = 24 + 8 + 20 + 4 + 8 + 5 + 8 + 17 + 4 + 2;
  expect_error(Bytes(b.begin(), b.begin() + at), {"key 'llama.block_count'", "truncated", "uint32 value",
                                                   "byte offset " + std::to_string(at - 2)});
}

TEST(GgufErrors, UnknownTensorType) {
  for (uint32_t id : {4u, 5u, 16u, 29u, 31u, 1000u}) {
    GgufBuilder g;
    g.tensor("w", {32}, id);
    g.tensors[0].nbytes = 32;
    expect_error(g.build(), {"tensor 'w'", "unknown tensor type id " + std::to_string(id)});
  }
}

TEST(GgufErrors, TensorOutOfBounds) {
  GgufBuilder g = small_model();
  Bytes b = g.build();
  // Point the last tensor at an aligned offset past the end.
  GgufBuilder g2 = small_model();
  g2.tensors[2].offset = 1 << 20;
  g2.tensors[2].nbytes = 0;
  Bytes b2 = g2.build();
  b2.resize(b.size());  // drop the huge zero fill
  expect_error(b2, {"tensor 'blk.0.ffn.weight'", "truncated", "needs bytes up to"});
}

TEST(GgufErrors, OffsetNearUint64Max) {
  // Write the directory by hand: offset 2^64 - 32 (aligned) must not wrap around.
  Buf b;
  b.put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint64_t>(1).put<uint64_t>(0);
  b.str("w").put<uint32_t>(1).put<int64_t>(8).put<uint32_t>(0).put<uint64_t>(~uint64_t{31});
  while (b.b.size() % 32) b.b.push_back(0);
  b.b.resize(b.b.size() + 64);
  expect_error(b.b, {"tensor 'w'", "truncated"});
}

TEST(GgufErrors, MisalignedOffset) {
  GgufBuilder g;
  g.tensor("a", {4}, 0).tensor("b", {4}, 0, 16);
  expect_error(g.build(), {"tensor 'b'", "offset 16", "alignment 32"});
}

TEST(GgufErrors, AbsurdStringLengths) {
  // Metadata key length.
  {
    Buf b;
    b.put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
    b.put<uint64_t>(1ull << 60).raw(Bytes(16, 'a'));
    expect_error(b.b, {"metadata key", "length 1152921504606846976"});
  }
  // String value length, for 2^60 and 2^64-1.
  for (uint64_t len : {1ull << 60, ~0ull}) {
    GgufBuilder g;
    Buf v;
    v.put<uint64_t>(len).raw(Bytes(10, 'x'));
    g.add("general.name", Val{8, v.b});
    expect_error(g.build(), {"key 'general.name'", "string value", std::to_string(len)});
  }
  // A string inside an array.
  {
    GgufBuilder g;
    Buf v;
    v.put<uint32_t>(8).put<uint64_t>(2).str("ok").put<uint64_t>(1ull << 60);
    g.add("tokenizer.ggml.tokens", Val{9, v.b});
    expect_error(g.build(), {"key 'tokenizer.ggml.tokens'", "string value"});
  }
  // Tensor name length.
  {
    Buf b;
    b.put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint64_t>(1).put<uint64_t>(0);
    b.put<uint64_t>(1ull << 60).raw(Bytes(40, 'a'));
    expect_error(b.b, {"tensor 0", "tensor name"});
  }
}

TEST(GgufErrors, AbsurdArrayLengths) {
  for (uint32_t elem : {0u, 5u, 8u, 9u, 12u}) {
    for (uint64_t count : {1ull << 60, ~0ull, 1000ull}) {
      GgufBuilder g;
      Buf v;
      v.put<uint32_t>(elem).put<uint64_t>(count).raw(Bytes(16, 0));
      g.add("arr", Val{9, v.b});
      expect_error(g.build(), {"key 'arr'", std::to_string(count), "cannot fit"});
    }
  }
  // Nested too deep (5 levels of arrays).
  GgufBuilder g;
  g.add("deep", array(9, {array(9, {array(9, {array(9, {array(0, {u8(1)})})})})}));
  expect_error(g.build(), {"key 'deep'", "nested deeper"});
  // Unknown element type and unknown value type.
  GgufBuilder g2;
  g2.add("bad", array(13, {}));
  expect_error(g2.build(), {"key 'bad'", "unknown array element type 13"});
  GgufBuilder g3;
  g3.add("bad", Val{13, Bytes(8, 0)});
  expect_error(g3.build(), {"key 'bad'", "unknown value type 13"});
  GgufBuilder g4;
  g4.add("bad", Val{7, Bytes{2}});
  expect_error(g4.build(), {"key 'bad'", "bool value 2"});
}

TEST(GgufErrors, AbsurdCounts) {
  for (uint64_t n : {1ull << 62, ~0ull, 100ull}) {
    GgufBuilder g = small_model();
    g.n_tensors_override = n;
    expect_error(g.build(), {"tensor count " + std::to_string(n), "impossible"});
    GgufBuilder g2 = small_model();
    g2.n_kv_override = n;
    expect_error(g2.build(), {"metadata count " + std::to_string(n), "impossible"});
  }
  // One more key than written: the tensor directory is read as a key and fails cleanly.
  GgufBuilder g = small_model();
  g.n_kv_override = g.kv.size() + 1;
  EXPECT_THROW(parse(g.build()), Error);
}

TEST(GgufErrors, BadDims) {
  for (int64_t d : {int64_t{0}, int64_t{-1}, std::numeric_limits<int64_t>::min()}) {
    GgufBuilder g;
    g.tensor("w", {4, d}, 0);
    g.tensors[0].nbytes = 16;
    expect_error(g.build(), {"tensor 'w'", "dimension 1 is " + std::to_string(d)});
  }
  // Element count overflow.
  GgufBuilder g;
  g.tensor("w", {1ll << 32, 1ll << 32}, 0);
  g.tensors[0].nbytes = 16;
  expect_error(g.build(), {"tensor 'w'", "absurd shape"});
  GgufBuilder g1;
  g1.tensor("w", {1ll << 40, 1ll << 40}, 0);
  g1.tensors[0].nbytes = 16;
  expect_error(g1.build(), {"tensor 'w'", "absurd"});
  // Byte count beyond the file (large but no overflow).
  GgufBuilder g2;
  g2.tensor("w", {1ll << 20, 1ll << 20}, 0);
  g2.tensors[0].nbytes = 16;
  expect_error(g2.build(), {"tensor 'w'", "truncated", "needs bytes up to"});
  // Number of dimensions.
  for (size_t nd : {0u, 5u, 100u}) {
    GgufBuilder g3;
    g3.tensor("w", {}, 0);
    g3.tensors[0].raw_dims = std::vector<uint64_t>(nd, 1);
    g3.tensors[0].raw_dims_set = true;
    g3.tensors[0].nbytes = 4;
    expect_error(g3.build(), {"tensor 'w'", std::to_string(nd) + " dimensions"});
  }
}

TEST(GgufErrors, RowNotMultipleOfBlock) {
  GgufBuilder g;
  g.tensor("w", {33, 2}, 8);  // Q8_0 has 32-element blocks
  g.tensors[0].nbytes = 100;
  expect_error(g.build(), {"tensor 'w'", "33", "Q8_0", "32"});
  GgufBuilder g2;
  g2.tensor("w", {128, 2}, 14);  // Q6_K has 256-element blocks
  g2.tensors[0].nbytes = 420;
  expect_error(g2.build(), {"tensor 'w'", "Q6_K", "256"});
}

TEST(GgufErrors, DuplicateKey) {
  GgufBuilder g = small_model();
  g.add("llama.block_count", u32(3));
  expect_error(g.build(), {"key 'llama.block_count'", "duplicate"});
}

TEST(GgufErrors, DuplicateTensorName) {
  GgufBuilder g = small_model();
  g.tensor("norm.weight", {4}, 0);
  expect_error(g.build(), {"tensor 'norm.weight'", "duplicate"});
}

TEST(GgufErrors, BadAlignment) {
  for (const Val& v : {u32(0), u32(3), u32(48), i32(-32), i64(std::numeric_limits<int64_t>::min()),
                       u64(0x8000000000000001ull)}) {
    GgufBuilder g = small_model();
    g.add("general.alignment", v);
    expect_error(g.build(), {"general.alignment", "power of two"});
  }
  GgufBuilder g = small_model();
  g.add("general.alignment", str("32"));
  expect_error(g.build(), {"general.alignment", "string"});
  // Powers of two below 8 would let tensor data sit misaligned for the kernels' loads.
  for (uint32_t al : {1u, 2u, 4u}) {
    GgufBuilder g3;
    g3.alignment = al;
    g3.add("general.alignment", u32(al)).tensor("a", {3}, 0).tensor("b", {5}, 0);
    expect_error(g3.build(), {"general.alignment " + std::to_string(al), "less than 8"});
  }
  // Huge but valid power of two: the data section would start past the end.
  GgufBuilder g2;
  g2.add("general.alignment", u64(1ull << 63)).tensor("w", {4}, 0);
  expect_error(g2.build(), {"truncated", "tensor data would start"});
}

// ---- Real models ------------------------------------------------------------------------------

TEST(GgufRealModel, SmolLM2) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto f = GgufFile::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("llama.block_count"), 30);
  EXPECT_EQ(f->tensors().size(), 272u);
  const GgufTensorInfo& e = f->tensor("token_embd.weight");
  EXPECT_EQ(e.type, GgmlType::Q8_0);
  EXPECT_EQ(e.dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  // Tensors are packed inside the file.
  uint64_t end = 0;
  for (const auto& t : f->tensors()) end = std::max(end, t.offset + t.nbytes);
  EXPECT_LE(f->tensor_data(f->tensors()[0]) - f->tensor_data(f->tensors()[0]) + end, f->file_size());
}

TEST(GgufRealModel, QwenCoder) {
  DUO_REQUIRE_MODEL(path, test::kQwenCoder);
  auto f = GgufFile::open(path);
  EXPECT_EQ(f->get_string("general.architecture"), "qwen2");
  EXPECT_EQ(f->tensors().size(), 339u);
  const GgufTensorInfo& o = f->tensor("output.weight");
  EXPECT_EQ(o.type, GgmlType::Q6_K);
  EXPECT_EQ(o.dims, (std::vector<int64_t>{1536, 151936}));
  EXPECT_EQ(f->get_float("qwen2.rope.freq_base"), 1e6);
  EXPECT_EQ(f->get_int("qwen2.block_count"), 28);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 151936u);
  EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type").size(), 151936u);
}

}  // namespace
}  // namespace duo
