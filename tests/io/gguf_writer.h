// A minimal GGUF writer for tests and the fuzz seed corpus: builds valid files in memory so
// that every corruption of them can be tried.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace duo::test {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3, uint64_t alignment = 32) : version_(version), alignment_(alignment) {}

  void kv_u32(const std::string& k, uint32_t v) { key(k, 4), put(v); }
  void kv_i32(const std::string& k, int32_t v) { key(k, 5), put(v); }
  void kv_f32(const std::string& k, float v) { key(k, 6), put(v); }
  void kv_bool(const std::string& k, bool v) { key(k, 7), put((uint8_t)v); }
  void kv_str(const std::string& k, const std::string& v) { key(k, 8), str(v); }
  void kv_u64(const std::string& k, uint64_t v) { key(k, 10), put(v); }
  void kv_i64(const std::string& k, int64_t v) { key(k, 11), put(v); }
  void kv_f64(const std::string& k, double v) { key(k, 12), put(v); }
  void kv_u8(const std::string& k, uint8_t v) { key(k, 0), put(v); }
  void kv_i16(const std::string& k, int16_t v) { key(k, 3), put(v); }
  void kv_str_array(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9), put((uint32_t)8), put((uint64_t)v.size());
    for (const auto& s : v) str(s);
  }
  void kv_i32_array(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9), put((uint32_t)5), put((uint64_t)v.size());
    for (int32_t x : v) put(x);
  }
  void kv_f32_array(const std::string& k, const std::vector<float>& v) {
    key(k, 9), put((uint32_t)6), put((uint64_t)v.size());
    for (float x : v) put(x);
  }
  // A tensor with its raw bytes; offsets are assigned in order, aligned.
  void tensor(const std::string& name, uint32_t type, const std::vector<int64_t>& dims, const std::vector<uint8_t>& data) {
    tensors_.push_back({name, type, dims, data});
  }
  size_t n_kv() const { return n_kv_; }

  std::vector<uint8_t> build() const {
    std::vector<uint8_t> out;
    auto put_out = [&](const void* p, size_t n) {
      const auto* b = static_cast<const uint8_t*>(p);
      out.insert(out.end(), b, b + n);
    };
    const uint32_t magic = 0x46554747;
    put_out(&magic, 4);
    put_out(&version_, 4);
    const uint64_t nt = tensors_.size(), nk = n_kv_;
    put_out(&nt, 8);
    put_out(&nk, 8);
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const auto& t : tensors_) {
      const uint64_t len = t.name.size();
      put_out(&len, 8);
      put_out(t.name.data(), len);
      const uint32_t nd = (uint32_t)t.dims.size();
      put_out(&nd, 4);
      for (int64_t d : t.dims) put_out(&d, 8);
      put_out(&t.type, 4);
      put_out(&offset, 8);
      offsets.push_back(offset);
      offset += (t.data.size() + alignment_ - 1) / alignment_ * alignment_;
    }
    while (out.size() % alignment_) out.push_back(0);
    const size_t base = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out.resize(base + offsets[i]);
      out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
    }
    return out;
  }

 private:
  struct T {
    std::string name;
    uint32_t type;
    std::vector<int64_t> dims;
    std::vector<uint8_t> data;
  };
  template <typename V>
  void put(V v) {
    const auto* b = reinterpret_cast<const uint8_t*>(&v);
    kv_.insert(kv_.end(), b, b + sizeof(V));
  }
  void str(const std::string& s) {
    put((uint64_t)s.size());
    kv_.insert(kv_.end(), s.begin(), s.end());
  }
  void key(const std::string& k, uint32_t type) {
    str(k);
    put(type);
    ++n_kv_;
  }
  uint32_t version_;
  uint64_t alignment_;
  std::vector<uint8_t> kv_;
  size_t n_kv_ = 0;
  std::vector<T> tensors_;
};

}  // namespace duo::test
