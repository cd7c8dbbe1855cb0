// The Jinja subset and the chat templates, checked against what Hugging Face's apply_chat_template renders.
#include "server/jinja.h"

#include <gtest/gtest.h>

#include "engine/core/check.h"
#include "server/chat_template.h"

namespace tessera::server {
namespace {

using nlohmann::json;

std::string render(const std::string& src, const jinja::Dict& vars = {}) {
  return jinja::Template(src).render(vars);
}

TEST(Jinja, ExpressionsAndFilters) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 'a' ~ 1 }} {{ 3 / 2 }}"), "7 3 2 a1 1.5");
  EXPECT_EQ(render("{{ '  x ' | trim }}|{{ 'ab' | upper }}|{{ [1,2,3] | length }}|{{ [1,2] | join(',') }}"),
            "x|AB|3|1,2");
  EXPECT_EQ(render("{{ x | default('d') }} {{ none is none }} {{ x is defined }} {{ 'a' in 'cat' }}"),
            "d True False True");
  EXPECT_EQ(render("{{ [1,2,3,4][1:3] }} {{ 'hello'[::-1] }} {{ {'a': 1}['a'] }} {{ 'x' if false else 'y' }}"),
            "[2, 3] olleh 1 y");
  EXPECT_EQ(render("{{ ' A b '.strip().lower() }} {{ 'a,b'.split(',') }} {{ 'abc'.startswith('ab') }}"),
            "a b ['a', 'b'] True");
  EXPECT_EQ(render("{{ {'k': [1, 'two', none]} | tojson }}"), "{\"k\":[1,\"two\",null]}");
}

TEST(Jinja, StatementsScopesAndWhitespace) {
  jinja::Dict vars{{"items", jinja::Value::from_json(json::array({"a", "b", "c"}))}};
  EXPECT_EQ(render("{% for x in items %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", vars),
            "1a,2b,3c");
  EXPECT_EQ(render("{% for x in items if x != 'b' %}{{ loop.index0 }}{{ x }}{% else %}none{% endfor %}", vars), "0a1c");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  // set inside a loop does not leak; a namespace does.
  EXPECT_EQ(render("{% set n = 0 %}{% for x in items %}{% set n = n + 1 %}{% endfor %}{{ n }}", vars), "0");
  EXPECT_EQ(
      render("{% set ns = namespace(n=0) %}{% for x in items %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}", vars),
      "3");
  // '-' strips whitespace; trim_blocks drops the newline after a block tag; lstrip_blocks the indent before it.
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif %}  c"), "ab  c");
  EXPECT_EQ(render("{% if true %}\nx\n{% endif %}\ny"), "x\ny");
  EXPECT_EQ(render("line\n    {% if true %}\nx\n    {% endif %}\n"), "line\nx\n");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(
      render("{% macro greet(name, p='!') %}hi {{ name }}{{ p }}{% endmacro %}{{ greet('x') }}{{ greet('y', '?') }}"),
      "hi x!hi y?");
  EXPECT_EQ(render("{% set s %}in{{ 1 }}{% endset %}[{{ s }}]"), "[in1]");
  EXPECT_EQ(render("{# comment #}{{ 'x' }}{#- another -#}  y"), "xy");
}

TEST(Jinja, ErrorsAreReported) {
  EXPECT_THROW(render("{% if x %}"), jinja::TemplateError);         // unclosed block
  EXPECT_THROW(render("{{ 1 + }}"), jinja::TemplateError);          // bad expression
  EXPECT_THROW(render("{% include 'x' %}"), jinja::TemplateError);  // unsupported statement
  EXPECT_THROW(render("{{ raise_exception('no') }}"), jinja::TemplateError);
  EXPECT_THROW(render("{{ 'a' | nosuchfilter }}"), jinja::TemplateError);
  try {
    render("{{ raise_exception('roles must alternate') }}");
  } catch (const jinja::TemplateError& e) {
    EXPECT_STREQ(e.what(), "roles must alternate");
  }
}

json conversation() {
  return json::array({{{"role", "system"}, {"content", "Be brief."}},
                      {{"role", "user"}, {"content", "Hello"}},
                      {{"role", "assistant"}, {"content", "Hi there"}},
                      {{"role", "user"}, {"content", "Again"}}});
}

TEST(ChatTemplate, Llama2) {
  const ChatTemplate t = ChatTemplate::resolve("llama2", "");
  EXPECT_EQ(t.render(conversation(), true),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] Again [/INST]");
}

TEST(ChatTemplate, Llama3) {
  const ChatTemplate t = ChatTemplate::resolve("llama3", "");
  EXPECT_EQ(t.render(json::array({{{"role", "user"}, {"content", "Hello"}}}), true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, ChatmlQwen) {
  const ChatTemplate t = ChatTemplate::resolve("chatml", "");
  EXPECT_EQ(t.render(json::array({{{"role", "user"}, {"content", "Hello"}}}), true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplate, MistralAndRoleErrors) {
  const ChatTemplate t = ChatTemplate::resolve("mistral", "");
  json msgs = json::array({{{"role", "user"}, {"content", "Hello"}},
                           {{"role", "assistant"}, {"content", "Hi"}},
                           {{"role", "user"}, {"content", "Again"}}});
  EXPECT_EQ(t.render(msgs, true), "<s>[INST] Hello [/INST]Hi</s>[INST] Again [/INST]");
  EXPECT_THROW(t.render(json::array({{{"role", "assistant"}, {"content", "x"}}}), true), Error);
}

TEST(ChatTemplate, UnknownChoiceIsAnError) {
  EXPECT_THROW(ChatTemplate::resolve("no-such-template", ""), Error);
  EXPECT_EQ(ChatTemplate::resolve("", "").name(), "raw");
}

}  // namespace
}  // namespace tessera::server
