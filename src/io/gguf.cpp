#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace duo {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxArrayDepth = 4;
constexpr uint64_t kMaxDims = 4;

const char* value_type_name(uint32_t t) {
  static const char* names[] = {"uint8", "int8",  "uint16", "int16", "uint32", "int32", "float32",
                                "bool",  "string", "array", "uint64", "int64", "float64"};
  return t < 13 ? names[t] : "unknown";
}

// Bounds-checked little-endian reader over the file bytes. Every read checks the bytes left
// first, so a corrupt length can never make us read or allocate past the end.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& origin) : p_(data), size_(size), origin_(origin) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  void need(uint64_t n, const char* what) const {
    if (n > left())
      fail("{}: truncated file: {} needs {} bytes at offset {} but only {} remain", origin_, what, n, pos_, left());
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), (size_t)n);
    pos_ += (size_t)n;
    return s;
  }
  void seek(size_t pos) { pos_ = pos; }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& origin_;
};

GgufValue read_value(Reader& r, uint32_t type, const std::string& key, const std::string& origin, int depth);

GgufValue read_array(Reader& r, const std::string& key, const std::string& origin, int depth) {
  if (depth >= kMaxArrayDepth) fail("{}: key '{}': arrays nested deeper than {}", origin, key, kMaxArrayDepth);
  const uint32_t elem = r.read<uint32_t>("array element type");
  if (elem > 12) fail("{}: key '{}': unknown array element type {}", origin, key, elem);
  const uint64_t count = r.read<uint64_t>("array length");
  // Each element takes at least one byte (strings at least 8): reject counts the rest of the
  // file cannot hold before reserving memory for them.
  const uint64_t min_size = elem == 8 ? 8 : (elem == 9 ? 12 : 1);
  if (count > r.left() / min_size)
    fail("{}: key '{}': array of {} elements cannot fit in the {} bytes left", origin, key, count, r.left());
  auto arr = std::make_shared<GgufArray>();
  arr->elem_type = static_cast<GgufValueType>(elem);
  arr->items.reserve((size_t)count);
  for (uint64_t i = 0; i < count; ++i) arr->items.push_back(read_value(r, elem, key, origin, depth + 1));
  return arr;
}

GgufValue read_value(Reader& r, uint32_t type, const std::string& key, const std::string& origin, int depth) {
  switch (type) {
    case 0: return (int64_t)r.read<uint8_t>("uint8 value");
    case 1: return (int64_t)r.read<int8_t>("int8 value");
    case 2: return (int64_t)r.read<uint16_t>("uint16 value");
    case 3: return (int64_t)r.read<int16_t>("int16 value");
    case 4: return (int64_t)r.read<uint32_t>("uint32 value");
    case 5: return (int64_t)r.read<int32_t>("int32 value");
    case 6: return (double)r.read<float>("float32 value");
    case 7: {
      const uint8_t b = r.read<uint8_t>("bool value");
      if (b > 1) fail("{}: key '{}': bool value {} is neither 0 nor 1", origin, key, b);
      return b == 1;
    }
    case 8: return r.read_string("string value");
    case 9: return read_array(r, key, origin, depth);
    case 10: return r.read<uint64_t>("uint64 value");
    case 11: return r.read<int64_t>("int64 value");
    case 12: return r.read<double>("float64 value");
    default: fail("{}: key '{}': unknown value type {}", origin, key, type);
  }
}

const char* held_type(const GgufValue& v) {
  switch (v.index()) {
    case 0: case 1: return "integer";
    case 2: return "float";
    case 3: return "bool";
    case 4: return "string";
    default: return "array";
  }
}

}  // namespace

int64_t GgufTensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open '{}': {}", path, std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail("cannot stat '{}': {}", path, std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("'{}' is not a regular file", path);
  }
  f->size_ = (size_t)st.st_size;
  if (f->size_ == 0) {
    ::close(fd);
    fail("{}: empty file (not a GGUF model)", path);
  }
  void* m = mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) fail("cannot map '{}': {}", path, std::strerror(errno));
  f->data_ = static_cast<const uint8_t*>(m);
  f->mapped_ = true;
  f->parse();
  return f;
}

std::unique_ptr<GgufFile> GgufFile::from_memory(const uint8_t* data, size_t size) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = "<memory>";
  f->owned_.assign(data, data + size);
  f->data_ = f->owned_.data();
  f->size_ = size;
  f->parse();
  return f;
}

