// `duo chat`: an interactive conversation with the model's chat template. The KV cache is
// kept between turns; only the new part of the rendered conversation is fed.
#include <fmt/core.h>

#include <unistd.h>

#include <iostream>

#include "commands.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo::cli {

void add_chat(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    std::string system;
    int max_tokens = 512;
    SamplerConfig sampling{0.7f, 40, 0.95f, 0};
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("chat", "interactive chat (/reset clears the conversation, /exit quits)");
  add_model_options(*cmd, o->model);
  cmd->add_option("--system", o->system, "system message");
  cmd->add_option("-n,--max-tokens", o->max_tokens, "most tokens per reply")->check(CLI::PositiveNumber);
  add_sampling_options(*cmd, o->sampling);
  cmd->callback([o] {
    Engine engine(engine_options(o->model));
    const Tokenizer& tok = engine.tokenizer();
    const ChatTemplate tmpl = ChatTemplate::from_gguf(engine.model().gguf());
    Sampler sampler(o->sampling);
    auto session = engine.new_session();
    std::vector<ChatMessage> history;
    if (!o->system.empty()) history.push_back({"system", o->system});
    std::vector<int32_t> fed;  // tokens in the session's cache, in order
    const bool tty = isatty(0);
    fmt::print(stderr, "duo chat: {} ({} attention). /reset clears, /exit or Ctrl-D quits.\n",
               engine.model().config().name, to_string(engine.options().attention));
    std::string line;
    for (;;) {
      if (tty) fmt::print("> "), std::fflush(stdout);
      if (!std::getline(std::cin, line)) break;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        history.resize(o->system.empty() ? 0 : 1);
        session->reset();
        fed.clear();
        fmt::print(stderr, "(conversation cleared)\n");
        continue;
      }
      if (line.empty()) continue;
      history.push_back({"user", line});
      // What is typed is text: "<|im_end|>" in a line does not end the user's turn.
      const auto ids = encode_chat(tok, tmpl, history, true);
      // Reuse the cache when the new rendering extends what was fed; otherwise start over.
      size_t common = 0;
      while (common < fed.size() && common < ids.size() && fed[common] == ids[common]) ++common;
      if (common < fed.size()) {
        session->reset();
        fed.clear();
        common = 0;
      }
      std::vector<int32_t> suffix(ids.begin() + (long)common, ids.end());
      std::string reply;
      std::vector<int32_t> generated;
      GenerationStats st = session->generate(suffix, o->max_tokens, sampler, [&](int32_t id, const std::string& t) {
        if (id >= 0) generated.push_back(id);
        reply += t;
        std::cout << t << std::flush;
        return true;
      });
      // The cache now holds the suffix and every generated token but the last, unless
      // generation ended on an end-of-turn token (then all of them).
      if (!st.stopped_by_eog && !generated.empty()) generated.pop_back();
      fed.insert(fed.end(), suffix.begin(), suffix.end());
      fed.insert(fed.end(), generated.begin(), generated.end());
      std::cout << "\n";
      history.push_back({"assistant", reply});
      fmt::print(stderr, "[{} tokens, {:.1f} tok/s, context {}]\n", st.generated_tokens, st.decode_tok_s(),
                 session->n_past());
    }
  });
}

}  // namespace duo::cli
