// Streamed tool calls (tool_stream.h): the incremental JSON re-serializer against nlohmann's
// dump() of the parsed whole, and the incremental Hermes parser against the non-streamed one
// (parse_hermes_calls / shape_tool_answer), for every way of cutting the text: whole, in two
// pieces at every byte boundary, and one byte at a time. The accumulated result must be the
// same for every cut, and equal the non-streamed answer.
#include <gtest/gtest.h>

#include "serve/request.h"
#include "serve/tool_calls.h"
#include "serve/tool_stream.h"

namespace duo::serve {
namespace {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// JsonCompactor

// Feeds `pieces` and returns the output, or "FAILED" / "UNFINISHED".
std::string compact(const std::vector<std::string>& pieces) {
  JsonCompactor c;
  std::string out;
  for (const auto& p : pieces) c.feed(p, out);
  if (c.failed()) return "FAILED";
  if (!c.done()) return "UNFINISHED";
  return out;
}

std::vector<std::vector<std::string>> cuts(const std::string& t) {
  std::vector<std::vector<std::string>> all = {{t}};
  for (size_t i = 1; i < t.size(); ++i) all.push_back({t.substr(0, i), t.substr(i)});
  std::vector<std::string> bytes;
  for (char c : t) bytes.push_back(std::string(1, c));
  all.push_back(bytes);
  return all;
}

TEST(JsonCompactor, EqualsDumpOfTheWholeForEveryCut) {
  const std::vector<std::string> texts = {
      R"({"city": "Paris", "days": 2})",
      "{ }",
      "{\n  \"a\" : [ 1 , 2.50 , -0 , 1e2 , -1.5E-3 , 12345678901234567890 ] ,\n \"b\" : { \"c\" : null } }",
      R"({"t": true, "f": false, "n": null, "e": [], "o": {}})",
      R"({"esc": "a\"b\\c\/d\b\f\n\r\t", "u": "\u00e9\u0001\u001F\u20ac", "pair": "\ud83d\ude00"})",
      "{\"utf8\": \"d\xc3\xa9j\xc3\xa0 vu \xe2\x82\xac\", \"tag\": \"</tool_call> inside a string\"}",
      R"({"deep": [[[{"x": [{"y": "z"}]}]]], "k": "v"})",
      R"({"num": 0.1, "big": 1.7976931348623157e308, "neg": -42, "exp": 5E+0})",
  };
  for (const auto& t : texts) {
    const std::string want = ojson::parse(t).dump();
    for (const auto& pieces : cuts(t)) ASSERT_EQ(compact(pieces), want) << t << " in " << pieces.size() << " pieces";
  }
}

TEST(JsonCompactor, StopsAtTheEndOfTheValue) {
  JsonCompactor c;
  std::string out;
  const std::string t = "{\"a\": 1}\n}\n</tool_call>";
  EXPECT_EQ(c.feed(t, out), 8u);  // up to and with the closing brace
  EXPECT_TRUE(c.done());
  EXPECT_EQ(out, R"({"a":1})");
}

TEST(JsonCompactor, RejectsWhatIsNotJson) {
  for (const std::string t : {R"({"a": tru})", R"({"a" 1})", R"({"a": 01})", R"({a: 1})", R"({"a": "\x"})",
                              R"({"a": "\udc00"})", R"({"a": "\ud83dx"})", "{\"a\": \"raw\nnewline\"}", R"({"a": 1,})",
                              R"([1 2])", R"({"a": 1]})"}) {
    for (const auto& pieces : cuts(t)) EXPECT_EQ(compact(pieces), "FAILED") << t;
    EXPECT_TRUE(ojson::parse(t, nullptr, false).is_discarded()) << t;  // and nlohmann agrees
  }
}

// ---------------------------------------------------------------------------------------------
// ToolCallStream

