// `duo generate`: one prompt in, streamed text out, timing on stderr.
#include <fmt/core.h>

#include <fstream>
#include <random>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "progress.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo::cli {

namespace {
struct GenerateOptions {
  ModelOptions model;
  std::string prompt, file, system, chat_template;
  bool chat = false, quiet = false, parse_special = false, no_display_prompt = false;
  int max_tokens = 128;
  SamplerConfig sampling;
};
}  // namespace

CLI::Option* add_sampling_options(CLI::App& cmd, SamplerConfig& s) {
  cmd.add_option("--temp,--temperature", s.temperature, "sampling temperature (0: greedy)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--top-k", s.top_k, "keep the k most likely tokens (0: off)")->check(CLI::NonNegativeNumber);
  cmd.add_option("--top-p", s.top_p, "nucleus sampling mass (1: off)")->check(CLI::Range(0.0, 1.0));
  return cmd.add_option("--seed", s.seed, "random seed (default: a random one, shown in the statistics)")
      ->default_str("random");
}

uint64_t resolve_seed(const CLI::Option* seed_option, uint64_t given) {
  if (seed_option->count() > 0) return given;
  std::random_device rd;
  return ((uint64_t)rd() << 32 | rd()) >> 1;  // 63 bits: also fits the int64 of JSON tools
}

void add_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  auto* cmd = app.add_subcommand("generate", "generate a continuation of a prompt");
  add_model_options(*cmd, o->model);
  auto* p = cmd->add_option("-p,--prompt", o->prompt, "prompt text");
  auto* f = cmd->add_option("-f,--file", o->file, "read the prompt from a file");
  p->excludes(f);
  cmd->add_option("-n,--max-tokens", o->max_tokens, "tokens to generate")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--chat", o->chat, "wrap the prompt in the model's chat template as a user message");
  cmd->add_option("--system", o->system, "system message (with --chat)");
  add_chat_template_option(*cmd, o->chat_template);
  // As the server's "parse_special": special-token text in a prompt is text unless asked.
  cmd->add_flag("--parse-special", o->parse_special,
                "special-token text in the prompt (e.g. <|im_start|>) becomes those tokens (not with --chat, whose "
                "message is always text)");
  cmd->add_flag("--no-display-prompt", o->no_display_prompt, "print only the generated text, not the prompt first");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress and no statistics on stderr");
  CLI::Option* seed = add_sampling_options(*cmd, o->sampling);
  cmd->callback([o, seed] {
    DUO_CHECK(!o->prompt.empty() || !o->file.empty(), "give a prompt with -p TEXT or -f FILE");
    DUO_CHECK(!(o->chat && o->parse_special), "--parse-special does not apply to --chat (the message is text)");
    const std::string text = o->file.empty() ? o->prompt : read_text_file(o->file);
    Engine engine(engine_options(o->model));
    const Tokenizer& tok = engine.tokenizer();
    std::vector<int32_t> ids;
    if (o->chat) {
      const ChatTemplate tmpl = chat_template_of(engine.model(), tok, o->chat_template);
      std::vector<ChatMessage> msgs;
      if (!o->system.empty()) msgs.push_back({"system", o->system});
      msgs.push_back({"user", text});
      ids = encode_chat(tok, tmpl, msgs, true);  // the message is text, the template's markers special
    } else {
      ids = tok.encode(text, tok.vocab().add_bos, o->parse_special);
    }
    DUO_CHECK(!ids.empty(), "the prompt is empty after tokenization");
    // Before the prompt is echoed: a refused prompt should not fill the screen first.
    DUO_CHECK((int64_t)ids.size() <= engine.max_context(),
              "the prompt of {} tokens exceeds the context limit of {} tokens (raise it with -c/--ctx-size)",
              ids.size(), engine.max_context());
    SamplerConfig sc = o->sampling;
    sc.seed = resolve_seed(seed, sc.seed);
    Sampler sampler(sc);
    auto s = engine.new_session();
    if (!o->chat && !o->no_display_prompt) std::cout << text << std::flush;
    ProgressLine progress("pre-fill", !o->quiet);
    GenerationStats st = s->generate(
        ids, o->max_tokens, sampler,
        [&](int32_t, const std::string& piece) {
          progress.clear();  // the first token ends the pre-fill: its line goes
          std::cout << piece << std::flush;
          return true;
        },
        [&](int64_t done, int64_t total) {
          progress.update(done, total);
          return true;
        });
    progress.clear();
    std::cout << std::endl;
    if (!o->quiet)
      fmt::print(stderr,
                 "[{} prompt tokens: {:.1f} tok/s | {} generated: {:.1f} tok/s | seed {} | attention {} | KV {:.2f} "
                 "MiB (retrieval {:.2f}, streaming {:.2f}) | peak RSS {:.0f} MiB]\n",
                 st.prompt_tokens, st.prefill_tok_s(), st.generated_tokens, st.decode_tok_s(), sc.seed,
                 to_string(engine.options().attention), st.kv_bytes / 1048576.0, st.kv_bytes_retrieval / 1048576.0,
                 st.kv_bytes_streaming / 1048576.0, peak_rss_mib());
  });
}

}  // namespace duo::cli
