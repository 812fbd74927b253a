// Tool calling: the Hermes-format parser against hand-written model answers (well-formed,
// malformed, mixed with text), the forced-call schemas against texts that must and must not
// match, and a tool round trip rendered by a real template (Qwen3's, with tools) compared with
// Python jinja2 under transformers' settings (dev/make_chat_template_fixtures.py's
// environment), and by one that knows no tools (the Hermes fold-in).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "serve/json_matcher.h"
#include "serve/request.h"
#include "serve/tool_calls.h"
#include "test_support.h"

namespace duo::serve {
namespace {

using nlohmann::json;
const std::vector<std::string> kNames = {"get_weather", "add"};

TEST(ToolCalls, ParsesHermesCalls) {
  const ToolAnswer a = parse_hermes_calls(
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>", kNames);
  ASSERT_TRUE(a.is_call);
  EXPECT_TRUE(a.content_null);
  ASSERT_EQ(a.tool_calls.size(), 1u);
  const json& c = a.tool_calls[0];
  EXPECT_EQ(c["type"], "function");
  EXPECT_EQ(c["function"]["name"], "get_weather");
  // Arguments are JSON text, keys in the order the model wrote them.
  EXPECT_EQ(c["function"]["arguments"], R"({"city":"Paris","days":2})");
  EXPECT_EQ(c["id"].get<std::string>().rfind("call_", 0), 0u);
  EXPECT_EQ(c["id"].get<std::string>().size(), 29u);

  // Two calls with text around them; a last call whose closing tag never came.
  const ToolAnswer b = parse_hermes_calls(
      "Let me check.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>\n"
      "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}",
      kNames);
  ASSERT_TRUE(b.is_call);
  EXPECT_EQ(b.content, "Let me check.");
  EXPECT_FALSE(b.content_null);
  ASSERT_EQ(b.tool_calls.size(), 2u);
  EXPECT_EQ(b.tool_calls[0]["function"]["arguments"], R"({"a":1,"b":2})");
  EXPECT_EQ(b.tool_calls[1]["function"]["name"], "get_weather");
  EXPECT_EQ(b.tool_calls[1]["function"]["arguments"], "{}");
  EXPECT_NE(b.tool_calls[0]["id"], b.tool_calls[1]["id"]);
  // Arguments given as a JSON string are taken as the object they encode.
  const ToolAnswer s = parse_hermes_calls(R"(<tool_call>{"name": "add", "arguments": "{\"a\": 3}"}</tool_call>)", kNames);
  ASSERT_TRUE(s.is_call);
  EXPECT_EQ(s.tool_calls[0]["function"]["arguments"], R"({"a":3})");
}

// Qwen2.5-Coder answers with the bare object, often in a ```json fence.
TEST(ToolCalls, BareAndFencedCalls) {
  for (const std::string text : {"{\"name\": \"add\", \"arguments\": {\"a\": 1}}",
                                 "```json\n{\n  \"name\": \"add\",\n  \"arguments\": {\"a\": 1}\n}\n```",
                                 "\n```\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}```\n"}) {
    const ToolAnswer a = parse_hermes_calls(text, kNames);
    ASSERT_TRUE(a.is_call) << text;
    EXPECT_TRUE(a.content_null);
    EXPECT_EQ(a.tool_calls[0]["function"]["arguments"], R"({"a":1})") << text;
  }
  for (const std::string text : {"```python\n{\"name\": \"add\", \"arguments\": {}}\n```",
                                 "{\"name\": \"sub\", \"arguments\": {}}", "{\"result\": 3}",
                                 "Sure: {\"name\": \"add\", \"arguments\": {}}"})
    EXPECT_FALSE(parse_hermes_calls(text, kNames).is_call) << text;
}

TEST(ToolCalls, MalformedCallsStayText) {
  for (const std::string text : {
           "The weather is fine.",
           "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",      // cut short
           "<tool_call>\n{\"name\": \"get_weather\" \"arguments\": {}}\n</tool_call>",        // not JSON
           "<tool_call>\n[\"get_weather\"]\n</tool_call>",                                   // not an object
           "<tool_call>\n{\"arguments\": {}}\n</tool_call>",                                 // no name
           "<tool_call>\n{\"name\": \"get_weather\"}\n</tool_call>",                         // no arguments
           "<tool_call>\n{\"name\": \"rm_rf\", \"arguments\": {}}\n</tool_call>",            // unknown tool
           "<tool_call>\n{\"name\": \"add\", \"arguments\": [1, 2]}\n</tool_call>",          // arguments not an object
           "<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call><tool_call>oops</tool_call>",
       }) {
    const ToolAnswer a = parse_hermes_calls(text, kNames);
    EXPECT_FALSE(a.is_call) << text;
    EXPECT_EQ(a.content, text);
  }
}

GenerationRequest tool_request(const std::string& choice) {
  return parse_request(Endpoint::ChatCompletions, R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object",
        "properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"],
        "additionalProperties":false}}},
      {"type":"function","function":{"name":"add","parameters":{"type":"object","properties":{"a":{"type":"number"},
        "b":{"type":"number"}},"required":["a","b"]}}}],"tool_choice":)" + choice + "}");
}

bool matches(const CompiledSchema& s, const std::string& text) {
  JsonMatcher m(s);
  return m.feed(text) && m.done();
}

