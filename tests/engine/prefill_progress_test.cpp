// Session::generate's PrefillCallback (what `duo generate` and `duo chat` show progress with and
// stop on): feeding the prompt chunk by chunk for it gives the same tokens as one feed, the
// callback sees every chunk, and stopping leaves exactly the chunks fed so far in the cache.
#include <gtest/gtest.h>

#include "duo/engine.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

EngineOptions options(const std::string& path, AttentionMode mode) {
  EngineOptions o;
  o.model_path = path;
  o.threads = 2;
  o.attention = mode;
  o.window = {8, 32};
  o.chunk = 16;
  return o;
}

std::vector<int32_t> prompt(const Engine& e) {
  std::string text;
  for (int i = 0; i < 6; ++i) text += "The river runs past the old mill and the bridge. ";
  return e.tokenizer().encode(text, false, false);
}

std::vector<int32_t> run(Engine& e, const std::vector<int32_t>& ids, const PrefillCallback& cb) {
  Sampler greedy(SamplerConfig{});
  auto s = e.new_session();
  std::vector<int32_t> out;
  s->generate(ids, 8, greedy, [&](int32_t id, const std::string&) { return out.push_back(id), true; }, cb);
  return out;
}

TEST(PrefillProgress, SameTokensAndEveryChunkReported) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  for (const AttentionMode mode : {AttentionMode::Full, AttentionMode::Streaming}) {
    Engine engine(options(path, mode));
    const auto ids = prompt(engine);
    const int64_t n = (int64_t)ids.size();
    ASSERT_GT(n, 3 * 16);
    std::vector<std::pair<int64_t, int64_t>> seen;
    const auto with = run(engine, ids, [&](int64_t done, int64_t total) { return seen.emplace_back(done, total), true; });
    EXPECT_EQ(with, run(engine, ids, {})) << to_string(mode);
    // After each full chunk but the last part, then once at the end.
    std::vector<std::pair<int64_t, int64_t>> want;
    for (int64_t d = 16; d < n; d += 16) want.emplace_back(d, n);
    want.emplace_back(n, n);
    EXPECT_EQ(seen, want);
  }
}

TEST(PrefillProgress, StoppingKeepsTheChunksFed) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  Engine engine(options(path, AttentionMode::Full));
  const auto ids = prompt(engine);
  Sampler greedy(SamplerConfig{});
  auto s = engine.new_session();
  int tokens = 0;
  const GenerationStats st = s->generate(
      ids, 8, greedy, [&](int32_t, const std::string&) { return ++tokens, true; },
      [](int64_t done, int64_t) { return done < 32; });
  EXPECT_TRUE(st.prefill_stopped);
  EXPECT_EQ(tokens, 0);
  EXPECT_EQ(s->n_past(), 32);
  EXPECT_EQ(st.prompt_tokens, 32);
}

}  // namespace
}  // namespace duo
