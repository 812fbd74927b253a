// Text pieces of the RULER-style tasks (eval/ruler_tasks.h): haystack sentences of several
// kinds and the keys and values hidden in them. Everything is generated here from original
// templates and word lists (no benchmark text is copied), seeded and reproducible. No haystack
// kind contains a digit, a hyphen or an upper-case run of five letters, so numbers, UUIDs,
// hyphenated word values and VT variable names can only come from the needles.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace duo {

enum class RulerHaystack { Repeat, Prose, Code, Needles };
const char* to_string(RulerHaystack h);
RulerHaystack parse_ruler_haystack(const std::string& s);  // "repeat" | "prose" | "code" | "needles"

// `count` haystack pieces of one kind, each with its own leading separator (a space before
// a sentence, a newline before a line of code), so pieces concatenate into text. Needles is
// not a text kind (the tasks draw distractor needles themselves): an error here.
std::vector<std::string> ruler_filler(RulerHaystack kind, size_t count, uint64_t seed);

// Keys and values. Word keys and values are hyphenated pairs ("amber-falcon", values from
// other lists than keys); UUIDs are random version-4 style hex; numbers have 7 digits.
std::string ruler_word_key(std::mt19937_64& rng);
std::string ruler_word_value(std::mt19937_64& rng);
std::string ruler_uuid(std::mt19937_64& rng);
std::string ruler_number(std::mt19937_64& rng, int digits = 7);
// Upper-case variable name of five letters (variable tracking).
std::string ruler_variable(std::mt19937_64& rng);
// Pronounceable lower-case pseudo-word of three consonant-vowel syllables (common words).
std::string ruler_pseudo_word(std::mt19937_64& rng);
// Random lower-case letters (the coded words of frequent-words extraction).
std::string ruler_coded_word(std::mt19937_64& rng, int letters = 5);

}  // namespace duo
