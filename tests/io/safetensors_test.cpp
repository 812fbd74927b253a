// The safetensors reader on hand-made files: values and shapes read back, and every malformed
// header or extent refused with an error that says what is wrong.
#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

#include "core/error.h"

namespace duo {
namespace {

// A file of the format: u64 header length, JSON header, data.
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> f;
  f.reserve(8 + header.size() + data.size());
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) f.push_back((uint8_t)(n >> (8 * i)));
  f.insert(f.end(), header.begin(), header.end());
  f.insert(f.end(), data.begin(), data.end());
  return f;
}

std::vector<uint8_t> floats(std::initializer_list<float> v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), std::data(v), b.size());
  return b;
}

std::string error_of(const std::vector<uint8_t>& f) {
  try {
    SafetensorsFile::from_memory(f.data(), f.size(), "t.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, ReadsTensorsAndMetadata) {
  std::vector<uint8_t> data = floats({1.5f, -2.0f, 3.0f, 4.25f, 5.0f, 6.0f});
  data.push_back(0x80);  // one bf16 value, 2.0 (0x4000) then -0.0
  data.push_back(0x3F);  // 1.0 as bf16: 0x3F80
  const auto f = make_file(
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[24,26]}})",
      data);
  auto st = SafetensorsFile::from_memory(f.data(), f.size());
  ASSERT_EQ(st->tensors().size(), 2u);
  const SafetensorsTensor* w = st->find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(*w->type, GgmlType::F32);
  EXPECT_EQ(w->nbytes, 24u);
  float x[6];
  std::memcpy(x, w->data, 24);
  EXPECT_EQ(x[0], 1.5f);
  EXPECT_EQ(x[5], 6.0f);
  const SafetensorsTensor* b = st->find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(*b->type, GgmlType::BF16);
  EXPECT_EQ(b->data[0], 0x80);
  EXPECT_EQ(st->metadata().at("format"), "pt");
  EXPECT_EQ(st->find("nope"), nullptr);
}

TEST(Safetensors, UnsupportedDtypeIsKeptButHasNoEngineType) {
  const auto f = make_file(R"({"q":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", {1, 2, 3, 4});
  auto st = SafetensorsFile::from_memory(f.data(), f.size());
  EXPECT_EQ(st->find("q")->dtype, "F8_E4M3");
  EXPECT_FALSE(st->find("q")->type.has_value());
}

TEST(Safetensors, MalformedFilesAreRefused) {
  const std::string ok = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const auto data = floats({1, 2});
  EXPECT_EQ(error_of(make_file(ok, data)), "");
  EXPECT_NE(error_of({1, 2, 3}).find("truncated safetensors file"), std::string::npos);
  // Header longer than the file.
  auto f = make_file(ok, data);
  f[0] = 200;
  EXPECT_NE(error_of(f).find("truncated safetensors header"), std::string::npos) << error_of(f);
  // Data cut short.
  f = make_file(ok, data);
  f.resize(f.size() - 1);
  EXPECT_NE(error_of(f).find("truncated safetensors data: tensor 'w'"), std::string::npos) << error_of(f);
  EXPECT_NE(error_of(make_file("{not json", data)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(make_file("[1]", data)).find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}})", data)).find("unknown dtype 'Q9'"),
            std::string::npos);
  // Size of the extent against shape x dtype.
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", data)).find("need 4"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data)).find("shape"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data)).find("end before"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"F32","shape":[2]}})", data)).find("data_offsets"), std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                               data))
                .find("overlap"),
            std::string::npos);
  // Overflowing shapes do not wrap around to a small size.
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", data))
                .find("too large"),
            std::string::npos);
}

TEST(Safetensors, OpenNamesMissingFile) {
  try {
    SafetensorsFile::open("/nonexistent/model.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.safetensors"), std::string::npos);
  }
}

}  // namespace
}  // namespace duo
