// libFuzzer entry for chat templates and duo's Jinja implementation. The input is a Jinja
// template text and a conversation, separated by NUL bytes: TEMPLATE \0 ROLE CONTENT \0 ROLE
// CONTENT ... (ROLE is one byte: system, user, assistant or something else). The template is
// parsed (or refused with duo::Error) and the conversation rendered with it (under small work
// bounds: a hostile template must end, quickly, with duo::Error) and with the real templates of
// the fetched models, then encoded with their vocabularies. Findings: besides crashes, hangs and
// sanitizer reports, any exception other than duo::Error, parts that do not concatenate to
// apply_chat_template's string, and a conversation whose tokens hold a different number of
// <|im_start|> than the template's own text wrote (a message forged a turn).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz_vocabs.h"
#include "tokenizer/chat_template.h"

namespace {

struct RealTemplate {
  duo::ChatTemplate chat;
  const duo::Tokenizer* tok;
};

const std::vector<RealTemplate>& real_templates() {
  static const std::vector<RealTemplate> t = [] {
    std::vector<RealTemplate> out;
    const auto& toks = duo::fuzz::tokenizers();
    size_t i = 0;
    for (const std::string& f : duo::fuzz::model_files())
      if (auto g = duo::fuzz::open_model(f)) out.push_back({duo::ChatTemplate::from_gguf(*g), toks[i++].get()});
    return out;
  }();
  return t;
}

void render(const duo::ChatTemplate& t, const duo::Tokenizer* tok, const std::vector<duo::ChatMessage>& msgs, bool gen) {
  std::vector<duo::PromptPart> parts;
  try {
    parts = duo::render_chat_template(t, msgs, gen);
  } catch (const duo::Error&) {
    return;
  }
  std::string joined;
  size_t markers = 0;
  for (const auto& p : parts) {
    joined += p.text;
    markers += p.special && p.text == "<|im_start|>";
  }
  if (joined != duo::apply_chat_template(t, msgs, gen)) __builtin_trap();
  if (!tok) return;
  const int32_t im_start = tok->token_id("<|im_start|>");
  const std::vector<int32_t> ids = duo::encode_chat(*tok, t, msgs, gen);
  if (im_start < 0) return;
  size_t n = 0;
  for (int32_t id : ids) n += id == im_start;
  if (n != markers) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> fields;
  for (size_t at = 0;;) {
    const size_t nul = in.find('\0', at);
    fields.push_back(in.substr(at, nul == std::string::npos ? std::string::npos : nul - at));
    if (nul == std::string::npos) break;
    at = nul + 1;
  }
  static const char* const kRoles[] = {"system", "user", "assistant", "tool"};
  std::vector<duo::ChatMessage> msgs;
  for (size_t i = 1; i < fields.size(); ++i)
    if (!fields[i].empty()) msgs.push_back({kRoles[uint8_t(fields[i][0]) % 4], fields[i].substr(1)});
  const bool gen = size % 2 == 0;
  const auto& reals = real_templates();
  const duo::Tokenizer* tok = reals.empty() ? nullptr : reals[0].tok;
  try {
    duo::ChatTemplate t =
        duo::ChatTemplate::from_jinja(fields[0], tok ? duo::ChatTokens::from_tokenizer(*tok) : duo::ChatTokens{});
    t.max_steps = 200'000;
    t.max_bytes = 1 << 20;
    render(t, tok, msgs, gen);
  } catch (const duo::Error&) {
  }
  for (const RealTemplate& r : reals) render(r.chat, r.tok, msgs, gen);
  return 0;
}
