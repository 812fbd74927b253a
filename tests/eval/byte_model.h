// A tiny qwen2 GGUF whose tokenizer is byte-level BPE without merges (token i < 256 is byte i,
// so a text's token count is its byte count), for evaluation tests that need an Engine.
//
// Its attention is set by hand so where each head looks is known without running it:
//  - the residual stream stays the token embedding (attention output and FFN down are zero);
//  - digit bytes embed along dimension 0, every other byte along dimension 1 (with RMS norm,
//    sqrt(E) there); queries are a constant bias (Wq = 0);
//  - a "digit" KV head's keys are large along a RoPE pair that does not rotate (rope base 1e20,
//    the slowest pair turns by 1e-15 rad a position) for digits only, and its query heads'
//    bias points there: it puts all its attention on the digits;
//  - an "even" KV head has zero queries: its attention is uniform over the visible keys.
// Layer l's digit KV head is KV head l % 2, the other head is even.
#pragma once
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "tokenizer/gguf_builder.h"

namespace duo::test {

struct ByteModel {
  static constexpr int kLayers = 2, kEmbd = 32, kHeads = 4, kKvHeads = 2, kHeadDim = 8, kFf = 8, kVocab = 257;
  // The score a digit head gives a digit key (after the 1/sqrt(d) scale); other keys score 0.
  static constexpr float kDigitScore = 40.0f;
  static int digit_head(int layer) { return layer % 2; }
};

// GPT-2's printable spelling of byte b in a byte-level vocabulary (bytes_to_unicode), as UTF-8.
inline std::string gpt2_byte_token(int b) {
  int cp;
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
    cp = b;
  } else {  // the others take code points 256, 257, ... in byte order
    int k = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++k;
    cp = 256 + k;
  }
  std::string s;
  if (cp < 0x80) {
    s += (char)cp;
  } else {
    s += (char)(0xC0 | (cp >> 6));
    s += (char)(0x80 | (cp & 0x3F));
  }
  return s;
}

// Writes the model to `path`.
inline void write_byte_model(const std::string& path) {
  using M = ByteModel;
  constexpr int E = M::kEmbd, D = M::kHeadDim, V = M::kVocab, Q = M::kHeads * D, KV = M::kKvHeads * D;
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(gpt2_byte_token(b));
  tokens.push_back("<|endoftext|>");
  std::vector<int32_t> types(256, 1);
  types.push_back(3);
  GgufBuilder g;
  g.str("general.architecture", "qwen2")
      .u32("qwen2.block_count", M::kLayers)
      .u32("qwen2.context_length", 4096)
      .u32("qwen2.embedding_length", E)
      .u32("qwen2.feed_forward_length", M::kFf)
      .u32("qwen2.attention.head_count", M::kHeads)
      .u32("qwen2.attention.head_count_kv", M::kKvHeads)
      .f32("qwen2.attention.layer_norm_rms_epsilon", 1e-6f)
      .f32("qwen2.rope.freq_base", 1e20f)
      .str("tokenizer.ggml.model", "gpt2")
      .str("tokenizer.ggml.pre", "gpt2")
      .strs("tokenizer.ggml.tokens", tokens)
      .i32s("tokenizer.ggml.token_type", types)
      .strs("tokenizer.ggml.merges", {})
      .u32("tokenizer.ggml.eos_token_id", 256);
  std::vector<float> embd((size_t)V * E, 0.0f);
  for (int t = 0; t < V; ++t) embd[(size_t)t * E + ((t >= '0' && t <= '9') ? 0 : 1)] = 1.0f;
  g.tensor_f32("token_embd.weight", {E, V}, embd);
  g.tensor_f32("output_norm.weight", {E}, {1.0f});
  g.tensor_f32("output.weight", {E, V}, embd);
  // Normalized digit embeddings are sqrt(E) along dimension 0; keys scale that by `a`, queries
  // are `c`, and the score is a * sqrt(E) * c / sqrt(D) = kDigitScore.
  const int slow = D / 2 - 1;  // NeoX pairs (i, i + D/2): pair D/2 - 1 has the lowest frequency
  const float a = 1.0f, c = M::kDigitScore * std::sqrt((float)D) / (a * std::sqrt((float)E));
  for (int l = 0; l < M::kLayers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    const int dh = M::digit_head(l), group = M::kHeads / M::kKvHeads;
    std::vector<float> wk((size_t)KV * E, 0.0f), bq(Q, 0.0f);
    wk[(size_t)(dh * D + slow) * E + 0] = a;  // row: output feature, column: input feature
    for (int h = dh * group; h < (dh + 1) * group; ++h) bq[h * D + slow] = c;
    g.tensor_f32(p + "attn_norm.weight", {E}, {1.0f});
    g.tensor_f32(p + "ffn_norm.weight", {E}, {1.0f});
    g.tensor_f32(p + "attn_q.weight", {E, Q}, {0.0f});
    g.tensor_f32(p + "attn_k.weight", {E, KV}, wk);
    g.tensor_f32(p + "attn_v.weight", {E, KV}, {0.01f});
    g.tensor_f32(p + "attn_output.weight", {Q, E}, {0.0f});
    g.tensor_f32(p + "attn_q.bias", {Q}, bq);
    g.tensor_f32(p + "attn_k.bias", {KV}, {0.0f});
    g.tensor_f32(p + "attn_v.bias", {KV}, {0.0f});
    g.tensor_f32(p + "ffn_gate.weight", {E, M::kFf}, {0.01f});
    g.tensor_f32(p + "ffn_up.weight", {E, M::kFf}, {0.01f});
    g.tensor_f32(p + "ffn_down.weight", {M::kFf, E}, {0.0f});
  }
  const auto bytes = g.bytes();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path);
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

// A per-test temporary file, removed when the object goes.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name)
      : path((std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid()))).string()) {}
  ~TempFile() { std::filesystem::remove(path); }
};

}  // namespace duo::test
