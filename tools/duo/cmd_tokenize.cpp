// `duo tokenize`: the token ids and pieces of a text, to compare with another engine's
// tokenizer. `duo logits`: the top-k log-probabilities of the next token after a prompt, to
// compare the model's numbers with another engine's.
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "commands.h"
#include "core/error.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/model_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace duo::cli {

namespace {

struct TextInput {
  std::string prompt, file;
  bool parse_special = false;
  std::string text() const {
    DUO_CHECK(!prompt.empty() || !file.empty(), "give the text with -p TEXT or -f FILE");
    return file.empty() ? prompt : read_text_file(file);
  }
};

void add_text_input(CLI::App& cmd, TextInput& in) {
  auto* p = cmd.add_option("-p,--prompt", in.prompt, "the text");
  auto* f = cmd.add_option("-f,--file", in.file, "read the text from a file");
  p->excludes(f);
  cmd.add_flag("--parse-special", in.parse_special,
               "special-token text (e.g. <|im_start|>) becomes those tokens; without it, it is plain text");
}

// A piece as a JSON string: quotes show leading spaces, escapes show newlines and control
// bytes; bytes of an incomplete UTF-8 character become U+FFFD.
std::string quoted(const std::string& piece) {
  return nlohmann::json(piece).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

void add_tokenize(CLI::App& app) {
  struct Opts {
    std::string model;
    TextInput in;
    bool ids_only = false, no_bos = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("tokenize", "print the token ids and pieces of a text");
  cmd->add_option("-m,--model", o->model,
                  "GGUF model file or Hugging Face directory (default: the fetched SmolLM2-135M-Instruct)");
  add_text_input(*cmd, o->in);
  cmd->add_flag("--ids", o->ids_only, "print only the ids, as a JSON list");
  cmd->add_flag("--no-bos", o->no_bos, "no BOS token first, even where the model adds one");
  cmd->callback([o] {
    ModelOptions mo;
    mo.model = o->model;
    const auto tok = load_model_tokenizer(engine_options(mo).model_path);  // only the vocabulary: no weights read
    const std::string text = o->in.text();
    const auto ids = tok->encode(text, tok->vocab().add_bos && !o->no_bos, o->in.parse_special);
    if (o->ids_only) {
      fmt::print("{}\n", nlohmann::json(ids).dump());
      return;
    }
    for (const int32_t id : ids) fmt::print("{:>7}  {}\n", id, quoted(tok->token_to_piece(id)));
    fmt::print(stderr, "{} tokens, {} bytes\n", ids.size(), text.size());
  });
}

void add_logits(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    TextInput in;
    bool chat = false, json = false;
    std::string chat_template;
    int top = 10;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("logits", "top-k log-probabilities of the next token after a prompt");
  add_model_options(*cmd, o->model);
  add_text_input(*cmd, o->in);
  cmd->add_flag("--chat", o->chat, "wrap the text in the model's chat template as a user message");
  add_chat_template_option(*cmd, o->chat_template);
  cmd->add_option("-k,--top", o->top, "how many of the most likely tokens to list")->check(CLI::Range(1, 1000));
  cmd->add_flag("--json", o->json, "print a JSON object (prompt ids, then id, piece and logprob of each)");
  cmd->callback([o] {
    DUO_CHECK(!(o->chat && o->in.parse_special), "--parse-special does not apply to --chat (the message is text)");
    const std::string text = o->in.text();
    Engine engine(engine_options(o->model));
    const Tokenizer& tok = engine.tokenizer();
    std::vector<int32_t> ids;
    if (o->chat)
      ids = encode_chat(tok, chat_template_of(engine.model(), tok, o->chat_template), {{"user", text}}, true);
    else
      ids = tok.encode(text, tok.vocab().add_bos, o->in.parse_special);
    DUO_CHECK(!ids.empty(), "the prompt is empty after tokenization");
    auto session = engine.new_session();
    const std::vector<float>& logits = session->feed(ids);
    // log-softmax in double: logprob = logit - max - log(sum exp(logit - max)).
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (const float l : logits) sum += std::exp((double)l - mx);
    const double log_z = mx + std::log(sum);
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    const size_t k = std::min<size_t>((size_t)o->top, order.size());
    // Ties keep the lower id first, as greedy decoding (Sampler::argmax) picks it.
    std::partial_sort(order.begin(), order.begin() + (long)k, order.end(), [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
    order.resize(k);
    if (o->json) {
      nlohmann::json top = nlohmann::json::array();
      for (const int32_t id : order)
        top.push_back({{"id", id}, {"piece", tok.token_to_piece(id)}, {"logprob", logits[id] - log_z},
                       {"logit", logits[id]}});
      const nlohmann::json j = {{"prompt_ids", ids}, {"top", top}};
      fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return;
    }
    fmt::print("{:>4} {:>7} {:>10} {:>8}  piece\n", "rank", "id", "logprob", "prob");
    for (size_t r = 0; r < k; ++r) {
      const int32_t id = order[r];
      const double lp = logits[id] - log_z;
      fmt::print("{:>4} {:>7} {:>10.4f} {:>8.4f}  {}\n", r + 1, id, lp, std::exp(lp), quoted(tok.token_to_piece(id)));
    }
    fmt::print(stderr, "after {} prompt tokens ({} attention)\n", ids.size(), to_string(engine.options().attention));
  });
}

}  // namespace duo::cli
