#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace duo {

namespace {

// The format's own limit on the header (safetensors refuses larger ones as a denial of service).
constexpr uint64_t kMaxHeader = 100u << 20;

struct DtypeInfo {
  const char* name;
  size_t bytes;
  std::optional<GgmlType> type;
};

// Every dtype of the format, so that sizes are checked for all and a dtype the engine cannot
// compute with is named in the error when its tensor is used, not when the file is opened.
const DtypeInfo* dtype_info(const std::string& s) {
  static const DtypeInfo k[] = {
      {"F32", 4, GgmlType::F32}, {"F16", 2, GgmlType::F16}, {"BF16", 2, GgmlType::BF16},
      {"F64", 8, {}},            {"I64", 8, {}},            {"U64", 8, {}},
      {"I32", 4, {}},            {"U32", 4, {}},            {"I16", 2, {}},
      {"U16", 2, {}},            {"I8", 1, {}},             {"U8", 1, {}},
      {"BOOL", 1, {}},           {"F8_E4M3", 1, {}},        {"F8_E5M2", 1, {}},
  };
  for (const auto& d : k)
    if (s == d.name) return &d;
  return nullptr;
}

}  // namespace

int64_t SafetensorsTensor::n_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("cannot open '{}': {}", path, std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("'{}' is not a regular file", path);
  }
  const size_t size = (size_t)st.st_size;
  if (size < 8) {
    ::close(fd);
    fail("{}: truncated safetensors file ({} bytes, the header length alone takes 8)", path, size);
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  const int e = errno;
  ::close(fd);
  if (m == MAP_FAILED) fail("cannot map '{}': {}", path, std::strerror(e));
  f->data_ = static_cast<const uint8_t*>(m);
  f->size_ = size;
  f->mapped_ = true;  // the destructor unmaps, also when parse() throws
  f->parse();
  return f;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::from_memory(const uint8_t* data, size_t size,
                                                              const std::string& name) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = name;
  if (size > 0) f->owned_.assign(data, data + size);
  f->data_ = f->owned_.data();
  f->size_ = size;
  f->parse();
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapped_) munmap(const_cast<uint8_t*>(data_), size_);
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void SafetensorsFile::parse() {
  const std::string& p = path_;
  DUO_CHECK(size_ >= 8, "{}: truncated safetensors file ({} bytes, the header length alone takes 8)", p, size_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data_[i];  // little-endian u64
  DUO_CHECK(n <= kMaxHeader, "{}: safetensors header length {} exceeds the format's limit of {} bytes", p, n,
            kMaxHeader);
  DUO_CHECK(n <= size_ - 8, "{}: truncated safetensors header ({} bytes declared, {} in the file)", p, n, size_ - 8);
  const uint8_t* data = data_ + 8 + n;
  const uint64_t data_size = size_ - 8 - n;
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(data_ + 8, data_ + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: the safetensors header is not valid JSON: {}", p, e.what());
  }
  DUO_CHECK(h.is_object(), "{}: the safetensors header is not a JSON object", p);
  std::vector<std::pair<uint64_t, uint64_t>> extents;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      DUO_CHECK(v.is_object(), "{}: __metadata__ is not an object", p);
      for (auto m = v.begin(); m != v.end(); ++m)
        if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    DUO_CHECK(v.is_object() && v.contains("dtype") && v["dtype"].is_string() && v.contains("shape") &&
                  v["shape"].is_array() && v.contains("data_offsets") && v["data_offsets"].is_array() &&
                  v["data_offsets"].size() == 2,
              "{}: tensor '{}' has no dtype, shape and data_offsets [begin, end]", p, name);
    SafetensorsTensor t;
    t.name = name;
    t.dtype = v["dtype"].get<std::string>();
    const DtypeInfo* d = dtype_info(t.dtype);
    DUO_CHECK(d != nullptr, "{}: tensor '{}' has unknown dtype '{}'", p, name, t.dtype);
    t.type = d->type;
    uint64_t elems = 1;
    for (const auto& s : v["shape"]) {
      DUO_CHECK(s.is_number_unsigned(), "{}: tensor '{}' has a shape entry that is not a non-negative integer", p,
                name);
      const uint64_t x = s.get<uint64_t>();
      // Bounded so that the products below cannot overflow: no tensor has 2^40 elements.
      DUO_CHECK(x < (1ull << 40) && (x == 0 || elems <= (1ull << 40) / x), "{}: tensor '{}' is too large", p, name);
      elems *= x;
      t.shape.push_back((int64_t)x);
    }
    const auto& off = v["data_offsets"];
    DUO_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(),
              "{}: tensor '{}' has data_offsets that are not non-negative integers", p, name);
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    DUO_CHECK(b <= e, "{}: tensor '{}' has data_offsets [{}, {}] that end before they begin", p, name, b, e);
    DUO_CHECK(e - b == elems * d->bytes, "{}: tensor '{}' holds {} bytes, its shape and dtype {} need {}", p, name,
              e - b, t.dtype, elems * d->bytes);
    DUO_CHECK(e <= data_size, "{}: truncated safetensors data: tensor '{}' ends at byte {} of a data section of {}", p,
              name, e, data_size);
    t.data = data + b;
    t.nbytes = e - b;
    extents.emplace_back(b, e);
    tensors_.emplace(name, std::move(t));
  }
  // Tensors must not share bytes (as the format's own reader checks): a file whose tensors
  // overlap was not written by a safetensors writer.
  std::sort(extents.begin(), extents.end());
  for (size_t i = 1; i < extents.size(); ++i)
    DUO_CHECK(extents[i].first >= extents[i - 1].second, "{}: tensors overlap at data offset {}", p,
              extents[i].first);
}

}  // namespace duo
