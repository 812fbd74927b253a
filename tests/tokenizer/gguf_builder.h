// Builds small in-memory GGUF files for tests: metadata, and optionally F32 tensors (for model
// loading tests; without tensors the output is metadata only, as the tokenizer tests use it).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace duo::test {

class GgufBuilder {
 public:
  GgufBuilder& str(const std::string& key, const std::string& v) {
    kv(key, 8);
    put_str(v);
    return *this;
  }
  GgufBuilder& u32(const std::string& key, uint32_t v) {
    kv(key, 4);
    put(v);
    return *this;
  }
  GgufBuilder& u64(const std::string& key, uint64_t v) {
    kv(key, 10);
    put(v);
    return *this;
  }
  GgufBuilder& f32(const std::string& key, float v) {
    kv(key, 6);
    put(v);
    return *this;
  }
  GgufBuilder& f64(const std::string& key, double v) {
    kv(key, 12);
    put(v);
    return *this;
  }
  GgufBuilder& boolean(const std::string& key, bool v) {
    kv(key, 7);
    put((uint8_t)v);
    return *this;
  }
  GgufBuilder& strs(const std::string& key, const std::vector<std::string>& v) {
    kv(key, 9);
    put((uint32_t)8);
    put((uint64_t)v.size());
    for (const auto& s : v) put_str(s);
    return *this;
  }
  GgufBuilder& i32s(const std::string& key, const std::vector<int32_t>& v) {
    kv(key, 9);
    put((uint32_t)5);
    put((uint64_t)v.size());
    for (int32_t x : v) put(x);
    return *this;
  }
  GgufBuilder& f32s(const std::string& key, const std::vector<float>& v) {
    kv(key, 9);
    put((uint32_t)6);
    put((uint64_t)v.size());
    for (float x : v) put(x);
    return *this;
  }
  // An F32 tensor of shape `dims` (ne[0] first); element i holds values[i % values.size()].
  GgufBuilder& tensor_f32(const std::string& name, const std::vector<int64_t>& dims,
                          const std::vector<float>& values = {0.0f}) {
    Tensor t{name, dims, {}};
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    t.data.resize((size_t)n);
    for (int64_t i = 0; i < n; ++i) t.data[(size_t)i] = values[(size_t)i % values.size()];
    tensors_.push_back(std::move(t));
    return *this;
  }
  // Layout alignment of the tensor data (write general.alignment yourself to tell the reader).
  GgufBuilder& layout_alignment(uint64_t a) {
    alignment_ = a;
    return *this;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    auto app = [&](const void* p, size_t n) {
      out.insert(out.end(), (const uint8_t*)p, (const uint8_t*)p + n);
    };
    app("GGUF", 4);
    const uint32_t version = 3;
    const uint64_t n_tensors = tensors_.size(), n_kv = n_kv_;
    app(&version, 4);
    app(&n_tensors, 8);
    app(&n_kv, 8);
    out.insert(out.end(), body_.begin(), body_.end());
    if (tensors_.empty()) {
      while (out.size() % 32) out.push_back(0);
      return out;
    }
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const Tensor& t : tensors_) {
      offsets.push_back(offset);
      const uint64_t n = t.name.size();
      app(&n, 8);
      app(t.name.data(), t.name.size());
      const uint32_t n_dims = (uint32_t)t.dims.size(), type = 0;  // F32
      app(&n_dims, 4);
      for (int64_t d : t.dims) app(&d, 8);
      app(&type, 4);
      app(&offset, 8);
      offset += (t.data.size() * sizeof(float) + alignment_ - 1) / alignment_ * alignment_;
    }
    while (out.size() % alignment_) out.push_back(0);
    const size_t base = out.size();
    out.resize(base + offset, 0);
    for (size_t i = 0; i < tensors_.size(); ++i)
      std::memcpy(out.data() + base + offsets[i], tensors_[i].data.data(), tensors_[i].data.size() * sizeof(float));
    return out;
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> dims;
    std::vector<float> data;
  };
  template <typename T>
  void put(T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    body_.insert(body_.end(), b, b + sizeof(T));
  }
  void put_str(const std::string& s) {
    put((uint64_t)s.size());
    body_.insert(body_.end(), s.begin(), s.end());
  }
  void kv(const std::string& key, uint32_t type) {
    put_str(key);
    put(type);
    ++n_kv_;
  }
  std::vector<uint8_t> body_;
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
  uint64_t alignment_ = 32;
};

}  // namespace duo::test
