#include "engine/sampling/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "engine/core/check.h"

namespace tessera {
namespace {

SamplingParams params(float temperature, uint64_t seed = 1) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

std::vector<int> draw(SamplingParams p, const std::vector<float>& logits, int n) {
  Sampler s(p, static_cast<int>(logits.size()));
  std::vector<int> out;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    out.push_back(s.sample(l.data(), {}));
  }
  return out;
}

TEST(Sampler, GreedyPicksFirstMaximum) {
  std::vector<float> logits{0.1f, 3.0f, -1.0f, 3.0f};
  Sampler s(params(0.0f), 4);
  EXPECT_EQ(s.sample(logits.data(), {}), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  std::vector<float> logits{1.0f, 1.5f, 0.2f, 0.9f, 1.1f};
  EXPECT_EQ(draw(params(1.0f, 7), logits, 50), draw(params(1.0f, 7), logits, 50));
  EXPECT_NE(draw(params(1.0f, 7), logits, 50), draw(params(1.0f, 8), logits, 50));
}

// Frequencies follow softmax(logits / T): a chi-square test with a generous threshold (fails for a wrong T).
TEST(Sampler, TemperatureMatchesSoftmax) {
  const std::vector<float> logits{2.0f, 1.0f, 0.0f, -1.0f};
  for (float t : {0.5f, 1.0f, 2.0f}) {
    const int n = 40000;
    const auto tokens = draw(params(t, 123), logits, n);
    std::vector<double> expected(4);
    double z = 0;
    for (int i = 0; i < 4; ++i) z += std::exp(logits[i] / t);
    for (int i = 0; i < 4; ++i) expected[i] = n * std::exp(logits[i] / t) / z;
    std::vector<int> counts(4);
    for (int tok : tokens) counts[tok]++;
    double chi2 = 0;
    for (int i = 0; i < 4; ++i) chi2 += (counts[i] - expected[i]) * (counts[i] - expected[i]) / expected[i];
    EXPECT_LT(chi2, 25.0) << "temperature " << t;  // 3 dof: p < 1e-4
  }
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  SamplingParams p = params(1.0f);
  p.top_k = 2;
  const auto tokens = draw(p, {0.0f, 5.0f, 1.0f, 4.9f, 0.5f}, 500);
  const std::set<int> seen(tokens.begin(), tokens.end());
  EXPECT_EQ(seen, (std::set<int>{1, 3}));
}

TEST(Sampler, TopPKeepsTheNucleus) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 needs the first two only; 0.85 needs three.
  const std::vector<float> logits{std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams p = params(1.0f);
  p.top_p = 0.75f;
  auto tokens = draw(p, logits, 2000);
  EXPECT_EQ(std::set<int>(tokens.begin(), tokens.end()), (std::set<int>{0, 1}));
  p.top_p = 0.85f;
  tokens = draw(p, logits, 4000);
  EXPECT_EQ(std::set<int>(tokens.begin(), tokens.end()), (std::set<int>{0, 1, 2}));
  // Within the nucleus the renormalised ratio holds: 0.5 : 0.3.
  p.top_p = 0.75f;
  tokens = draw(p, logits, 20000);
  const double frac0 = std::count(tokens.begin(), tokens.end(), 0) / 20000.0;
  EXPECT_NEAR(frac0, 0.5 / 0.8, 0.02);
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  // p = 0.6, 0.25, 0.1, 0.05; min_p 0.2 keeps p >= 0.12: tokens 0 and 1.
  const std::vector<float> logits{std::log(0.6f), std::log(0.25f), std::log(0.1f), std::log(0.05f)};
  SamplingParams p = params(1.0f);
  p.min_p = 0.2f;
  const auto tokens = draw(p, logits, 3000);
  EXPECT_EQ(std::set<int>(tokens.begin(), tokens.end()), (std::set<int>{0, 1}));
}

TEST(Sampler, RepetitionPenaltyFollowsTheCtrlRule) {
  // Token 0 is best, but it was already seen: positive logit divided by 1.5 (3 -> 2) loses to token 1 (2.5).
  std::vector<float> logits{3.0f, 2.5f, -1.0f};
  SamplingParams p = params(0.0f);
  p.repetition_penalty = 1.5f;
  Sampler s(p, 3);
  const std::vector<int> context{0, 0, 2};
  EXPECT_EQ(s.sample(logits.data(), context), 1);
  EXPECT_FLOAT_EQ(logits[0], 2.0f);
  EXPECT_FLOAT_EQ(logits[2], -1.5f);  // negative logits are multiplied, once despite repeats
  EXPECT_FLOAT_EQ(logits[1], 2.5f);
}

TEST(Sampler, RejectsOutOfRangeParameters) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(p.validate(), Error);
  p = SamplingParams{};
  p.temperature = -1.0f;
  EXPECT_THROW(p.validate(), Error);
  p = SamplingParams{};
  p.min_p = 1.5f;
  EXPECT_THROW(Sampler(p, 10), Error);
}

}  // namespace
}  // namespace tessera
