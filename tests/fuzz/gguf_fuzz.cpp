// libFuzzer entry: any byte string must either parse or fail with duo::Error. A crash, a
// sanitizer report, or any other exception (bad_alloc included) is a finding.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/gguf.h"
#include "model/config.h"
#include "tokenizer/vocab.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<duo::GgufFile> f;
  try {
    f = duo::GgufFile::from_memory(data, size);
  } catch (const duo::Error&) {
    return 0;
  }
  // Everything a parsed file claims must be readable: touch each value and tensor byte range.
  volatile size_t sink = 0;
  for (const auto& [k, v] : f->metadata()) sink += duo::to_string(v).size() + k.size();
  for (const auto& t : f->tensors()) {
    if (t.nbytes == 0) continue;
    const uint8_t* p = f->tensor_data(t);
    sink += p[0] + p[t.nbytes - 1];
  }
  // The readers that interpret metadata must also fail cleanly.
  try {
    duo::ModelConfig::from_gguf(*f);
  } catch (const duo::Error&) {
  }
  try {
    duo::load_vocab(*f);
  } catch (const duo::Error&) {
  }
  (void)sink;
  return 0;
}
