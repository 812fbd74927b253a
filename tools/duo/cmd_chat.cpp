// `duo chat`: an interactive conversation with the model's chat template. The KV cache is
// kept between turns; only the new part of the rendered conversation is fed. Slash commands
// are handled here and never reach the model; Ctrl-C stops a reply (the conversation stays);
// when the context would overflow, the oldest turns are dropped with a notice.
#include <fmt/core.h>
#include <unistd.h>

#include <iostream>

#include "cli_errors.h"
#include "commands.h"
#include "engine/backend.h"
#include "line_reader.h"
#include "model/model.h"
#include "progress.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo::cli {

namespace {

struct ChatOptions {
  ModelOptions model;
  std::string system, chat_template;
  int max_tokens = 512;
  SamplerConfig sampling{0.7f, 40, 0.95f, 0};
};

constexpr const char* kHelp =
    "commands:\n"
    "  /help           this list\n"
    "  /reset          forget the conversation (the system message stays)\n"
    "  /system TEXT    set the system message and start over\n"
    "  /stats          context used, last reply's speed, sampling settings\n"
    "  /exit, /quit    leave (Ctrl-D too)\n"
    "input:\n"
    "  a line ending in \\ continues on the next line; a line \"\"\" starts and ends a block\n"
    "  a message starting with / is sent by doubling it: //path/to/file\n"
    "  Ctrl-C stops a reply and keeps the conversation; Up/Down recall earlier lines\n";

const std::vector<std::string> kCommands = {"/help", "/reset", "/system", "/stats", "/exit", "/quit"};

class Chat {
 public:
  Chat(const ChatOptions& o, uint64_t seed)
      : o_(o),
        engine_(engine_options(o.model)),
        tok_(engine_.tokenizer()),
        tmpl_(chat_template_of(engine_.model(), engine_.tokenizer(), o.chat_template)),
        seed_(seed),
        sampler_(with_seed(o.sampling, seed)),
        session_(engine_.new_session()),
        system_(o.system) {
    reset();
  }

  void run() {
    install_interrupt_handler();
    LineReader reader;
    fmt::print(stderr, "duo chat: {} ({} attention, context {} tokens). /help lists commands, /exit or Ctrl-D quits.\n",
               engine_.model().config().name, to_string(engine_.options().attention), engine_.max_context());
    if (isatty(0) && !reader.editing())
      fmt::print(stderr, "(no line editing: duo was built without libedit; apt-get install libedit-dev)\n");
    for (;;) {
      auto msg = read_message(reader);
      if (!msg) break;
      if (msg->empty()) continue;
      if ((*msg)[0] == '/' && msg->rfind("//", 0) != 0) {
        if (!command(*msg)) break;
        continue;
      }
      if (msg->rfind("//", 0) == 0) msg->erase(0, 1);  // "//x" sends "/x"
      turn(*msg);
    }
    if (isatty(0)) fmt::print("\n");
  }

 private:
  static SamplerConfig with_seed(SamplerConfig c, uint64_t seed) {
    c.seed = seed;
    return c;
  }

  void reset() {
    history_.clear();
    if (!system_.empty()) history_.push_back({"system", system_});
    session_->reset();
    fed_.clear();
  }

  // One message: a line, lines joined by a trailing backslash, or a """ block. nullopt ends the
  // chat; an empty string (blank line, Ctrl-C) asks again.
  std::optional<std::string> read_message(LineReader& reader) {
    auto first = reader.read("> ");
    if (!first) return std::nullopt;
    if (first->interrupted) {
      fmt::print(stderr, "(Ctrl-D or /exit quits)\n");
      return std::string();
    }
    reader.remember(first->text);
    const bool block = first->text == "\"\"\"";
    std::string msg = block ? "" : first->text;
    bool more = block || (!msg.empty() && msg.back() == '\\');
    if (!block && more) msg.pop_back();
    bool first_block_line = true;
    while (more) {
      auto next = reader.read("... ");
      if (!next) break;  // end of input: send what there is
      if (next->interrupted) return std::string();
      reader.remember(next->text);
      if (block) {
        if (next->text == "\"\"\"") break;
        msg += (first_block_line ? "" : "\n") + next->text;
        first_block_line = false;
      } else {
        std::string t = next->text;
        more = !t.empty() && t.back() == '\\';
        if (more) t.pop_back();
        msg += "\n" + t;
      }
    }
    if (msg.find_first_not_of(" \t\r\n") == std::string::npos) return std::string();
    return msg;
  }

  // Returns false to end the chat.
  bool command(const std::string& line) {
    const std::string name = line.substr(0, line.find(' '));
    const std::string arg = line.size() > name.size() ? line.substr(name.size() + 1) : "";
    if (name == "/exit" || name == "/quit") return false;
    if (name == "/help") {
      fmt::print("{}", kHelp);
    } else if (name == "/reset") {
      reset();
      fmt::print(stderr, "(conversation cleared)\n");
    } else if (name == "/system") {
      system_ = arg;
      reset();
      fmt::print(stderr, "(system message {}; conversation cleared)\n", system_.empty() ? "removed" : "set");
    } else if (name == "/stats") {
      fmt::print("context {} / {} tokens, {} messages | last reply {} tokens at {:.1f} tok/s, pre-fill {} tokens at "
                 "{:.1f} tok/s | attention {}, KV {:.2f} MiB | temp {} top-k {} top-p {} seed {}\n",
                 session_->n_past(), engine_.max_context(), history_.size(), last_.generated_tokens,
                 last_.decode_tok_s(), last_.prompt_tokens, last_.prefill_tok_s(),
                 to_string(engine_.options().attention), session_->state().kv_bytes() / 1048576.0,
                 o_.sampling.temperature, o_.sampling.top_k, o_.sampling.top_p, seed_);
    } else {
      std::string msg = fmt::format("unknown command {}", name);
      if (auto s = closest(name, kCommands)) msg += fmt::format(" (did you mean {}?)", *s);
      fmt::print(stderr, "{}; /help lists the commands, // sends a message starting with /\n", msg);
    }
    return true;
  }

