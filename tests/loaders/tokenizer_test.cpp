// Tokenizers against the SentencePiece Python module (expected ids come from sp_reference_ids.py, never from
// our code): the SentencePiece-library tokenizer and the llama2.c tokenizer.bin implementation, for the Llama 2
// (32000) and tok512 vocabularies, plus decode round trips and malformed tokenizer files.
#include "loaders/tokenizer.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "tests/loaders/test_util.h"

namespace tessera {
namespace {

using test::expect_error;
using test::TempDir;
using test::write_file;

const std::vector<std::string> kTricky = {
    "",
    "Once upon a time, there was a little girl.",
    "Hello world",
    "a",
    " ",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple   inner    spaces",
    "   ",
    "\n",
    "line one\nline two\n\nline four\n",
    "tab\there\t\tand\t",
    "mixed\r\nCRLF\r\n",
    "digits 0123456789 3.14159 1e-5 42,000",
    "naïve café résumé Ünïcödé ÄÖÜ ß",
    "日本語のテキストです。",
    "中文字符测试，你好世界",
    "한국어 텍스트",
    "Привет, мир!",
    "مرحبا بالعالم",
    "emoji 🦙🚀😀 👍🏽 👨‍👩‍👧",
    "😀😀😀",
    "rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ 𓀀 ∑∫√∞≠≤",
    std::string("control \x01\x02\x7f chars"),
    "zero\u200bwidth\u00a0nbsp",
    "<s> and </s> and <unk> are plain text here",
    "<0x41> looks like a byte piece",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the quick brown fox?",
    "def f(x):\n    return x ** 2  # comment\n",
};

struct Reference {
  std::vector<std::vector<int>> ids;
  std::vector<std::string> decoded;
  int bos_id = -1, eos_id = -1, vocab_size = 0;
};

// Runs sp_reference_ids.py on `model`; nullopt when the Python module is missing (the caller skips).
std::optional<Reference> python_reference(const std::string& model, const std::vector<std::string>& strings) {
  TempDir dir;
  const std::string in = dir.file("strings.json"), out = dir.file("ids.json");
  write_file(in, nlohmann::json(strings).dump());
  const std::string cmd = std::string("'") + TESSERA_PYTHON + "' '" + TESSERA_LOADERS_TEST_DIR +
                          "/sp_reference_ids.py' '" + model + "' '" + in + "' '" + out + "'";
  const int status = std::system(cmd.c_str());
  if (WIFEXITED(status) && WEXITSTATUS(status) == 3) return std::nullopt;
  if (status != 0) {
    ADD_FAILURE() << "reference script failed (status " << status << "): " << cmd;
    return std::nullopt;
  }
  const auto j = nlohmann::json::parse(test::read_file(out));
  Reference r;
  r.ids = j.at("ids").get<std::vector<std::vector<int>>>();
  r.decoded = j.at("decoded").get<std::vector<std::string>>();
  r.bos_id = j.at("bos_id");
  r.eos_id = j.at("eos_id");
  r.vocab_size = j.at("vocab_size");
  return r;
}

#define TESSERA_REQUIRE_REFERENCE(var, model)                            \
  const std::optional<Reference> var = python_reference(model, kTricky); \
  if (!var) GTEST_SKIP() << "the sentencepiece Python module is not installed for " << TESSERA_PYTHON

// Every string encodes to the reference ids (strings where `only` says false are skipped) and decodes back.
void expect_matches(const Tokenizer& tok, const Reference& ref, const std::vector<bool>& only = {}) {
  EXPECT_EQ(tok.vocab_size(), ref.vocab_size);
  EXPECT_EQ(tok.bos_id(), ref.bos_id);
  EXPECT_EQ(tok.eos_id(), ref.eos_id);
  ASSERT_EQ(ref.ids.size(), kTricky.size());
  for (size_t i = 0; i < kTricky.size(); ++i) {
    if (!only.empty() && !only[i]) continue;
    const std::string& s = kTricky[i];
    const std::vector<int> ids = tok.encode(s, false);
    EXPECT_EQ(ids, ref.ids[i]) << "text: \"" << s << "\"";
    EXPECT_EQ(tok.decode(ids), ref.decoded[i]) << "text: \"" << s << "\"";
    std::vector<int> with_bos = tok.encode(s, true);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos.front(), tok.bos_id());
    with_bos.push_back(tok.eos_id());
    EXPECT_EQ(tok.decode(with_bos), ref.decoded[i]) << "BOS/EOS must decode to nothing";
  }
}

// Strings that SentencePiece's normaliser leaves alone: decode(encode(s)) == s holds exactly for them.
std::vector<bool> round_trips(const Reference& ref) {
  std::vector<bool> keep;
  for (size_t i = 0; i < kTricky.size(); ++i) keep.push_back(ref.decoded[i] == kTricky[i]);
  return keep;
}

TEST(LoaderTokenizer, Llama2ModelMatchesPython) {
  TESSERA_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  TESSERA_REQUIRE_REFERENCE(ref, model);
  // The Llama 2 tokenizer keeps every space: all of these round-trip.
  for (size_t i = 0; i < kTricky.size(); ++i) EXPECT_EQ(ref->decoded[i], kTricky[i]);
  expect_matches(*load_tokenizer(model), *ref);
}

TEST(LoaderTokenizer, Llama2BinMatchesPython) {
  TESSERA_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  TESSERA_REQUIRE_MODEL(bin, "llama2-tokenizer/tokenizer.bin");
  TESSERA_REQUIRE_REFERENCE(ref, model);
  expect_matches(*load_tokenizer(bin), *ref);
}

TEST(LoaderTokenizer, Tok512ModelAndBinMatchPython) {
  TESSERA_REQUIRE_MODEL(model, "stories260K/tok512.model");
  TESSERA_REQUIRE_MODEL(bin, "stories260K/tok512.bin");
  TESSERA_REQUIRE_REFERENCE(ref, model);
  expect_matches(*load_tokenizer(model), *ref);
  // tok512 was trained with remove_extra_whitespaces (SentencePiece's default): leading, trailing and repeated
  // spaces are squeezed. tokenizer.bin does not record that flag (llama2.c's run.c ignores it too), so the .bin
  // tokenizer is compared on the strings that normalisation leaves unchanged.
  const std::vector<bool> keep = round_trips(*ref);
  EXPECT_GE(std::count(keep.begin(), keep.end(), true), 20);
  expect_matches(*load_tokenizer(bin), *ref, keep);
}

TEST(LoaderTokenizer, KnownIdsFromProvenance) {
  const std::string text = "Once upon a time, there was a little girl.";
  for (const char* rel : {"llama2-tokenizer/tokenizer.model", "llama2-tokenizer/tokenizer.bin"}) {
    TESSERA_REQUIRE_MODEL(path, rel);
    EXPECT_EQ(load_tokenizer(path)->encode(text, true),
              (std::vector<int>{1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 29889}))
        << rel;
  }
  for (const char* rel : {"stories260K/tok512.model", "stories260K/tok512.bin"}) {
    TESSERA_REQUIRE_MODEL(path, rel);
    EXPECT_EQ(load_tokenizer(path)->encode(text, false),
              (std::vector<int>{403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 426}))
        << rel;
  }
}

// Random text and random id sequences: the tokenizer.bin implementation against the SentencePiece library.
TEST(LoaderTokenizer, BinAgreesWithLibraryOnRandomInput) {
  TESSERA_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  TESSERA_REQUIRE_MODEL(bin, "llama2-tokenizer/tokenizer.bin");
  const auto sp = load_tokenizer(model);
  const auto l2c = load_tokenizer(bin);
  const std::vector<std::string> alphabet = {"a", "e", "t", "h", "in", "the", " ", " ", "  ", "\n", "\t", "0", "7", ".",
                                             ",", "'", "é", "ß", "中", "文", "日", "😀", "🦙", "Ж", "ـ", "\u200b", "A",
                                             "Z", "ing", "<", ">", "s", "/", "\x01",
                                             // invalid UTF-8: a stray continuation byte, a cut 2- and 3-byte sequence
                                             "\x80", "\xc3", "\xe6\x97", "\xff"};
  std::mt19937 rng(1234);
  for (int n = 0; n < 400; ++n) {
    std::string s;
    const int len = static_cast<int>(rng() % 24);
    for (int i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    const std::vector<int> ids = sp->encode(s, false);
    ASSERT_EQ(l2c->encode(s, false), ids) << "text: \"" << s << "\"";
    ASSERT_EQ(l2c->decode(ids), sp->decode(ids));
  }
  // Decoding arbitrary ids, including BOS/EOS/unk, runs of byte pieces that are not valid UTF-8, and leading
  // pieces that start with a space.
  for (int n = 0; n < 400; ++n) {
    std::vector<int> ids;
    const int len = static_cast<int>(rng() % 8);
    for (int i = 0; i < len; ++i) {
      const uint32_t kind = rng() % 4;
      ids.push_back(kind == 0   ? static_cast<int>(rng() % 3)
                    : kind == 1 ? 3 + static_cast<int>(rng() % 256)
                                : static_cast<int>(rng() % 32000));
    }
    ASSERT_EQ(l2c->decode(ids), sp->decode(ids)) << "ids: " << nlohmann::json(ids).dump();
  }
}

TEST(LoaderTokenizer, FindTokenizerFor) {
  TempDir dir;
  EXPECT_EQ(find_tokenizer_for(dir.str()), "");
  EXPECT_EQ(find_tokenizer_for(dir.file("model.bin")), "");
  write_file(dir.file("tokenizer.bin"), "x");
  EXPECT_EQ(find_tokenizer_for(dir.file("model.bin")), dir.file("tokenizer.bin"));
  EXPECT_EQ(find_tokenizer_for(dir.str()), "") << "a HF directory uses tokenizer.model";
  write_file(dir.file("tokenizer.model"), "x");
  EXPECT_EQ(find_tokenizer_for(dir.file("model.bin")), dir.file("tokenizer.model"));
  EXPECT_EQ(find_tokenizer_for(dir.str()), dir.file("tokenizer.model"));
}

TEST(LoaderTokenizer, RejectsMalformedFiles) {
  TempDir dir;
  const std::string path = dir.file("tok.bin");
  expect_error([&] { load_tokenizer(path); }, {path, "cannot open"});
  write_file(path, "this is not a tokenizer at all");
  expect_error([&] { load_tokenizer(path); }, {path, "not a tokenizer", "SentencePiece", "tokenizer.bin"});
  write_file(path, "");
  expect_error([&] { load_tokenizer(path); }, {path, "not a tokenizer"});
  // A tokenizer.bin cut inside its last entry, and one whose entry length exceeds max_token_length.
  std::string bin;
  test::append_pod(bin, uint32_t{6});
  for (const char* piece : {"<unk>", "\n<s>\n", "\n</s>\n"}) {
    test::append_pod(bin, 0.0f);
    test::append_pod(bin, static_cast<int32_t>(std::strlen(piece)));
    bin += piece;
  }
  write_file(path, bin.substr(0, bin.size() - 2));
  expect_error([&] { load_tokenizer(path); }, {path, "entry 2", "runs past the end"});
  bin[0] = 5;  // "\n</s>\n" is 6 bytes, longer than max_token_length
  write_file(path, bin);
  expect_error([&] { load_tokenizer(path); }, {path, "entry 2", "length 6"});
  bin[0] = 6;
  write_file(path, bin);
  const auto tok = load_tokenizer(path);
  EXPECT_EQ(tok->vocab_size(), 3);
  expect_error([&] { tok->decode({3}); }, {path, "token id 3 is outside the vocabulary"});
}

TEST(LoaderTokenizer, OutOfRangeIdsAreErrors) {
  TESSERA_REQUIRE_MODEL(model, "stories260K/tok512.model");
  expect_error([&] { load_tokenizer(model)->decode({1, 512}); }, {model});
}

}  // namespace
}  // namespace tessera
