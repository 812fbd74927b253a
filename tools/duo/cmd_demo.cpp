// `duo demo`: the main job of a fresh install: the default model answers a question through
// the chat template, streamed, with speed and memory on stderr.
#include <fmt/core.h>

#include <iostream>

#include "commands.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo::cli {

void add_demo(CLI::App& app) {
  auto o = std::make_shared<ModelOptions>();
  auto question = std::make_shared<std::string>("What is the capital of France? Answer in one sentence.");
  auto* cmd = app.add_subcommand("demo", "answer a question with the default model");
  add_model_options(*cmd, *o);
  cmd->add_option("-q,--question", *question, "the question");
  cmd->callback([o, question] {
    Engine engine(engine_options(*o));
    const Tokenizer& tok = engine.tokenizer();
    const ChatTemplate tmpl = chat_template_of(engine.model(), tok);
    const auto ids = encode_chat(tok, tmpl, {{"user", *question}}, true);  // the question stays text
    fmt::print("model: {} ({} layers, {} query / {} KV heads), {} attention\n", engine.model().config().name,
               engine.model().config().n_layers, engine.model().config().n_heads, engine.model().config().n_kv_heads,
               to_string(engine.options().attention));
    fmt::print("user: {}\nassistant: ", *question);
    std::fflush(stdout);
    Sampler greedy(SamplerConfig{});
    auto s = engine.new_session();
    GenerationStats st = s->generate(ids, 128, greedy, [](int32_t, const std::string& t) {
      std::cout << t << std::flush;
      return true;
    });
    fmt::print("\n[prompt {} tokens at {:.1f} tok/s, {} tokens generated at {:.1f} tok/s, KV cache {:.2f} MiB, "
               "peak RSS {:.0f} MiB]\n",
               st.prompt_tokens, st.prefill_tok_s(), st.generated_tokens, st.decode_tok_s(), st.kv_bytes / 1048576.0,
               peak_rss_mib());
  });
}

}  // namespace duo::cli
