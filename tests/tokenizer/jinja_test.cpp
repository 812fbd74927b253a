// duo's Jinja implementation against Python jinja2 (configured as transformers configures it):
// every real chat template in tests/fixtures/chat_templates/renderings.json (SmolLM2 and
// Qwen2.5-Coder from their GGUFs; Llama-3.3, Mistral-7B-v0.3, Gemma-3, Qwen3 as published) over
// plain, multi-turn, tool-calling and ill-formed conversations, and small templates exercising
// one language feature each: the output must be byte-identical, and where jinja2 raised duo must
// raise. Then the guarantees jinja2 does not give: provenance of the output bytes, and bounded
// work on hostile templates.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_support.h"
#include "tokenizer/jinja/template.h"

namespace duo::jinja {
namespace {

const nlohmann::ordered_json& renderings() {
  static const nlohmann::ordered_json j = [] {
    std::ifstream f(test::fixture_path("chat_templates/renderings.json"));
    EXPECT_TRUE(f.good());
    return nlohmann::ordered_json::parse(f);
  }();
  return j;
}

std::vector<std::pair<std::string, Value>> context_of(const nlohmann::ordered_json& c) {
  std::vector<std::pair<std::string, Value>> ctx;
  for (const auto& [k, v] : c.items()) ctx.push_back({k, Value::from_json(v)});
  return ctx;
}

void check_template(const nlohmann::ordered_json& t) {
  const Template tmpl(t["source"].get<std::string>());
  int n = 0;
  for (const auto& c : t["cases"]) {
    SCOPED_TRACE(t["name"].get<std::string>() + " case " + std::to_string(n++) + ": " + c["context"].dump().substr(0, 300));
    if (c.contains("error")) {
      EXPECT_THROW(tmpl.render(context_of(c["context"])), Error) << "jinja2: " << c["jinja2_error"];
    } else {
      try {
        EXPECT_EQ(tmpl.render(context_of(c["context"])).s, c["text"].get<std::string>());
      } catch (const Error& e) {
        ADD_FAILURE() << "raised: " << e.what();
      }
    }
  }
}

TEST(Jinja, RealTemplatesMatchJinja2) {
  int templates = 0, cases = 0;
  for (const auto& t : renderings()["templates"])
    if (t["kind"] != "feature") {
      check_template(t);
      ++templates;
      cases += (int)t["cases"].size();
    }
  EXPECT_EQ(templates, 6);
  EXPECT_GE(cases, 150);
}

TEST(Jinja, FeaturesMatchJinja2) {
  int n = 0;
  for (const auto& t : renderings()["templates"])
    if (t["kind"] == "feature") {
      check_template(t);
      ++n;
    }
  EXPECT_GE(n, 20);
}

// Bytes the template wrote are trusted; bytes from the context are not, through concatenation,
// trim, slicing and variables.
TEST(Jinja, OutputKnowsWhichBytesTheTemplateWrote) {
  const Template t("{% set x = '<a>' + m | trim %}{{ x }}[{{ m[1:3] }}]{{ lit }}{{ ('<b>' ~ m) | upper }}");
  const Text out = t.render({{"m", Value::string(Text::data(" xyz "))}, {"lit", Value::string(Text::literal("<c>"))}});
  EXPECT_EQ(out.s, "<a>xyz[xy]<c><B> XYZ ");
  // "<a>" (0-3), "[" (6), "]" (9), "<c>" (10-13); the upper-cased mix is not trusted.
  using R = std::vector<std::pair<size_t, size_t>>;
  EXPECT_EQ(out.trusted, (R{{0, 3}, {6, 7}, {9, 13}}));
}

// A template is untrusted input: whatever it does, rendering ends quickly with an error.
TEST(Jinja, HostileTemplatesAreBounded) {
  Limits lim;
  lim.max_steps = 2'000'000;
  lim.max_bytes = 1 << 20;
  const char* hostile[] = {
      "{% for a in range(1000000) %}{% for b in range(1000000) %}x{% endfor %}{% endfor %}",
      "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
      "{{ 'x' * 100000000 }}",
      "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
      "{% set ns = namespace() %}{% set ns.self = ns %}{{ ns | tojson }}",
      "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}",
      "{{ range(100000000) | length }}",
  };
  for (const char* src : hostile) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_THROW(Template(src).render({}, lim), Error) << src;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0) << src;
  }
  // A namespace that would hold itself, directly or through lists and other namespaces, is
  // refused at the assignment (a shared_ptr cycle would never be freed: LeakSanitizer found it);
  // holding another namespace is fine.
  for (const char* cycle : {"{% set ns = namespace() %}{% set ns.self = ns %}",
                            "{% set ns = namespace() %}{% set ns.l = [1, [2, ns]] %}",
                            "{% set a = namespace() %}{% set b = namespace(x=[a]) %}{% set a.y = b %}"}) {
    try {
      Template(cycle).render({}, lim);
      ADD_FAILURE() << "rendered: " << cycle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot contain itself"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(Template("{% set a = namespace(v=1) %}{% set b = namespace() %}{% set b.a = a %}{% set a.v = 2 %}"
                     "{{ b.a.v }}")
                .render({}, lim)
                .s,
            "2");
  // Deep nesting is refused by the parser instead of overflowing the stack.
  EXPECT_THROW(Template("{{ " + std::string(100000, '(')), Error);
  EXPECT_THROW(Template("{{ " + std::string(100000, '[')), Error);
  EXPECT_THROW(Template("{{ " + std::string(50000, '-') + "1 }}"), Error);
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{% if true %}";
  EXPECT_THROW(Template{ifs}, Error);
}

TEST(Jinja, SyntaxErrorsNameTheOffset) {
  for (const char* bad : {"{{ x ", "{% if x %}", "{% for %}", "{{ 'abc }}", "{% endfor %}", "{{ x | }}",
                          "{% raw %}x{% endraw %}", "{# open"}) {
    try {
      Template t(bad);
      t.render({});
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("chat template"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace duo::jinja
