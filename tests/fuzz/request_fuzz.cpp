// libFuzzer entry for the OpenAI request parser: any body, for either endpoint, is either a
// request or an ApiError with a 4xx status. Any other exception, a crash or a sanitizer
// report is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "serve/api_error.h"
#include "serve/request.h"

// The parser names attention modes in its messages with duo::to_string, which lives in the
// engine (not linked into this target: it would pull in the whole model code); the same names.
namespace duo {
const char* to_string(AttentionMode m) {
  switch (m) {
    case AttentionMode::Full: return "full";
    case AttentionMode::Streaming: return "streaming";
    case AttentionMode::Duo: return "duo";
  }
  return "?";
}
}  // namespace duo

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  for (auto ep : {duo::serve::Endpoint::Completions, duo::serve::Endpoint::ChatCompletions}) {
    try {
      const duo::serve::GenerationRequest r = duo::serve::parse_request(ep, body);
      if (r.stop.size() > duo::serve::kMaxStopStrings) __builtin_trap();
      for (const std::string& s : r.stop)
        if (s.empty() || s.size() > duo::serve::kMaxStopLength) __builtin_trap();
      if (r.max_tokens && *r.max_tokens < 1) __builtin_trap();
    } catch (const duo::serve::ApiError& e) {
      if (e.status < 400 || e.status >= 500) __builtin_trap();
    }
  }
  return 0;
}
