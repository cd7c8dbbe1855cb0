// Request validation of the OpenAI and TGI bodies, without a server.
#include "server/request_parsing.h"

#include <gtest/gtest.h>

#include "engine/serving/id_tokenizer.h"
#include "server/api_error.h"
#include "server/openai_response.h"

namespace tessera::server {
namespace {

using nlohmann::json;

int status_of(const json& body) {
  serving::IdTokenizer tok(100, 1, 2);
  try {
    parse_completion(body, tok);
  } catch (const ApiError& e) {
    return e.status();
  }
  return 200;
}

TEST(RequestParsing, CompletionFieldsAreTypeAndRangeChecked) {
  EXPECT_EQ(status_of({{"prompt", "1 2 3"}}), 200);
  EXPECT_EQ(status_of({{"prompt", {1, 2}}}), 200);
  EXPECT_EQ(status_of({{"prompt", json::array({"5 6"})}}), 200);
  EXPECT_EQ(status_of(json::object()), 400);
  EXPECT_EQ(status_of({{"prompt", ""}}), 400);
  EXPECT_EQ(status_of({{"prompt", json::array()}}), 400);
  EXPECT_EQ(status_of({{"prompt", 5}}), 400);
  EXPECT_EQ(status_of({{"prompt", {1, 100}}}), 400);  // outside the vocabulary
  EXPECT_EQ(status_of({{"prompt", "1"}, {"temperature", "hot"}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"temperature", -1}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"top_p", 0}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"max_tokens", 1.5}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"n", 17}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"stop", {1}}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"stream", "yes"}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"logprobs", 21}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"presence_penalty", 3}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"stream_options", 1}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"max_tokens", -1}}), 400);
}

TEST(RequestParsing, MaxTokensZeroOnlyWithEcho) {
  // Scoring a prompt (lm-evaluation-harness): max_tokens 0 with echo generates nothing; without echo it is a 400
  // that says why.
  serving::IdTokenizer tok(100, 1, 2);
  const ParsedRequest p =
      parse_completion({{"prompt", {"5 6", "7"}}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 3}}, tok);
  EXPECT_EQ(p.request.max_new_tokens, 0);
  EXPECT_TRUE(p.request.prompt_logprobs);
  for (const serving::ServingRequest& r : engine_requests(p)) EXPECT_EQ(r.max_new_tokens, 0);
  EXPECT_EQ(parse_completion({{"prompt", "5"}, {"max_tokens", 0}, {"echo", true}}, tok).request.max_new_tokens, 0);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"max_tokens", 0}}), 400);
  EXPECT_EQ(status_of({{"prompt", "1"}, {"max_tokens", 0}, {"echo", false}, {"logprobs", 1}}), 400);
  try {
    parse_completion({{"prompt", "1"}, {"max_tokens", 0}}, tok);
    ADD_FAILURE() << "max_tokens 0 without echo was accepted";
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("echo"), std::string::npos) << e.what();
    EXPECT_EQ(e.body()["error"]["param"], "max_tokens");
  }
  // Chat and TGI always generate.
  const ChatTemplate raw = ChatTemplate::resolve("raw", "");
  EXPECT_THROW(parse_chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"max_tokens", 0}}, tok, raw),
               ApiError);
  EXPECT_THROW(parse_tgi({{"inputs", "5"}, {"parameters", {{"max_new_tokens", 0}}}}, tok, false), ApiError);
}

TEST(RequestParsing, CompletionValuesReachTheRequest) {
  serving::IdTokenizer tok(100, 1, 2);
  const ParsedRequest p = parse_completion({{"prompt", "5 6"},
                                            {"max_tokens", 7},
                                            {"temperature", 0},
                                            {"seed", 3},
                                            {"stop", "x"},
                                            {"n", 2},
                                            {"logprobs", 2},
                                            {"stream", true},
                                            {"stream_options", {{"include_usage", true}}}},
                                           tok);
  ASSERT_EQ(p.prompts.size(), 1u);
  EXPECT_EQ(p.prompts[0].tokens, (std::vector<int>{1, 5, 6}));
  EXPECT_EQ(p.prompts[0].text, "5 6");
  EXPECT_FALSE(p.request.prompt_logprobs);
  EXPECT_EQ(p.request.max_new_tokens, 7);
  EXPECT_TRUE(p.request.sampling.greedy());
  EXPECT_EQ(p.request.sampling.seed, 3u);
  EXPECT_EQ(p.request.stop, (std::vector<std::string>{"x"}));
  EXPECT_EQ(p.n, 2);
  EXPECT_EQ(p.request.top_logprobs, 2);
  EXPECT_TRUE(p.stream && p.include_usage);
}

