// Builds small in-memory GGUF files (metadata only, no tensors) for tokenizer tests.
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
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    auto app = [&](const void* p, size_t n) {
      out.insert(out.end(), (const uint8_t*)p, (const uint8_t*)p + n);
    };
    app("GGUF", 4);
    const uint32_t version = 3;
    const uint64_t n_tensors = 0, n_kv = n_kv_;
    app(&version, 4);
    app(&n_tensors, 8);
    app(&n_kv, 8);
    out.insert(out.end(), body_.begin(), body_.end());
    while (out.size() % 32) out.push_back(0);
    return out;
  }

 private:
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
};

}  // namespace duo::test
