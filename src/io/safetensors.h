// safetensors reader: memory-maps a file (or reads a buffer), parses its JSON header and checks
// every tensor's extent against the file before anything is used. Untrusted input never crashes:
// a truncated header or data, overlapping or misplaced tensors, or a bad shape are duo::Errors
// naming the file and the tensor.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/ggml_types.h"

namespace duo {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;                // as written in the header ("BF16", "F8_E4M3", ...)
  std::optional<GgmlType> type;     // F32, F16 or BF16; empty for a dtype the engine cannot read
  std::vector<int64_t> shape;       // row-major, outermost first (PyTorch's order)
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  int64_t n_elements() const;
};

class SafetensorsFile {
 public:
  // Memory-maps and parses `path`. Throws duo::Error on any problem.
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  // Parses an in-memory copy (tests). The bytes are copied.
  static std::unique_ptr<SafetensorsFile> from_memory(const uint8_t* data, size_t size,
                                                      const std::string& name = "<memory>");
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const;  // nullptr when absent
  // The header's "__metadata__" (string to string), empty when absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void parse();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> owned_;
  std::map<std::string, SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace duo
