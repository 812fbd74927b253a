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
constexpr int kMaxArrayDepth = 4;        // arrays of arrays of ... at most this deep
constexpr uint32_t kMaxDims = 4;
constexpr uint32_t kMaxValueType = 12;
constexpr uint64_t kMinAlignment = 8;

// Smallest encodings, used to reject counts the remaining bytes cannot hold before anything
// is allocated for them.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;            // key length, value type, one-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name length, n_dims, one dim, type, offset

uint64_t min_value_bytes(uint32_t type) {
  switch (type) {
    case 0: case 1: case 7: return 1;
    case 2: case 3: return 2;
    case 4: case 5: case 6: return 4;
    case 8: return 8;        // string length
    case 9: return 4 + 8;    // element type + count
    default: return 8;       // 64-bit scalars
  }
}

const char* value_type_name(uint32_t t) {
  static const char* names[] = {"uint8", "int8",  "uint16", "int16", "uint32", "int32", "float32",
                                "bool",  "string", "array", "uint64", "int64", "float64"};
  return t <= kMaxValueType ? names[t] : "unknown";
}

// Bounds-checked little-endian reader over the file bytes. Every read checks the bytes left
// first, so a corrupt length can never make us read or allocate past the end. `where` names
// the item being parsed (key or tensor) for error messages.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& origin) : p_(data), size_(size), origin_(origin) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  const std::string& origin() const { return origin_; }
  std::string where;  // e.g. "key 'general.name'"; empty in the header

  [[noreturn]] void error(const std::string& msg) const {
    if (where.empty()) fail("{}: {} (at byte offset {})", origin_, msg, pos_);
    fail("{}: {}: {} (at byte offset {})", origin_, where, msg, pos_);
  }
  void need(uint64_t n, const char* what) const {
    if (n > left())
      error(fmt::format("truncated: {} needs {} bytes but the file has only {} left (file size {})", what, n,
                        left(), size_));
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
    if (n > left())
      error(fmt::format("truncated or corrupt: {} of length {} but the file has only {} bytes left", what, n,
                        left()));
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& origin_;
};

GgufValue read_value(Reader& r, uint32_t type, int depth);

GgufValue read_array(Reader& r, int depth) {
  if (depth >= kMaxArrayDepth) r.error(fmt::format("arrays nested deeper than {} levels", kMaxArrayDepth));
  const uint32_t elem = r.read<uint32_t>("array element type");
  if (elem > kMaxValueType) r.error(fmt::format("unknown array element type {}", elem));
  const uint64_t count = r.read<uint64_t>("array length");
  const uint64_t min_size = min_value_bytes(elem);
  if (count > r.left() / min_size)
    r.error(fmt::format("truncated or corrupt: array of {} {} elements cannot fit in the {} bytes left", count,
                        value_type_name(elem), r.left()));
  auto arr = std::make_shared<GgufArray>();
  arr->elem_type = static_cast<GgufValueType>(elem);
  arr->items.reserve(static_cast<size_t>(count));
  for (uint64_t i = 0; i < count; ++i) arr->items.push_back(read_value(r, elem, depth + 1));
  return arr;
}

GgufValue read_value(Reader& r, uint32_t type, int depth) {
  switch (type) {
    case 0: return static_cast<int64_t>(r.read<uint8_t>("uint8 value"));
    case 1: return static_cast<int64_t>(r.read<int8_t>("int8 value"));
    case 2: return static_cast<int64_t>(r.read<uint16_t>("uint16 value"));
    case 3: return static_cast<int64_t>(r.read<int16_t>("int16 value"));
    case 4: return static_cast<int64_t>(r.read<uint32_t>("uint32 value"));
    case 5: return static_cast<int64_t>(r.read<int32_t>("int32 value"));
    case 6: return static_cast<double>(r.read<float>("float32 value"));
    case 7: {
      const uint8_t b = r.read<uint8_t>("bool value");
      if (b > 1) r.error(fmt::format("bool value {} is neither 0 nor 1", b));
      return b == 1;
    }
    case 8: return r.read_string("string value");
    case 9: return read_array(r, depth);
    case 10: return r.read<uint64_t>("uint64 value");
    case 11: return r.read<int64_t>("int64 value");
    case 12: return r.read<double>("float64 value");
    default: r.error(fmt::format("unknown value type {}", type));
  }
}

