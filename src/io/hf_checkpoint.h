// A Hugging Face model directory: config.json and the weights, in model.safetensors or in
// shards listed by model.safetensors.index.json, every file memory-mapped. Tensors are found by
// their HF names; which file holds one is the index's business.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace duo {

// True when `path` names a directory (a model given as an HF directory rather than a GGUF file).
bool is_directory(const std::string& path);
// Parses a JSON file; duo::Error names the file when it is missing or not valid JSON.
nlohmann::json read_json_file(const std::string& path);

class HfCheckpoint {
 public:
  // Throws duo::Error naming what is missing or malformed.
  static std::unique_ptr<HfCheckpoint> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }
  const SafetensorsTensor* find(const std::string& name) const;  // nullptr when absent
  const SafetensorsTensor& tensor(const std::string& name) const;  // throws when absent
  // The file that holds `name` (for error messages).
  const std::string& file_of(const std::string& name) const;
  size_t n_files() const { return files_.size(); }
  // Every weight file (their tensors: a model summary's dtypes and sizes).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

}  // namespace duo
