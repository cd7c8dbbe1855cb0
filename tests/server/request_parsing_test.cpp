// Request validation of the OpenAI and TGI bodies, without a server.
#include "server/request_parsing.h"

#include <gtest/gtest.h>

#include "engine/serving/id_tokenizer.h"
#include "server/api_error.h"

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
  EXPECT_EQ(p.request.prompt, (std::vector<int>{1, 5, 6}));
  EXPECT_EQ(p.request.max_new_tokens, 7);
  EXPECT_TRUE(p.request.sampling.greedy());
  EXPECT_EQ(p.request.sampling.seed, 3u);
  EXPECT_EQ(p.request.stop, (std::vector<std::string>{"x"}));
  EXPECT_EQ(p.n, 2);
  EXPECT_EQ(p.request.top_logprobs, 2);
  EXPECT_TRUE(p.stream && p.include_usage);
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
  EXPECT_EQ(c.request.prompt, (std::vector<int>{1, 3 + 'A'}));  // <s> -> BOS id, then the byte ids
  EXPECT_THROW(parse_tgi({{"inputs", 3}}, tok, false), ApiError);
  const ParsedRequest g = parse_tgi({{"inputs", "5"}, {"parameters", {{"max_new_tokens", 4}}}}, tok, true);
  EXPECT_TRUE(g.request.sampling.greedy());  // TGI is greedy unless asked to sample
  EXPECT_EQ(g.request.max_new_tokens, 4);
}

}  // namespace
}  // namespace tessera::server
