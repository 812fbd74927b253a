// Shapes of full-size models, for measuring speed and memory with synthetic weights (speed
// does not depend on the values): `duo bench --device cuda --synthetic NAME`.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace duo {

struct ModelPreset {
  std::string name;          // e.g. "llama3-8b"
  ModelConfig config;
  std::string pattern_file;  // published DuoAttention gates for this shape in tests/fixtures/patterns, or ""
};

// llama3-8b, llama2-7b, qwen2.5-7b. Fails listing the known names for an unknown one.
const ModelPreset& model_preset(const std::string& name);
std::vector<std::string> model_preset_names();

}  // namespace duo