GenerationRequest request(ToolChoice choice, const std::string& name = "") {
  GenerationRequest r;
  r.tools = ojson::parse(R"([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}},
                             {"type":"function","function":{"name":"add","parameters":{"type":"object"}}}])");
  r.tool_choice = choice;
  r.tool_name = name;
  return r;
}

// What a client accumulates from the events: content, and per call its name and arguments.
struct Accumulated {
  std::string content;
  std::vector<std::pair<std::string, std::string>> calls;
  std::vector<std::string> ids;
  int content_events_before_finish = 0, argument_events_before_finish = 0;
  bool operator==(const Accumulated& o) const { return content == o.content && calls == o.calls; }
};

void take(Accumulated& a, const std::vector<ToolStreamEvent>& ev, bool finishing) {
  for (const auto& e : ev) {
    switch (e.kind) {
      case ToolStreamEvent::Kind::Content:
        ASSERT_FALSE(e.text.empty());
        a.content += e.text;
        a.content_events_before_finish += !finishing;
        break;
      case ToolStreamEvent::Kind::CallStart:
        ASSERT_EQ(e.index, (int)a.calls.size()) << "calls start in order";
        a.calls.push_back({e.text, ""});
        a.ids.push_back(e.id);
        break;
      case ToolStreamEvent::Kind::Arguments:
        ASSERT_LT(e.index, (int)a.calls.size()) << "arguments after their call's start";
        a.calls[e.index].second += e.text;
        a.argument_events_before_finish += !finishing;
        break;
    }
  }
}

Accumulated stream(const GenerationRequest& r, const std::vector<std::string>& pieces, bool complete = true) {
  ToolCallStream s(r);
  Accumulated a;
  for (const auto& p : pieces) take(a, s.feed(p), false);
  take(a, s.finish(complete), true);
  for (const auto& id : a.ids) EXPECT_TRUE(id.rfind("call_", 0) == 0 && id.size() == 29) << id;
  return a;
}

// The non-streamed answer, accumulated the same way.
Accumulated whole(const GenerationRequest& r, const std::string& text, bool complete = true) {
  const ToolAnswer t = shape_tool_answer(r, text, complete);
  Accumulated a;
  a.content = t.is_call && t.content_null ? "" : t.content;
  if (t.is_call)
    for (const auto& c : t.tool_calls) a.calls.push_back({c["function"]["name"], c["function"]["arguments"]});
  return a;
}

std::string show(const Accumulated& a) {
  std::string s = "content " + json(a.content).dump();
  for (const auto& [n, args] : a.calls) s += " | " + n + " " + args;
  return s;
}

void expect_same_for_every_cut(const GenerationRequest& r, const std::string& text, bool equal_to_whole = true,
                               bool complete = true) {
  const Accumulated want = whole(r, text, complete);
  const Accumulated first = stream(r, {text}, complete);
  if (equal_to_whole) {
    EXPECT_EQ(first, want) << text << "\nstreamed: " << show(first) << "\nwhole:    " << show(want);
  }
  for (const auto& pieces : cuts(text)) {
    const Accumulated got = stream(r, pieces, complete);
    ASSERT_EQ(got, first) << text << " in " << pieces.size() << " pieces\n" << show(got) << "\n" << show(first);
  }
}

