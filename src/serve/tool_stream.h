// Tool calls of a streamed chat answer, as the text comes: what OpenAI clients expect of
// `stream: true` with `tools`. Text that can not be (part of) a call goes out at once as
// content; a Hermes <tool_call> block becomes `delta.tool_calls` pieces: the call's index, id,
// type and function name first, then its arguments piece by piece. Accumulated, the pieces
// equal what the non-streamed answer (tool_calls.h, shape_tool_answer) gives for the same text:
// the arguments are re-serialized as they stream (JsonCompactor), so they match its dump().
//
// What has to wait: a possible start of "<tool_call>" at the end of the text so far, blanks
// after content (the non-streamed content is trimmed when there are calls), a block until its
// "name" is known, and an answer that starts with "{" or a ```json fence (a call written
// without tags is known only at its end). Where the stream can not follow the non-streamed
// parse (a block that turns out malformed after its first pieces went out, blanks before
// content that precedes a call), the streamed pieces stay what they were.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "serve/request.h"

namespace duo::serve {

// Re-serializes one JSON value as its text streams in, exactly as nlohmann's dump() writes the
// parsed whole (no blanks, strings re-escaped, numbers normalised): the outputs concatenated
// equal ordered_json::parse(text).dump() (keys given twice excepted). Strings go out as they
// come; an escape, a number or a literal when it is complete.
class JsonCompactor {
 public:
  // Consumes characters of `in` up to the end of the value and appends output to `out`;
  // returns how many were consumed (fewer than in.size() only once the value ended or failed).
  size_t feed(std::string_view in, std::string& out);
  bool done() const { return state_ == State::Done; }
  bool failed() const { return state_ == State::Failed; }

 private:
  enum class State { Value, FirstKeyOrEnd, Key, Colon, AfterValue, FirstValueOrEnd, String, Number, Literal, Done, Failed };
  bool step(char c, std::string& out);  // false: c was not consumed (the value ended, or failed)
  void after_value();
  bool finish_token(std::string& out);  // a number or literal in token_
  bool flush_escape(std::string& out);  // a complete escape in token_ (or false: wait / failed)
  State state_ = State::Value;
  std::vector<char> stack_;  // '{' or '['
  bool in_key_ = false;
  bool in_escape_ = false;
  std::string token_;  // a number, literal or escape being read
};

struct ToolStreamEvent {
  enum class Kind { Content, CallStart, Arguments };
  Kind kind = Kind::Content;
  int index = 0;     // the call (CallStart, Arguments)
  std::string text;  // content, the function name (CallStart) or a piece of the arguments
  std::string id;    // CallStart: "call_..."
};

class ToolCallStream {
 public:
  // The request's tool_choice says what the text is: Auto, Hermes answers; Required, a bare
  // {"name", "arguments"} object; Named, the arguments object of `tool_name`.
  explicit ToolCallStream(const GenerationRequest& r);
  std::vector<ToolStreamEvent> feed(std::string_view text);
  // Generation ended; `complete`: by itself (not max_tokens). Sends what was held back.
  std::vector<ToolStreamEvent> finish(bool complete);
  int calls() const { return calls_; }  // calls started so far
  // A call went out whose block then did not parse (cut by max_tokens, malformed): the choice
  // ends in "length" / "stop" rather than "tool_calls" when generation was cut.
  bool broken() const { return broken_; }

 private:
  enum class Mode { Text, Hold, Block };
  void text(std::string_view s, std::vector<ToolStreamEvent>& ev);  // outside blocks
  void content(std::string_view s, std::vector<ToolStreamEvent>& ev);
  void block(std::vector<ToolStreamEvent>& ev, bool at_end);  // body_ grew, or the text ended
  void end_block(bool closed, std::vector<ToolStreamEvent>& ev);  // body_ is the whole block
  void start_call(const std::string& name, std::vector<ToolStreamEvent>& ev);

  ToolChoice choice_;
  std::vector<std::string> names_;
  std::string named_;  // ToolChoice::Named
  Mode mode_ = Mode::Text;
  bool tags_ = true;       // Auto: blocks end at </tool_call>; Required / Named: the text is one call
  bool anything_ = false;  // content or a call went out (the start is no longer "the start")
  std::string pending_;    // Text: a possible "<tool_call>" start; Hold: everything
  std::string blanks_;     // blanks after the content sent so far
  std::string body_;       // Block: the text after <tool_call>
  size_t fed_ = 0;         // Block: how much of body_ the compactor or the head matcher has seen
  bool started_ = false;   // Block: its call went out (CallStart)
  bool raw_ = false;       // Block: not the expected {"name", "arguments"} shape: parsed at its end
  JsonCompactor args_;
  std::string sent_args_;  // Block: the arguments sent so far
  int calls_ = 0;
  bool complete_ = true;  // finish(): generation ended by itself
  bool broken_ = false;
};

}  // namespace duo::serve