// The type a value holds, for type-mismatch messages ("array of string", "integer", ...).
std::string held_type(const GgufValue& v) {
  switch (v.index()) {
    case 0: case 1: return "integer";
    case 2: return "float";
    case 3: return "bool";
    case 4: return "string";
    default: {
      const auto& a = std::get<std::shared_ptr<GgufArray>>(v);
      return fmt::format("array of {}", value_type_name(static_cast<uint32_t>(a->elem_type)));
    }
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
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; the
  // S_ISREG check below then refuses it (the flag changes nothing for a regular file).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
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
  if (st.st_size == 0) {
    ::close(fd);
    fail("{}: empty file (not a GGUF model)", path);
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  const int e = errno;
  ::close(fd);
  if (m == MAP_FAILED) fail("cannot map '{}': {}", path, std::strerror(e));
  f->data_ = static_cast<const uint8_t*>(m);
  f->size_ = size;
  f->mapped_ = true;  // from here on the destructor unmaps, also when parse() throws
  f->parse();
  return f;
}

std::unique_ptr<GgufFile> GgufFile::from_memory(const uint8_t* data, size_t size) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = "<memory>";
  if (size > 0) f->owned_.assign(data, data + size);
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

  // Header. A file too short for the magic is a truncated GGUF file only if what is there
  // begins the magic; "{}" (a 2-byte config.json) is simply not a GGUF file.
  if (size_ > 0 && size_ < 4 && std::memcmp(data_, "GGUF", size_) != 0)
    fail("{}: not a GGUF file (only {} bytes; a GGUF file starts with \"GGUF\")", origin, size_);
  const uint32_t magic = r.read<uint32_t>("magic");
  if (magic != kMagic) {
    char shown[5] = {};
    std::memcpy(shown, &magic, 4);
    for (char& c : shown)
      if (c && (c < 32 || c > 126)) c = '?';
    fail("{}: not a GGUF file (magic 0x{:08x} \"{}\", expected \"GGUF\")", origin, magic, shown);
  }
  version_ = r.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    fail("{}: unsupported GGUF version {} (supported: 2 and 3{})", origin, version_,
         version_ == 1 ? "; version 1 files use 32-bit counts and must be converted" : "");
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata count");
  if (n_kv > r.left() / kMinKvBytes)
    r.error(fmt::format("truncated or corrupt: metadata count {} is impossible, the {} bytes left hold at most {}",
                        n_kv, r.left(), r.left() / kMinKvBytes));

  // Metadata.
  for (uint64_t i = 0; i < n_kv; ++i) {
    r.where = fmt::format("metadata entry {}", i);
    std::string key = r.read_string("metadata key");
    r.where = fmt::format("key '{}'", key);
    if (kv_.count(key)) r.error("duplicate metadata key");
    const uint32_t type = r.read<uint32_t>("metadata value type");
    if (type > kMaxValueType) r.error(fmt::format("unknown value type {}", type));
    GgufValue v = read_value(r, type, 0);
    kv_.emplace(std::move(key), std::move(v));
  }
  r.where.clear();
  if (const GgufValue* a = find("general.alignment")) {
    if (a->index() > 1) fail("{}: general.alignment holds a {}, expected an integer", origin, held_type(*a));
    const int64_t s = a->index() == 0 ? std::get<int64_t>(*a) : 0;
    const uint64_t al = a->index() == 0 ? static_cast<uint64_t>(s) : std::get<uint64_t>(*a);
    if ((a->index() == 0 && s <= 0) || al == 0 || (al & (al - 1)) != 0)
      fail("{}: general.alignment {} is not a positive power of two", origin, to_string(*a));
    // Tensor data is read in place as float, fp16 and 8-byte-aligned blocks: an alignment below
    // 8 would let offsets misalign those loads (undefined behaviour in the kernels).
    if (al < kMinAlignment)
      fail("{}: general.alignment {} is less than {} (tensor data must be at least {}-byte aligned)", origin, al,
           kMinAlignment, kMinAlignment);
    alignment_ = al;
  }

  // Tensor directory. Checked here rather than with the header so that a truncated file
  // reports the metadata item it ends in.
  if (n_tensors > r.left() / kMinTensorInfoBytes)
    r.error(fmt::format("truncated or corrupt: tensor count {} is impossible, the {} bytes left hold at most {}",
                        n_tensors, r.left(), r.left() / kMinTensorInfoBytes));
  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    r.where = fmt::format("tensor {}", i);
    t.name = r.read_string("tensor name");
    r.where = fmt::format("tensor '{}'", t.name);
    if (tensor_index_.count(t.name)) r.error("duplicate tensor name");
    const uint32_t n_dims = r.read<uint32_t>("dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      r.error(fmt::format("has {} dimensions (supported: 1 to {})", n_dims, kMaxDims));
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t ne = r.read<int64_t>("dimension");
      if (ne <= 0) r.error(fmt::format("dimension {} is {} (must be at least 1)", d, ne));
      // Products stay below 2^62 so element and byte counts never overflow.
      if (static_cast<uint64_t>(ne) > (uint64_t{1} << 62) / n_el)
        r.error(fmt::format("absurd shape: dimension {} of {} makes more than 2^62 elements", d, ne));
      n_el *= static_cast<uint64_t>(ne);
      t.dims.push_back(ne);
    }
    const uint32_t raw_type = r.read<uint32_t>("tensor type");
    const TypeTraits* tt = type_traits(raw_type);
    if (!tt) r.error(fmt::format("unknown tensor type id {}", raw_type));
    t.type = static_cast<GgmlType>(raw_type);
    t.offset = r.read<uint64_t>("tensor data offset");
    if (t.dims[0] % tt->block_elems != 0)
      r.error(fmt::format("row of {} elements is not a multiple of the {} block size {}", t.dims[0], tt->name,
                          tt->block_elems));
    const uint64_t blocks = n_el / static_cast<uint64_t>(tt->block_elems);
    if (blocks > std::numeric_limits<uint64_t>::max() / tt->block_bytes) r.error("byte size overflows");
    t.nbytes = blocks * tt->block_bytes;
    if (t.offset % alignment_ != 0)
      r.error(fmt::format("data offset {} is not a multiple of the alignment {}", t.offset, alignment_));
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }
  r.where.clear();

  // Data section: starts at the first aligned offset after the directory.
  const uint64_t pos = r.pos();
  const uint64_t pad = (alignment_ - pos % alignment_) % alignment_;
  data_offset_ = pad > std::numeric_limits<uint64_t>::max() - pos ? std::numeric_limits<uint64_t>::max() : pos + pad;
  if (n_tensors > 0 && data_offset_ > size_)
    fail("{}: truncated: tensor data would start at byte {} (directory ends at {}, alignment {}) but the file has "
         "{} bytes",
         origin, data_offset_, pos, alignment_, size_);
  const uint64_t data_size = size_ > data_offset_ ? size_ - data_offset_ : 0;
  for (const auto& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      // Absolute end offset, saturated (only for the message).
      const uint64_t rel_end =
          t.nbytes > std::numeric_limits<uint64_t>::max() - t.offset ? std::numeric_limits<uint64_t>::max()
                                                                      : t.offset + t.nbytes;
      const uint64_t end = rel_end > std::numeric_limits<uint64_t>::max() - data_offset_
                               ? std::numeric_limits<uint64_t>::max()
                               : data_offset_ + rel_end;
      fail("{}: truncated: tensor '{}' ({} bytes at data offset {}) needs bytes up to {} but the file has {}",
           origin, t.name, t.nbytes, t.offset, end, size_);
    }
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
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("{}: key '{}': value {} does not fit a signed 64-bit integer", f.path(), key, u);
    return static_cast<int64_t>(u);
  }
  fail("{}: key '{}' holds a {}, expected an integer", f.path(), key, held_type(v));
}
double as_float(const GgufFile& f, const std::string& key, const GgufValue& v) {
  if (v.index() == 2) return std::get<double>(v);
  if (v.index() == 0) return static_cast<double>(std::get<int64_t>(v));
  if (v.index() == 1) return static_cast<double>(std::get<uint64_t>(v));
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
  if (a.elem_type != GgufValueType::STRING)
    fail("{}: key '{}' holds a {}, expected an array of string", path_, key, held_type(require(*this, key)));
  std::vector<std::string> out;
  out.reserve(a.items.size());
  for (const auto& it : a.items) out.push_back(std::get<std::string>(it));
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
  for (const auto& it : a.items) out.push_back(static_cast<float>(as_float(*this, key, it)));
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
    case 2: {
      // float32 values are widened to double: print them at float precision (1e-05, not
      // 9.999999747378752e-06).
      const double d = std::get<double>(v);
      const float f = static_cast<float>(d);
      return static_cast<double>(f) == d ? fmt::format("{}", f) : fmt::format("{}", d);
    }
    case 3: return std::get<bool>(v) ? "true" : "false";
    case 4: {
      const std::string& s = std::get<std::string>(v);
      constexpr size_t kMaxShown = 120;
      std::string out = "\"";
      for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '"') out += "\\\"";
        else if (c == '\\') out += "\\\\";
        else if (c < 32 || c == 127) out += fmt::format("\\x{:02x}", c);
        else out += static_cast<char>(c);
      }
      if (s.size() > kMaxShown) out += "...";
      return out + "\"";
    }
    default: {
      const GgufArray& a = *std::get<std::shared_ptr<GgufArray>>(v);
      std::string out =
          fmt::format("[{} x {}: ", a.items.size(), value_type_name(static_cast<uint32_t>(a.elem_type)));
      for (size_t i = 0; i < a.items.size() && i < max_items; ++i)
        out += (i ? ", " : "") + to_string(a.items[i], max_items < 4 ? max_items : 4);
      if (a.items.size() > max_items) out += ", ...";
      return out + "]";
    }
  }
}

}  // namespace duo
