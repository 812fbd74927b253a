// libFuzzer entry for the GGUF reader: any byte string must either parse or fail with
// duo::Error. A crash, a sanitizer report, a hang, or any other exception (std::bad_alloc,
// std::length_error, ...) escaping is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/error.h"
#include "io/gguf.h"

namespace {

volatile size_t g_sink = 0;

void touch(const duo::GgufValue& v) {
  if (const auto* a = std::get_if<std::shared_ptr<duo::GgufArray>>(&v)) {
    for (const auto& item : (*a)->items) touch(item);
  } else if (const auto* s = std::get_if<std::string>(&v)) {
    if (!s->empty()) g_sink = g_sink + static_cast<uint8_t>(s->front()) + static_cast<uint8_t>(s->back());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<duo::GgufFile> f;
  try {
    f = duo::GgufFile::from_memory(data, size);
  } catch (const duo::Error&) {
    return 0;
  }
  // Everything a parsed file claims must be readable: every metadata value (also through the
  // printer and the typed accessors) and the first and last byte of every tensor.
  for (const auto& [key, value] : f->metadata()) {
    touch(value);
    g_sink = g_sink + duo::to_string(value).size();
    try {
      g_sink = g_sink + static_cast<size_t>(f->get_int(key));
    } catch (const duo::Error&) {
    }
    try {
      g_sink = g_sink + f->get_string_array(key).size() + f->get_float_array(key).size();
    } catch (const duo::Error&) {
    }
  }
  for (const auto& t : f->tensors()) {
    if (f->find_tensor(t.name) != &t) __builtin_trap();  // the name index must be consistent
    if (t.nbytes == 0 || t.n_elements() <= 0) __builtin_trap();
    const uint8_t* p = f->tensor_data(t);
    g_sink = g_sink + p[0] + p[t.nbytes - 1];
  }
  return 0;
}