TEST(ToolCalls, ForcedCallsAreConstrained) {
  const auto named = tool_request(R"({"type":"function","function":{"name":"get_weather"}})");
  ASSERT_NE(named.json_schema, nullptr);
  EXPECT_TRUE(matches(*named.json_schema, R"({"city": "Paris", "days": 3})"));
  EXPECT_FALSE(matches(*named.json_schema, R"({"days": 3})"));               // city is required
  EXPECT_FALSE(matches(*named.json_schema, R"({"city": "Paris", "x": 1})"));  // no other keys
  EXPECT_FALSE(matches(*named.json_schema, R"("Paris")"));

  // Parameters that leave additionalProperties out: a forced call writes only the named keys.
  const auto add = tool_request(R"({"type":"function","function":{"name":"add"}})");
  EXPECT_TRUE(matches(*add.json_schema, R"({"a": 1, "b": 2})"));
  EXPECT_FALSE(matches(*add.json_schema, R"({"a": 1, "b": 2, "c": 3})"));

  const auto req = tool_request(R"("required")");
  ASSERT_NE(req.json_schema, nullptr);
  EXPECT_TRUE(matches(*req.json_schema, R"({"name": "add", "arguments": {"a": 1, "b": 2.5}})"));
  EXPECT_TRUE(matches(*req.json_schema, R"({"name": "get_weather", "arguments": {"city": "Oslo"}})"));
  EXPECT_FALSE(matches(*req.json_schema, R"({"name": "add", "arguments": {"city": "Oslo"}})"));
  EXPECT_FALSE(matches(*req.json_schema, R"({"name": "sub", "arguments": {}})"));
  EXPECT_FALSE(matches(*req.json_schema, R"({"name": "add"})"));

  // The answers become calls: named, its text is the arguments; required, name + arguments.
  ToolAnswer a = shape_tool_answer(named, R"({"city": "Paris"})", true);
  ASSERT_TRUE(a.is_call);
  EXPECT_TRUE(a.content_null);
  EXPECT_EQ(a.tool_calls[0]["function"]["name"], "get_weather");
  EXPECT_EQ(a.tool_calls[0]["function"]["arguments"], R"({"city":"Paris"})");
  a = shape_tool_answer(req, R"({"name": "add", "arguments": {"b": 2, "a": 1}})", true);
  ASSERT_TRUE(a.is_call);
  EXPECT_EQ(a.tool_calls[0]["function"]["name"], "add");
  EXPECT_EQ(a.tool_calls[0]["function"]["arguments"], R"({"b":2,"a":1})");
  // Cut by max_tokens: not a call, the text as it came.
  a = shape_tool_answer(named, R"({"city": "Pa)", false);
  EXPECT_FALSE(a.is_call);
  EXPECT_EQ(a.content, R"({"city": "Pa)");
  // tool_choice none: never parsed.
  EXPECT_FALSE(shape_tool_answer(tool_request(R"("none")"), "<tool_call>{\"name\": \"add\", \"arguments\": {}}</tool_call>",
                                 true).is_call);
}

// A tool round trip as the openai client sends it (arguments as JSON text, content null),
// rendered by Qwen3's template: byte for byte what jinja2 renders for the same conversation
// as transformers lays it out (arguments an object, content "").
TEST(ToolCalls, RoundTripRendersAsTransformersDoes) {
  std::ifstream f(test::fixture_path("chat_templates/qwen3-0.6b.jinja"));
  std::stringstream ss;
  ss << f.rdbuf();
  ChatTokens toks;
  toks.eos = "<|im_end|>";
  toks.specials = {"<|im_start|>", "<|im_end|>"};
  const ChatTemplate t = ChatTemplate::from_jinja(ss.str(), toks, "qwen3");
  const auto r = parse_request(Endpoint::ChatCompletions, R"({"model":"m","messages":[
      {"role":"user","content":"Weather in Paris?"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
        "function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},
      {"role":"tool","tool_call_id":"call_1","content":"sunny, 21 C"}],
      "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather of a city",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]})");
  ASSERT_TRUE(template_knows_tools(t));
  const std::string want = R"REF(<|im_start|>system
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
<|im_start|>user
Weather in Paris?<|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
sunny, 21 C
</tool_response><|im_end|>
<|im_start|>assistant
)REF";
  EXPECT_EQ(apply_chat_template(t, r.messages, true, r.tools), want);

  // A template without tools (ChatML, as SmolLM2's): the same conversation folded into
  // Hermes text, which the model's prompt then carries as plain turns.
  const ChatTemplate plain = ChatTemplate::from_jinja(kChatMLTemplate, toks);
  ASSERT_FALSE(template_knows_tools(plain));
  const auto msgs = hermes_messages(r.messages, r.tools);
  ASSERT_EQ(msgs.size(), 4u);
  EXPECT_EQ(msgs[0].role, "system");
  EXPECT_NE(msgs[0].content.find("<tools>\n" + r.tools[0].dump() + "\n</tools>"), std::string::npos);
  EXPECT_EQ(msgs[2].content, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>");
  EXPECT_EQ(msgs[3].role, "user");
  EXPECT_EQ(msgs[3].content, "<tool_response>\nsunny, 21 C\n</tool_response>");
  const std::string text = apply_chat_template(plain, msgs, true);
  EXPECT_NE(text.find("<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
            std::string::npos);
  // The answer to the fold-in parses back into the call it shows.
  const ToolAnswer back = parse_hermes_calls(msgs[2].content, {"get_weather"});
  ASSERT_TRUE(back.is_call);
  EXPECT_EQ(back.tool_calls[0]["function"]["arguments"], R"({"city":"Paris"})");
}

}  // namespace
}  // namespace duo::serve