TEST(RequestParsing, PromptListsAreBatches) {
  serving::IdTokenizer tok(100, 1, 2);
  // A list of strings: one prompt each, in order.
  const ParsedRequest s = parse_completion({{"prompt", {"5 6", "7", "8 9 10"}}, {"n", 2}, {"seed", 4}}, tok);
  ASSERT_EQ(s.prompts.size(), 3u);
  EXPECT_EQ(s.prompts[0].tokens, (std::vector<int>{1, 5, 6}));
  EXPECT_EQ(s.prompts[1].tokens, (std::vector<int>{1, 7}));
  EXPECT_EQ(s.prompts[2].tokens, (std::vector<int>{1, 8, 9, 10}));
  EXPECT_EQ(s.prompts[2].text, "8 9 10");
  // n sequences per prompt, choice index = prompt index * n + j; seeds restart for every prompt.
  const std::vector<serving::ServingRequest> r = engine_requests(s);
  ASSERT_EQ(r.size(), 6u);
  for (size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i].prompt, s.prompts[i / 2].tokens) << i;
    EXPECT_EQ(r[i].sampling.seed, 4u + i % 2) << i;
    EXPECT_EQ(&s.prompt_of(i), &s.prompts[i / 2]);
  }
  // A list of token-id lists.
  const ParsedRequest t = parse_completion({{"prompt", {{1, 5}, {1, 6, 7}}}}, tok);
  ASSERT_EQ(t.prompts.size(), 2u);
  EXPECT_EQ(t.prompts[1].tokens, (std::vector<int>{1, 6, 7}));
  EXPECT_EQ(t.prompts[1].text, "1 6 7");
  EXPECT_EQ(engine_requests(t).size(), 2u);
  // One token-id list is one prompt, not a batch of single tokens.
  EXPECT_EQ(parse_completion({{"prompt", {1, 5, 6}}}, tok).prompts.size(), 1u);

  // An empty list, an empty prompt in a list, mixed or malformed items: 400 before anything is submitted.
  EXPECT_EQ(status_of({{"prompt", json::array()}}), 400);
  EXPECT_EQ(status_of({{"prompt", json::array({"5", ""})}}), 400);
  EXPECT_EQ(status_of({{"prompt", {{1, 5}, json::array()}}}), 400);
  EXPECT_EQ(status_of({{"prompt", {json("5"), json::array({1, 5})}}}), 400);  // strings and token lists mixed
  EXPECT_EQ(status_of({{"prompt", {json::array({1, 5}), json("5")}}}), 400);
  EXPECT_EQ(status_of({{"prompt", {json("5"), json(5)}}}), 400);
  EXPECT_EQ(status_of({{"prompt", {json::array({1, 5}), json(5)}}}), 400);
  EXPECT_EQ(status_of({{"prompt", {json(1), json("5")}}}), 400);
  EXPECT_EQ(status_of({{"prompt", {{1, "5"}}}}), 400);
  EXPECT_EQ(status_of({{"prompt", {{1, 100}}}}), 400);  // outside the vocabulary
  EXPECT_EQ(status_of({{"prompt", {{{1}}}}}), 400);     // nested too deep
  EXPECT_EQ(status_of({{"prompt", {nullptr}}}), 400);
}

TEST(RequestParsing, EchoWithLogprobsAsksForPromptLogprobs) {
  serving::IdTokenizer tok(100, 1, 2);
  EXPECT_TRUE(parse_completion({{"prompt", "5"}, {"echo", true}, {"logprobs", 0}}, tok).request.prompt_logprobs);
  EXPECT_FALSE(parse_completion({{"prompt", "5"}, {"echo", true}}, tok).request.prompt_logprobs);
  EXPECT_FALSE(parse_completion({{"prompt", "5"}, {"logprobs", 3}}, tok).request.prompt_logprobs);
}

serving::TokenOutput token(int id, std::string piece, float logprob, std::vector<serving::TopLogprob> top = {}) {
  serving::TokenOutput t;
  t.token = id;
  t.text = piece;
  t.piece = std::move(piece);
  t.logprob = logprob;
  t.top = std::move(top);
  return t;
}

TEST(OpenAiResponse, ListChoicesEchoTheirPromptWithItsLogprobs) {
  serving::IdTokenizer tok(100, 1, 2);
  const ParsedRequest p = parse_completion({{"prompt", {"5 6", "7"}}, {"n", 2}, {"echo", true}, {"logprobs", 1}}, tok);
  ASSERT_TRUE(p.request.prompt_logprobs);
  std::vector<Choice> choices(4);
  for (size_t i = 0; i < choices.size(); ++i) {
    serving::StreamChunk chunk;
    serving::TokenOutput first = token(1, "1", 0.0f);
    first.has_logprob = false;
    chunk.prompt = {first, token(5, " 5", -1.5f, {{5, -1.5f, " 5"}})};
    chunk.tokens = {token(9, " 9", -0.25f, {{9, -0.25f, " 9"}})};
    chunk.finished = true;
    chunk.prompt_tokens = i < 2 ? 3 : 2;
    chunk.completion_tokens = 1;
    absorb(choices[i], chunk);
  }
  const nlohmann::json out = openai_choices(p, choices);
  ASSERT_EQ(out.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(out[i]["index"], i);
    EXPECT_EQ(out[i]["text"], (i < 2 ? "5 6" : "7") + std::string(" 9"));  // the choice's own prompt
    const nlohmann::json& lp = out[i]["logprobs"];
    EXPECT_EQ(lp["tokens"], json({"1", " 5", " 9"}));
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    EXPECT_TRUE(lp["top_logprobs"][0].is_null());
    EXPECT_EQ(lp["token_logprobs"][1], -1.5f);
    EXPECT_EQ(lp["top_logprobs"][2], json({{" 9", -0.25f}}));
    // Prompt tokens from 0, generated ones after the echoed prompt text.
    EXPECT_EQ(lp["text_offset"], json({0, 1, i < 2 ? 3 : 1}));
  }
  // Prompt tokens count once per prompt, completion tokens once per choice.
  EXPECT_EQ(usage_of(choices, p.n), json({{"prompt_tokens", 5}, {"completion_tokens", 4}, {"total_tokens", 9}}));
}

