// GGUF reader: memory-maps a file (or reads a buffer), parses header, metadata and tensor
// directory, and validates everything against the file size before anything is used.
// Untrusted input never crashes: every problem becomes a duo::Error that says what and where.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "core/ggml_types.h"

namespace duo {

// GGUF metadata value types (GGUF spec numbering).
enum class GgufValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

struct GgufArray;
// A metadata value; integers are widened to int64/uint64, floats to double.
using GgufValue = std::variant<int64_t, uint64_t, double, bool, std::string, std::shared_ptr<GgufArray>>;
struct GgufArray {
  GgufValueType elem_type;
  std::vector<GgufValue> items;
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type;
  std::vector<int64_t> dims;  // ne[0] first: ne[0] is the contiguous (row) dimension
  uint64_t offset;            // from the start of the data section
  uint64_t nbytes;
  int64_t n_elements() const;
  int64_t rows() const { return dims.empty() ? 1 : n_elements() / dims[0]; }
  int64_t cols() const { return dims.empty() ? 1 : dims[0]; }
};

class GgufFile {
 public:
  // Memory-maps and parses `path`. Throws duo::Error on any problem.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  // Parses an in-memory copy (used by tests and the fuzzer). The bytes are copied.
  static std::unique_ptr<GgufFile> from_memory(const uint8_t* data, size_t size);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  const std::string& path() const { return path_; }
  size_t file_size() const { return size_; }

  // Metadata access. get_* throw duo::Error naming the key when it is missing or of another type.
  bool has(const std::string& key) const;
  const GgufValue* find(const std::string& key) const;
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;   // any integer type (uint64 must fit)
  double get_float(const std::string& key) const;  // float32/64 or integer
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;
  // Optional variants: std::nullopt when missing; still throw on a type mismatch.
  std::optional<std::string> opt_string(const std::string& key) const;
  std::optional<int64_t> opt_int(const std::string& key) const;
  std::optional<double> opt_float(const std::string& key) const;
  std::optional<bool> opt_bool(const std::string& key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;  // nullptr when absent
  const GgufTensorInfo& tensor(const std::string& name) const;       // throws when absent
  const uint8_t* tensor_data(const GgufTensorInfo& t) const { return data_ + data_offset_ + t.offset; }

 private:
  GgufFile() = default;
  void parse();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> owned_;  // for from_memory
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Human-readable rendering of a value (arrays abbreviated), for `duo info`.
std::string to_string(const GgufValue& v, size_t max_items = 8);

}  // namespace duo