  // Renders the conversation; drops the oldest turns while it and room for a reply do not fit
  // in the context. Returns false (and forgets the message) when the message alone is too long.
  bool fit(std::vector<int32_t>& ids) {
    const int64_t limit = engine_.max_context();
    const int64_t reserve = std::min<int64_t>(o_.max_tokens, limit / 2);
    const size_t first = system_.empty() ? 0 : 1;  // the system message is never dropped
    int dropped = 0;
    for (;;) {
      ids = encode_chat(tok_, tmpl_, history_, true);
      if ((int64_t)ids.size() + reserve <= limit) break;
      if (history_.size() - first <= 1) {  // only the new message is left
        if ((int64_t)ids.size() < limit) break;  // it fits, with less room for the reply
        fmt::print(stderr, "[message too long: {} tokens with the template, the context holds {}; not sent]\n",
                   ids.size(), limit);
        history_.pop_back();
        return false;
      }
      // A turn is a user message and the reply after it.
      const size_t n = history_.size() - first > 2 && history_[first + 1].role == "assistant" ? 2 : 1;
      history_.erase(history_.begin() + (long)first, history_.begin() + (long)(first + n));
      ++dropped;
    }
    if (dropped > 0)
      fmt::print(stderr, "[context full ({} tokens): dropped the {} oldest turn{}; the chat goes on]\n", limit, dropped,
                 dropped == 1 ? "" : "s");
    return true;
  }

  void turn(const std::string& text) {
    history_.push_back({"user", text});  // what is typed is text: "<|im_end|>" does not end the turn
    std::vector<int32_t> ids;
    if (!fit(ids)) return;
    // Reuse the cache when the new rendering extends what was fed; otherwise start over.
    size_t common = 0;
    while (common < fed_.size() && common < ids.size() && fed_[common] == ids[common]) ++common;
    if (common < fed_.size()) {
      session_->reset();
      fed_.clear();
      common = 0;
    }
    const std::vector<int32_t> suffix(ids.begin() + (long)common, ids.end());
    std::string reply;
    std::vector<int32_t> generated;
    bool stopped = false;
    ProgressLine progress("pre-fill", true);
    // No clearing of g_interrupted here: a Ctrl-C after Enter (while the conversation is
    // rendered and tokenized) is meant for this reply. The prompt clears it before each line.
    last_ = session_->generate(
        suffix, o_.max_tokens, sampler_,
        [&](int32_t id, const std::string& t) {
          progress.clear();
          if (id >= 0) generated.push_back(id);
          reply += t;
          std::cout << t << std::flush;
          if (g_interrupted.load()) stopped = true;
          return !stopped;
        },
        [&](int64_t done, int64_t total) {
          progress.update(done, total);
          if (g_interrupted.load()) stopped = true;
          return !stopped;
        });
    progress.clear();
    clear_interrupt();
    if (last_.prefill_stopped) {
      // Part of the prompt is in the cache: start from scratch next time, and drop the message.
      session_->reset();
      fed_.clear();
      history_.pop_back();
      fmt::print(stderr, "[stopped before the reply began; message not sent]\n");
      return;
    }
    // The cache holds the suffix and every generated token but the last, unless generation
    // ended on an end-of-turn token (then all of them).
    if (!last_.stopped_by_eog && !generated.empty()) generated.pop_back();
    fed_.insert(fed_.end(), suffix.begin(), suffix.end());
    fed_.insert(fed_.end(), generated.begin(), generated.end());
    std::cout << "\n";
    history_.push_back({"assistant", reply});
    if (stopped)
      fmt::print(stderr, "[reply stopped; the conversation is kept]\n");
    else if (!last_.stopped_by_eog && session_->n_past() >= engine_.max_context())
      fmt::print(stderr, "[reply cut: the context of {} tokens is full; the next message drops the oldest turns]\n",
                 engine_.max_context());
    fmt::print(stderr, "[{} tokens, {:.1f} tok/s, context {}]\n", last_.generated_tokens, last_.decode_tok_s(),
               session_->n_past());
  }

  const ChatOptions& o_;
  Engine engine_;
  const Tokenizer& tok_;
  const ChatTemplate tmpl_;
  uint64_t seed_;
  Sampler sampler_;
  std::unique_ptr<Session> session_;
  std::string system_;
  std::vector<ChatMessage> history_;
  std::vector<int32_t> fed_;  // tokens in the session's cache, in order
  GenerationStats last_;
};

}  // namespace

void add_chat(CLI::App& app) {
  auto o = std::make_shared<ChatOptions>();
  auto* cmd = app.add_subcommand("chat", "interactive chat (/help lists its commands)");
  add_model_options(*cmd, o->model);
  cmd->add_option("--system", o->system, "system message");
  add_chat_template_option(*cmd, o->chat_template);
  cmd->add_option("-n,--max-tokens", o->max_tokens, "most tokens per reply")->check(CLI::PositiveNumber);
  CLI::Option* seed = add_sampling_options(*cmd, o->sampling);
  cmd->callback([o, seed] {
    Chat chat(*o, resolve_seed(seed, o->sampling.seed));
    chat.run();
  });
}

}  // namespace duo::cli
