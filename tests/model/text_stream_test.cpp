#include "engine/runtime/text_stream.h"

#include <gtest/gtest.h>

#include "tests/model/fake_tokenizer.h"

namespace tessera {
namespace {

const testing::FakeTokenizer& tok() {
  static const testing::FakeTokenizer t({"<unk>", "<s>", "</s>", "\xE2\x96\x81Once", "\xE2\x96\x81upon",
                                         "\xE2\x96\x81"
                                         "a",
                                         "<0x0A>", "Lily", "<0xE2>", "<0x9C>", "<0x85>", "\xE2\x96\x81time", "!",
                                         "\xE2\x96\x81THE",
                                         "\xE2\x96\x81"
                                         "END"});
  return t;
}

std::string stream_all(TextStream& s, const std::vector<int>& ids, std::vector<std::string>* chunks = nullptr) {
  std::string out;
  for (int id : ids) {
    const std::string piece = s.push(id);
    if (chunks && !piece.empty()) chunks->push_back(piece);
    out += piece;
  }
  out += s.finish();
  return out;
}

TEST(TextStream, FirstPieceLosesItsSpaceAfterBos) {
  TextStream s(tok(), {}, {}, false);
  EXPECT_EQ(stream_all(s, {3, 4, 5, 6, 7}), "Once upon a\nLily");
}

TEST(TextStream, ContinuationKeepsItsSpace) {
  TextStream s(tok(), {3}, {}, false);  // the prompt "Once"
  EXPECT_EQ(stream_all(s, {4, 5}), " upon a");
}

TEST(TextStream, EchoEmitsThePromptFirst) {
  TextStream s(tok(), {3, 4}, {}, true);
  EXPECT_EQ(s.text(), "Once upon");
  stream_all(s, {5});
  EXPECT_EQ(s.text(), "Once upon a");
}

TEST(TextStream, HoldsBackUnfinishedUtf8) {
  TextStream s(tok(), {}, {}, false);
  std::vector<std::string> chunks;
  // U+2705 (check mark) arrives as three byte pieces; nothing may be shown until the last one.
  const std::string text = stream_all(s, {3, 8, 9, 10}, &chunks);
  EXPECT_EQ(text, "Once\xE2\x9C\x85");
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[1], "\xE2\x9C\x85");
}

TEST(TextStream, StopStringEndsAndIsNotShown) {
  TextStream s(tok(), {}, {"THE END", "zzz"}, false);
  std::string out;
  for (int id : {3, 4, 13, 14, 5, 11}) {
    out += s.push(id);
    if (s.stopped()) break;
  }
  out += s.finish();
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(out, "Once upon ");
  EXPECT_EQ(s.text(), "Once upon ");
}

TEST(TextStream, PossibleStopPrefixIsHeldThenReleased) {
  TextStream s(tok(), {}, {" upon a time!"}, false);
  std::string out;
  out += s.push(3);
  out += s.push(4);
  EXPECT_EQ(out, "Once");  // " upon" could start the stop string
  out += s.push(5);
  out += s.push(7);  // "Lily" breaks the match: everything is released
  EXPECT_EQ(out, "Once upon aLily");
  EXPECT_FALSE(s.stopped());
}

TEST(TextStream, PeekGivesEachCandidatesTextInContext) {
  TextStream s(tok(), {}, {"THE END"}, false);
  // At the start a piece loses its space; after text it keeps it.
  EXPECT_EQ(s.peek({3, 4, 1}), (std::vector<std::string>{"Once", "upon", ""}));  // BOS adds nothing
  s.push(3);
  EXPECT_EQ(s.peek({4, 6, 13}), (std::vector<std::string>{" upon", "\n", " THE"}));  // before any stop string
  EXPECT_EQ(s.peek({4}), (std::vector<std::string>{" upon"}));                       // nothing changed
  // Byte pieces of one character: empty until the one that completes it, which carries the whole character.
  std::string spelled = "Once";
  for (int id : {8, 9, 10, 4}) {
    spelled += s.peek({id})[0];
    s.push(id);
  }
  EXPECT_EQ(spelled, "Once\xE2\x9C\x85 upon");
  EXPECT_EQ(s.peek({8})[0], "");
}

TEST(TextStream, PeekAfterAContextKeepsTheSpace) {
  const TextStream s(tok(), {1, 3}, {}, false);  // <s> Once
  EXPECT_EQ(s.peek({4, 7}), (std::vector<std::string>{" upon", "Lily"}));
}

}  // namespace
}  // namespace tessera