TEST(OpenAiResponse, CompletionTopLogprobsAlsoHoldTheChosenToken) {
  // As OpenAI and vLLM: a completion's top_logprobs are the k most likely plus the chosen token when it is not
  // among them (k + 1 entries), for generated and echoed prompt tokens alike; logprobs 0 gives the chosen token
  // alone. Chat's top_logprobs stay the k most likely.
  serving::IdTokenizer tok(100, 1, 2);
  const ParsedRequest p = parse_completion({{"prompt", "5"}, {"echo", true}, {"logprobs", 2}}, tok);
  Choice c;
  serving::StreamChunk chunk;
  serving::TokenOutput first = token(1, "", 0.0f);
  first.has_logprob = false;
  chunk.prompt = {first, token(5, "5", -4.0f, {{7, -0.5f, "7"}, {8, -1.0f, "8"}})};  // not among the top 2
  chunk.tokens = {token(9, " 9", -0.25f, {{9, -0.25f, " 9"}, {3, -2.0f, " 3"}}),     // the top one
                  token(4, " 4", -3.0f, {{6, -0.1f, " 6"}, {9, -2.5f, " 9"}})};      // not among the top 2
  chunk.finished = true;
  absorb(c, chunk);
  const json lp = openai_choices(p, {c})[0]["logprobs"];
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_EQ(lp["top_logprobs"][1], json({{"7", -0.5f}, {"8", -1.0f}, {"5", -4.0f}}));
  EXPECT_EQ(lp["top_logprobs"][2], json({{" 9", -0.25f}, {" 3", -2.0f}}));
  EXPECT_EQ(lp["top_logprobs"][3], json({{" 6", -0.1f}, {" 9", -2.5f}, {" 4", -3.0f}}));
  // The streamed form (completion_logprobs) is the same.
  EXPECT_EQ(completion_logprobs(c.tokens, 1)["top_logprobs"], json({lp["top_logprobs"][2], lp["top_logprobs"][3]}));
  // logprobs 0: only the chosen token.
  const serving::TokenOutput alone = token(4, " 4", -3.0f);
  EXPECT_EQ(completion_logprobs({alone}, 0)["top_logprobs"][0], json({{" 4", -3.0f}}));
  // Chat: exactly the k most likely.
  const json chat = chat_logprobs(c.tokens)["content"];
  ASSERT_EQ(chat.size(), 2u);
  EXPECT_EQ(chat[1]["token"], " 4");
  ASSERT_EQ(chat[1]["top_logprobs"].size(), 2u);
  EXPECT_EQ(chat[1]["top_logprobs"][0]["token"], " 6");
  EXPECT_EQ(chat[1]["top_logprobs"][1]["token"], " 9");
}

TEST(RequestParsing, MalformedJsonAndChatAndTgi) {
  EXPECT_THROW(parse_json_body("{nope"), ApiError);
  EXPECT_THROW(parse_json_body("[1]"), ApiError);
  serving::IdTokenizer tok(300, 1, 2);
  const ChatTemplate raw = ChatTemplate::resolve("raw", "");
  EXPECT_THROW(parse_chat({{"messages", json::array()}}, tok, raw), ApiError);
  EXPECT_THROW(parse_chat({{"messages", {{{"role", 1}}}}}, tok, raw), ApiError);
  EXPECT_THROW(parse_chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"top_logprobs", 2}}, tok, raw),
               ApiError);
  const ParsedRequest c = parse_chat({{"messages", {{{"role", "user"}, {"content", "A"}}}}}, tok, raw);
  EXPECT_EQ(c.prompts.at(0).tokens, (std::vector<int>{1, 3 + 'A'}));  // <s> -> BOS id, then the byte ids
  EXPECT_THROW(parse_tgi({{"inputs", 3}}, tok, false), ApiError);
  const ParsedRequest g = parse_tgi({{"inputs", "5"}, {"parameters", {{"max_new_tokens", 4}}}}, tok, true);
  EXPECT_TRUE(g.request.sampling.greedy());  // TGI is greedy unless asked to sample
  EXPECT_EQ(g.request.max_new_tokens, 4);
}

}  // namespace
}  // namespace tessera::server