TEST(ToolCallStream, HermesAnswersEqualTheNonStreamedParse) {
  const GenerationRequest r = request(ToolChoice::Auto);
  const std::vector<std::string> answers = {
      // Plain text, unchanged to the byte (blanks included), also with tag-like text.
      "The weather in Paris is mild.",
      "  two leading blanks and two trailing  \n",
      "x < y and <tool is not a tag; <tool_cal",
      "a ``` fence of\n```python\nprint(1)\n```\n",
      "`inline` code",
      "",
      // Calls.
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>",
      "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par\\u00eds \\\"x\\\"\"}}\n</tool_call>\n",
      "Let me check.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2.50}}\n</tool_call>\n"
      "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}",
      "Sure.\n<tool_call>{\"name\":\"add\",\"arguments\":{\"a\":1,\"b\":2}}</tool_call>\nThen more text.\n",
      "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": [1, {\"b\": null}], \"s\": \"</tool\"}}\n</tool_call>",
      // Other shapes, parsed at the block's end: arguments first, "parameters", arguments as text.
      "<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"add\"}</tool_call>",
      "<tool_call>{\"name\": \"add\", \"parameters\": {\"a\": 1}}</tool_call>",
      "<tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>",
      // Calls without tags: known at the end.
      "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
      "```json\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n```",
      "{\"not\": \"a call\"}",
      // Malformed blocks whose head never matched: their text is content.
      "<tool_call>\n{\"name\": \"unknown_tool\", \"arguments\": {}}\n</tool_call>",
      "<tool_call>not json</tool_call>",
  };
  for (const auto& t : answers) expect_same_for_every_cut(r, t);
}

TEST(ToolCallStream, ForcedCallsEqualTheNonStreamedParse) {
  expect_same_for_every_cut(request(ToolChoice::Required),
                            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}");
  expect_same_for_every_cut(request(ToolChoice::Required), "{\"arguments\": {\"a\": 1}, \"name\": \"add\"}");
  expect_same_for_every_cut(request(ToolChoice::Named, "add"), "{\"a\": 1, \"b\": [2, 3.0]}");
  // Cut by max_tokens, before its head was complete: the text is content, as non-streamed.
  expect_same_for_every_cut(request(ToolChoice::Required), "{\"name\": \"ad", true, /*complete=*/false);
}

TEST(ToolCallStream, WellFormedCallsAreNotBroken) {
  ToolCallStream s(request(ToolChoice::Auto));
  s.feed("<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1}}</tool_call><tool_call>{\"name\": \"add\", \"arguments\": {\"a\"");
  EXPECT_FALSE(s.broken());
  s.finish(false);  // the second one was cut by max_tokens
  EXPECT_TRUE(s.broken());
  EXPECT_EQ(s.calls(), 2);
}

TEST(ToolCallStream, SendsContentAndArgumentsAsTheyCome) {
  const GenerationRequest r = request(ToolChoice::Auto);
  auto bytes = [](const std::string& t) {
    std::vector<std::string> v;
    for (char c : t) v.push_back(std::string(1, c));
    return v;
  };
  // Text goes out before the answer ends; only a trailing blank waits.
  Accumulated a = stream(r, bytes("Hello there, world. "));
  EXPECT_EQ(a.content, "Hello there, world. ");
  EXPECT_GE(a.content_events_before_finish, 15);
  // A call's arguments go out piece by piece, before its closing tag.
  const std::string call = "I will look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                           "{\"city\": \"Paris\", \"note\": \"a long string that streams\"}}\n</tool_call>";
  a = stream(r, bytes(call));
  ASSERT_EQ(a.calls.size(), 1u);
  EXPECT_EQ(a.calls[0].second, R"({"city":"Paris","note":"a long string that streams"})");
  EXPECT_GE(a.argument_events_before_finish, 40);
  EXPECT_EQ(a.content, "I will look.");
}

TEST(ToolCallStream, AMalformedBlockAfterItsStartStaysAsSent) {
  // The head matched, so the call went out; its arguments then break off. The non-streamed
  // answer is plain text; the stream can not take its pieces back, but every cut agrees.
  expect_same_for_every_cut(request(ToolChoice::Auto),
                            "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": oops}}</tool_call>",
                            /*equal_to_whole=*/false);
  ToolCallStream s(request(ToolChoice::Auto));
  Accumulated a;
  take(a, s.feed("<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": oops}}</tool_call>"), false);
  take(a, s.finish(true), true);
  EXPECT_TRUE(s.broken());
  ASSERT_EQ(a.calls.size(), 1u);
  EXPECT_EQ(a.calls[0].first, "add");
  EXPECT_EQ(a.calls[0].second, R"({"a":)");
}

}  // namespace
}  // namespace duo::serve
