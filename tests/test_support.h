// Shared helpers for tests: where fixtures and the real models live.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace duo::test {

inline std::string fixture_path(const std::string& rel) { return std::string(DUO_FIXTURES_DIR) + "/" + rel; }

// Cached model directory, as written by scripts/fetch_models.py.
inline std::string models_dir() {
  if (const char* d = std::getenv("DUO_MODELS")) return d;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/root") + "/.cache/duo/models";
}

inline const char* kSmolLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf";
inline const char* kQwenCoder = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf";
inline const char* kGemma3 = "gemma-3-270m-q4_k_m.gguf";  // scripts/fetch_models.py gemma

// Path of a real model. When it is missing the test is skipped, unless DUO_REQUIRE_MODELS
// is set (CI sets it after fetching), in which case the test fails.
#define DUO_REQUIRE_MODEL(var, file)                                                          \
  std::string var = ::duo::test::models_dir() + "/" + (file);                                \
  if (!std::filesystem::exists(var)) {                                                        \
    if (std::getenv("DUO_REQUIRE_MODELS")) FAIL() << "model missing: " << var;                \
    GTEST_SKIP() << "model not fetched (scripts/fetch_models.py): " << var;                    \
  }

}  // namespace duo::test
