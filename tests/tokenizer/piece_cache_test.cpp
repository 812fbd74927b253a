// The BPE piece cache stays bounded in bytes: a hostile prompt made of one huge "word" or of
// millions of distinct words must not leave its bytes in the tokenizer, while ordinary words
// are still cached (and encode the same with and without the cache).
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "io/gguf.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

TEST(TokenizerPieceCache, BoundedInBytes) {
  DUO_REQUIRE_MODEL(path, test::kQwenCoder);  // byte-level BPE
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const auto first = tok->encode("the river runs past the mill", false, false);
  const size_t words = tok->piece_cache_bytes();
  EXPECT_GT(words, 0u) << "ordinary words are cached";
  EXPECT_EQ(tok->encode("the river runs past the mill", false, false), first);

  // One 64 KiB piece: encoded, not kept.
  const std::string huge(64 << 10, 'x');
  const auto ids = tok->encode(huge, false, false);
  EXPECT_GT(ids.size(), 1000u);
  EXPECT_LT(tok->piece_cache_bytes(), words + 4096);

  // 1.5M distinct words in ten prompts (~160 MiB of entries if all were kept) stay under the
  // 32 MiB bound.
  for (int k = 0; k < 10; ++k) {
    std::string many;
    // 64-bit: the products pass INT_MAX (signed overflow, UB; found by UBSan).
    for (int i = 0; i < 150000; ++i) many += " w" + std::to_string(int64_t(k * 150000 + i) * 7919);
    tok->encode(many, false, false);
    ASSERT_LE(tok->piece_cache_bytes(), size_t(32) << 20) << "after prompt " << k;
  }
  EXPECT_LE(tok->piece_cache_bytes(), size_t(32) << 20);
  EXPECT_EQ(tok->encode("the river runs past the mill", false, false), first);
}

}  // namespace
}  // namespace duo
