// Our reference dequantizers against gguf-py's (dev/make_quant_fixtures.py), and the
// f16/bf16 conversions against exhaustive properties.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dequant.h"
#include "core/fp16.h"
#include "io/gguf.h"
#include "test_support.h"

namespace duo {
namespace {

std::vector<uint8_t> from_hex(const std::string& h) {
  std::vector<uint8_t> out(h.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = (uint8_t)std::stoi(h.substr(2 * i, 2), nullptr, 16);
  return out;
}

class DequantFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(DequantFixture, MatchesGgufPy) {
  std::ifstream f(test::fixture_path(std::string("quant/") + GetParam() + ".json"));
  ASSERT_TRUE(f.good()) << "missing fixture for " << GetParam();
  const auto j = nlohmann::json::parse(f);
  const auto type = static_cast<GgmlType>(j["type_id"].get<uint32_t>());
  ASSERT_STREQ(type_name(type), GetParam());
  for (const auto& c : j["cases"]) {
    const auto raw = from_hex(c["hex"]);
    const int64_t n = c["n"];
    ASSERT_EQ(raw.size(), row_bytes(type, n));
    std::vector<float> y(n);
    dequantize_row(type, raw.data(), y.data(), n);
    const auto& expect = c["values"];
    for (int64_t i = 0; i < n; ++i) {
      const float e = expect[i];
      // gguf-py computes in float32 (sometimes with a different association order): allow
      // a couple of ulps.
      ASSERT_NEAR(y[i], e, 2e-6f * std::max(1.0f, std::fabs(e))) << GetParam() << " " << c["name"] << " element " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantFixture,
                         ::testing::Values("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K",
                                           "Q6_K", "Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS"));

// Rows of real tensors (dev/make_quant_fixtures.py, gguf-py's dequantization). The saved
// bytes are always checked; when the model is cached, they must also be the bytes in the file.
TEST(DequantRealRows, MatchesGgufPyAndTheModelFiles) {
  std::ifstream f(test::fixture_path("quant/real_rows.json"));
  ASSERT_TRUE(f.good());
  const auto j = nlohmann::json::parse(f);
  ASSERT_GE(j["rows"].size(), 4u);
  for (const auto& r : j["rows"]) {
    const auto type = static_cast<GgmlType>(r["type_id"].get<uint32_t>());
    const auto raw = from_hex(r["hex"]);
    const int64_t n = r["n"];
    ASSERT_EQ(raw.size(), row_bytes(type, n));
    std::vector<float> y(n);
    dequantize_row(type, raw.data(), y.data(), n);
    const auto& expect = r["values"];
    for (int64_t i = 0; i < n; ++i) {
      const float e = expect[i].get<float>();
      ASSERT_NEAR(y[i], e, 2e-6f * std::max(1.0f, std::fabs(e))) << r["tensor"] << " element " << i;
    }
    const std::string path = test::models_dir() + "/" + r["model"].get<std::string>();
    if (!std::filesystem::exists(path)) continue;
    auto g = GgufFile::open(path);
    const GgufTensorInfo& t = g->tensor(r["tensor"]);
    ASSERT_EQ(t.type, type);
    ASSERT_EQ(t.cols(), r["cols"].get<int64_t>());
    const uint8_t* row = g->tensor_data(t) + r["row"].get<int64_t>() * row_bytes(type, t.cols());
    ASSERT_EQ(std::memcmp(row, raw.data(), raw.size()), 0) << r["tensor"];
  }
}

TEST(Dequant, UnsupportedTypeAndBadLengthAreErrors) {
  uint8_t buf[292] = {};
  float y[256];
  EXPECT_THROW(dequantize_row(GgmlType::Q8_K, buf, y, 256), std::runtime_error);
  EXPECT_THROW(dequantize_row(GgmlType::Q4_0, buf, y, 33), std::runtime_error);
}

TEST(Fp16, RoundTripsEveryHalfAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32((uint16_t)h);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), (uint16_t)h) << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);              // rounds to infinity
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(3.140625f)), 3.140625f);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie -> even
}

}  // namespace
}  // namespace duo