GgufFile::~GgufFile() {
  if (mapped_) munmap(const_cast<uint8_t*>(data_), size_);
}

void GgufFile::parse() {
  const std::string& origin = path_;
  Reader r(data_, size_, origin);
  const uint32_t magic = r.read<uint32_t>("magic");
  if (magic != kMagic) fail("{}: not a GGUF file (bad magic 0x{:08x})", origin, magic);
  version_ = r.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    fail("{}: unsupported GGUF version {} (supported: 2, 3)", origin, version_);
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata count");
  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at
  // least 8 + 4 + 4 + 8.
  if (n_kv > r.left() / 13) fail("{}: metadata count {} is impossible for a file of {} bytes", origin, n_kv, size_);
  if (n_tensors > r.left() / 24)
    fail("{}: tensor count {} is impossible for a file of {} bytes", origin, n_tensors, size_);

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.read_string("metadata key");
    const uint32_t type = r.read<uint32_t>("metadata value type");
    if (type > 12) fail("{}: key '{}': unknown value type {}", origin, key, type);
    GgufValue v = read_value(r, type, key, origin, 0);
    if (kv_.count(key)) fail("{}: duplicate metadata key '{}'", origin, key);
    kv_.emplace(std::move(key), std::move(v));
  }
  if (const GgufValue* a = find("general.alignment")) {
    if (a->index() > 1) fail("{}: general.alignment must be an integer", origin);
    const uint64_t al = a->index() == 0 ? (uint64_t)std::get<int64_t>(*a) : std::get<uint64_t>(*a);
    if (al == 0 || (al & (al - 1)) != 0 || al > (1u << 20))
      fail("{}: general.alignment {} is not a power of two up to 1 MiB", origin, al);
    alignment_ = al;
  }

  tensors_.reserve((size_t)n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = r.read_string("tensor name");
    const uint32_t n_dims = r.read<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      fail("{}: tensor '{}' has {} dimensions (supported: 1 to {})", origin, t.name, n_dims, kMaxDims);
    int64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t ne = r.read<int64_t>("tensor dimension");
      if (ne <= 0) fail("{}: tensor '{}' dimension {} is {}", origin, t.name, d, ne);
      if (ne > std::numeric_limits<int64_t>::max() / n_el)
        fail("{}: tensor '{}' has an absurd number of elements", origin, t.name);
      n_el *= ne;
      t.dims.push_back(ne);
    }
    const uint32_t raw_type = r.read<uint32_t>("tensor type");
    const TypeTraits* tt = type_traits(raw_type);
    if (!tt) fail("{}: tensor '{}' has unknown type id {}", origin, t.name, raw_type);
    t.type = static_cast<GgmlType>(raw_type);
    t.offset = r.read<uint64_t>("tensor offset");
    if (t.dims[0] % tt->block_elems != 0)
      fail("{}: tensor '{}' row of {} elements is not a multiple of the {} block size {}", origin, t.name,
           t.dims[0], tt->name, tt->block_elems);
    const uint64_t blocks = (uint64_t)(n_el / tt->block_elems);
    if (blocks > std::numeric_limits<uint64_t>::max() / tt->block_bytes)
      fail("{}: tensor '{}' byte size overflows", origin, t.name);
    t.nbytes = blocks * tt->block_bytes;
    if (t.offset % alignment_ != 0)
      fail("{}: tensor '{}' offset {} is not aligned to {}", origin, t.name, t.offset, alignment_);
    if (tensor_index_.count(t.name)) fail("{}: duplicate tensor name '{}'", origin, t.name);
    tensor_index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  data_offset_ = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_offset_ > size_)
    fail("{}: truncated file: tensor data would start at {} but the file has {} bytes", origin, data_offset_, size_);
  const uint64_t data_size = size_ > data_offset_ ? size_ - data_offset_ : 0;
  for (const auto& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: truncated or corrupt file: tensor '{}' ({} bytes at data offset {}) ends past the end of the file "
           "({} bytes of tensor data)",
           origin, t.name, t.nbytes, t.offset, data_size);
  }
}

