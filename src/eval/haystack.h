// Natural-looking filler prose for needle-in-a-haystack and passkey tests. The text is
// generated here from original sentence templates and word lists (no benchmark text is
// copied), seeded and reproducible.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace duo {

// Sentences of generated prose; the i-th call with the same seed yields the same text.
std::vector<std::string> haystack_sentences(size_t count, uint64_t seed);

}  // namespace duo
