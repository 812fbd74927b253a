// Helpers for the Hugging Face directory tests: the fixtures of dev/make_hf_fixtures.py, and
// scratch copies of them to break one file at a time.
#pragma once
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "test_support.h"

namespace duo::test {

inline std::string hf_dir(const std::string& key) { return fixture_path("hf/" + key); }

inline nlohmann::json hf_reference(const std::string& key) {
  std::ifstream in(fixture_path("hf/" + key + ".json"));
  return nlohmann::json::parse(in);
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

inline void write_json(const std::string& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(); }

// A copy of a fixture directory, removed again at the end of the test.
struct ScratchDir {
  std::filesystem::path path;
  explicit ScratchDir(const std::string& key) {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("duo-hf-" + key + "-" + std::to_string(rd()));
    std::filesystem::copy(hf_dir(key), path, std::filesystem::copy_options::recursive);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string str() const { return path.string(); }
};

}  // namespace duo::test