bool GgufFile::has(const std::string& key) const { return kv_.count(key) != 0; }

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {
const GgufValue& require(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.find(key);
  if (!v) fail("{}: metadata key '{}' is missing", f.path(), key);
  return *v;
}
int64_t as_int(const GgufFile& f, const std::string& key, const GgufValue& v) {
  if (v.index() == 0) return std::get<int64_t>(v);
  if (v.index() == 1) {
    const uint64_t u = std::get<uint64_t>(v);
    if (u > (uint64_t)std::numeric_limits<int64_t>::max()) fail("{}: key '{}': value {} is too large", f.path(), key, u);
    return (int64_t)u;
  }
  fail("{}: key '{}' holds a {}, expected an integer", f.path(), key, held_type(v));
}
double as_float(const GgufFile& f, const std::string& key, const GgufValue& v) {
  if (v.index() == 2) return std::get<double>(v);
  if (v.index() <= 1) return (double)as_int(f, key, v);
  fail("{}: key '{}' holds a {}, expected a number", f.path(), key, held_type(v));
}
const GgufArray& as_array(const GgufFile& f, const std::string& key, const GgufValue& v) {
  if (v.index() != 5) fail("{}: key '{}' holds a {}, expected an array", f.path(), key, held_type(v));
  return *std::get<std::shared_ptr<GgufArray>>(v);
}
}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  if (v.index() != 4) fail("{}: key '{}' holds a {}, expected a string", path_, key, held_type(v));
  return std::get<std::string>(v);
}
int64_t GgufFile::get_int(const std::string& key) const { return as_int(*this, key, require(*this, key)); }
double GgufFile::get_float(const std::string& key) const { return as_float(*this, key, require(*this, key)); }
bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  if (v.index() != 3) fail("{}: key '{}' holds a {}, expected a bool", path_, key, held_type(v));
  return std::get<bool>(v);
}
std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufArray& a = as_array(*this, key, require(*this, key));
  std::vector<std::string> out;
  out.reserve(a.items.size());
  for (const auto& it : a.items) {
    if (it.index() != 4) fail("{}: key '{}' is an array of {}, expected strings", path_, key, held_type(it));
    out.push_back(std::get<std::string>(it));
  }
  return out;
}
std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufArray& a = as_array(*this, key, require(*this, key));
  std::vector<int64_t> out;
  out.reserve(a.items.size());
  for (const auto& it : a.items) out.push_back(as_int(*this, key, it));
  return out;
}
std::vector<float> GgufFile::get_float_array(const std::string& key) const {
  const GgufArray& a = as_array(*this, key, require(*this, key));
  std::vector<float> out;
  out.reserve(a.items.size());
  for (const auto& it : a.items) out.push_back((float)as_float(*this, key, it));
  return out;
}
std::optional<std::string> GgufFile::opt_string(const std::string& key) const {
  return has(key) ? std::optional<std::string>(get_string(key)) : std::nullopt;
}
std::optional<int64_t> GgufFile::opt_int(const std::string& key) const {
  return has(key) ? std::optional<int64_t>(get_int(key)) : std::nullopt;
}
std::optional<double> GgufFile::opt_float(const std::string& key) const {
  return has(key) ? std::optional<double>(get_float(key)) : std::nullopt;
}
std::optional<bool> GgufFile::opt_bool(const std::string& key) const {
  return has(key) ? std::optional<bool>(get_bool(key)) : std::nullopt;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) fail("{}: tensor '{}' is missing", path_, name);
  return *t;
}

std::string to_string(const GgufValue& v, size_t max_items) {
  switch (v.index()) {
    case 0: return std::to_string(std::get<int64_t>(v));
    case 1: return std::to_string(std::get<uint64_t>(v));
    case 2: return fmt::format("{}", std::get<double>(v));
    case 3: return std::get<bool>(v) ? "true" : "false";
    case 4: {
      const std::string& s = std::get<std::string>(v);
      std::string shown = s.size() > 120 ? s.substr(0, 120) + "..." : s;
      for (char& c : shown)
        if (c == '\n') c = ' ';
      return "\"" + shown + "\"";
    }
    default: {
      const GgufArray& a = *std::get<std::shared_ptr<GgufArray>>(v);
      std::string out = fmt::format("[{} x {}: ", a.items.size(), value_type_name((uint32_t)a.elem_type));
      for (size_t i = 0; i < a.items.size() && i < max_items; ++i) out += (i ? ", " : "") + to_string(a.items[i], 4);
      if (a.items.size() > max_items) out += ", ...";
      return out + "]";
    }
  }
}

}  // namespace duo
