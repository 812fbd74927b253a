// libFuzzer entry for the safetensors reader: any byte string must either parse or fail with
// duo::Error. A crash, a sanitizer report, a hang, or any other exception escaping is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/error.h"
#include "io/safetensors.h"

namespace {
volatile size_t g_sink = 0;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<duo::SafetensorsFile> f;
  try {
    f = duo::SafetensorsFile::from_memory(data, size);
  } catch (const duo::Error&) {
    return 0;
  }
  // Everything a parsed file claims must be readable: the first and last byte of every tensor.
  for (const auto& [name, t] : f->tensors()) {
    if (t.nbytes > 0) g_sink = g_sink + t.data[0] + t.data[t.nbytes - 1];
    g_sink = g_sink + (size_t)t.n_elements() + name.size();
  }
  return 0;
}
