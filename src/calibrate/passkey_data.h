// Synthetic multi-passkey retrieval samples for gate calibration (docs/calibration.md "Data"; the
// reference's MultiplePasskeyRetrievalDataset): a book of generated prose (src/eval/haystack)
// with several passkeys of NATO-alphabet words inserted at random depths, each announced as
// "the first/second/... passkey to the vault", then one question per passkey, each followed by
// its answer, in the model's chat template (a multi-turn chat: the book and the first question
// in the first user turn, each answer an assistant turn, each later question a user turn).
// The loss looks at the rows PasskeyDataConfig::loss_rows names (by default the answer tokens);
// the sample ends with the last answer token (later tokens cannot influence the loss under causal
// attention).
//
// Lengths count every token of the sample. Everything is drawn from the caller's generator,
// so a seeded generator gives the same samples on every run.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace duo {

class Tokenizer;

// Which positions of a sample the distillation loss compares.
enum class LossRows {
  Answers,      // the answer tokens themselves (the hidden states at them; their logits predict the
                // token after each: the second word of a passkey ... the end of the turn)
  Predictions,  // the positions whose next token is an answer token (each answer span one back): the
                // last question/template token, whose prediction is the passkey's first word, is the
                // step that must find the needle; the later words can be copied from it
  FirstWords,   // only the position that predicts each answer's first token: the question -> needle
                // lookup alone (one row a passkey)
  Questions,    // every position from the end of the book on: questions, template and answers (the
                // reference's label mask, which covers its questions and answers)
};
LossRows parse_loss_rows(const std::string& name);  // "answers", "predictions", "first", "questions"
const char* to_string(LossRows rows);

struct PasskeyDataConfig {
  // Total tokens of a sample. min_len 0: kAutoHaystack tokens of haystack plus what the
  // passkeys, questions and answers can take (the reference's minimum context of 1000 counts
  // the haystack only), resolved by the generator.
  int64_t min_len = 0, max_len = 32000;
  int length_intervals = 50;                // lengths drawn from this many evenly spaced values
  int n_passkeys = 10;
  int passkey_words = 32;                   // words per passkey
  double min_depth = 0.05, max_depth = 0.95;
  int depth_intervals = 20;                 // distinct depths drawn from this many evenly spaced values
  LossRows loss_rows = LossRows::Answers;
  static constexpr int64_t kAutoHaystack = 1000;
  void validate() const;
};

struct PasskeySample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> answer_mask;  // 1 at the tokens of the answers
  std::vector<int64_t> loss_rows;    // positions the loss compares (PasskeyDataConfig::loss_rows), ascending
  std::vector<std::string> passkeys;  // in order of appearance ("alpha bravo ...")
  std::vector<std::vector<int64_t>> answer_spans;  // per passkey: [begin, end) token range of its answer
  std::vector<int64_t> needle_positions;  // token position where each passkey's needle starts
  std::vector<double> depths;
};

// Something that produces training samples from a random generator (the passkey generator; tests
// use random tokens).
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual PasskeySample next(std::mt19937_64& rng) = 0;
};

class PasskeyGenerator : public SampleSource {
 public:
  // tmpl: the model's chat template, or null for the reference's plain-text layout.
  PasskeyGenerator(const Tokenizer& tok, const ChatTemplate* tmpl, PasskeyDataConfig cfg);

  // Draws a length, depths, passkeys and a haystack seed, then builds the sample.
  PasskeySample next(std::mt19937_64& rng) override;
  // A sample of exactly `length` tokens with these passkeys (n_passkeys of them) at these
  // depths (ascending, in [0, 1]); errors when the length leaves no room for the haystack.
  PasskeySample build(int64_t length, const std::vector<std::string>& passkeys, const std::vector<double>& depths,
                      uint64_t haystack_seed) const;
  // Tokens a sample needs besides its haystack, for these passkeys.
  int64_t fixed_tokens(const std::vector<std::string>& passkeys) const;
  // ... and at most, for passkeys made of the word that takes the most tokens.
  int64_t max_fixed_tokens() const { return max_fixed_; }

  const PasskeyDataConfig& config() const { return cfg_; }  // min_len resolved
  static const std::vector<std::string>& alphabet();  // "alpha" ... "zulu"

 private:
  const Tokenizer& tok_;
  bool chat_ = false;
  ChatTemplate tmpl_;
  PasskeyDataConfig cfg_;
  int64_t max_fixed_ = 0;
};

// Uniform integer in [0, n) and uniform double in [0, 1) from the raw generator output
// (portable: not the implementation-defined std distributions).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n);

// A sample length drawn from `intervals` evenly spaced values in [min_len, max_len] (min_len
// alone when intervals is 1 or the range is empty; then nothing is drawn).
int64_t draw_sample_length(std::mt19937_64& rng, int64_t min_len, int64_t max_len, int intervals);

// Sets s.answer_mask (1 at the tokens of s.answer_spans) and s.loss_rows as `rows` defines them
// (LossRows above): every sample source marks its answers through this one definition.
// questions_begin: the first position after the context (LossRows::Questions runs from it to the end).
void mark_answers(PasskeySample& s, LossRows rows, int64_t questions_begin);
double uniform_unit(std::mt19937_64& rng);

}  // namespace duo
