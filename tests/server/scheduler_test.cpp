// Scheduler policies without a model: admission, chunked prefill under the step budget, preemption.
#include "engine/serving/scheduler.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "engine/serving/block_manager.h"

namespace tessera::serving {
namespace {

TEST(BlockManager, ReservesGrowsAndReleases) {
  BlockManager bm(8, 4);
  EXPECT_EQ(bm.num_free(), 8);
  EXPECT_EQ(bm.blocks_for(0), 0);
  EXPECT_EQ(bm.blocks_for(4), 1);
  EXPECT_EQ(bm.blocks_for(5), 2);
  ASSERT_TRUE(bm.reserve(1, 5));
  EXPECT_EQ(bm.blocks_of(1), 2);
  EXPECT_EQ(bm.num_used(), 2);
  ASSERT_TRUE(bm.reserve(1, 8));  // still two blocks
  EXPECT_EQ(bm.blocks_of(1), 2);
  ASSERT_TRUE(bm.reserve(1, 9));
  EXPECT_EQ(bm.blocks_of(1), 3);
  EXPECT_EQ(bm.block_table(1).size(), 3u);
  EXPECT_FALSE(bm.reserve(2, 24));  // needs 6, 5 free: nothing changes
  EXPECT_EQ(bm.blocks_of(2), 0);
  EXPECT_EQ(bm.num_free(), 5);
  bm.release(1);
  EXPECT_EQ(bm.num_free(), 8);
  EXPECT_TRUE(bm.block_table(1).empty());
  bm.release(1);  // no-op
  EXPECT_EQ(bm.num_free(), 8);
}

TEST(BlockManager, TablesNeverShareBlocks) {
  BlockManager bm(6, 2);
  ASSERT_TRUE(bm.reserve(1, 4));
  ASSERT_TRUE(bm.reserve(2, 4));
  ASSERT_TRUE(bm.reserve(3, 4));
  std::vector<int> seen(6, 0);
  for (int s = 1; s <= 3; ++s)
    for (int b : bm.block_table(s)) ++seen[static_cast<size_t>(b)];
  for (int c : seen) EXPECT_EQ(c, 1);
  EXPECT_EQ(bm.num_free(), 0);
}

struct Fixture {
  Fixture(int num_blocks, int block_size, SchedulerConfig config) : bm(num_blocks, block_size), sched(config, bm) {}

  SeqSchedState* add(int id, int prompt) {
    seqs.push_back(std::make_unique<SeqSchedState>());
    SeqSchedState* s = seqs.back().get();
    s->id = id;
    s->n_tokens = prompt;
    sched.add(s);
    return s;
  }
  SeqSchedState* get(int id) {
    for (auto& s : seqs)
      if (s->id == id) return s.get();
    return nullptr;
  }
  // What the engine does after a step: the chunks' rows are now cached; chunks with logits add one token.
  void run(const StepPlan& plan) {
    for (const ScheduledChunk& c : plan.chunks) {
      SeqSchedState* s = get(c.seq_id);
      EXPECT_EQ(c.pos0, s->n_computed);
      s->n_computed += c.n_tokens;
      if (c.logits) ++s->n_tokens;
    }
  }

  BlockManager bm;
  Scheduler sched;
  std::vector<std::unique_ptr<SeqSchedState>> seqs;
};

TEST(Scheduler, AdmitsUpToMaxNumSeqs) {
  Fixture f(100, 4, {.max_num_seqs = 2, .max_step_tokens = 64, .watermark_blocks = 0});
  f.add(1, 3);
  f.add(2, 3);
  f.add(3, 3);
  StepPlan p = f.sched.schedule();
  EXPECT_EQ(p.admitted, (std::vector<int>{1, 2}));
  EXPECT_EQ(f.sched.num_running(), 2);
  EXPECT_EQ(f.sched.num_waiting(), 1);
  ASSERT_EQ(p.chunks.size(), 2u);
  EXPECT_TRUE(p.chunks[0].logits && p.chunks[1].logits);
  f.run(p);
  f.sched.remove(1);  // finished: the waiting one joins the next step
  p = f.sched.schedule();
  EXPECT_EQ(p.admitted, (std::vector<int>{3}));
  ASSERT_EQ(p.chunks.size(), 2u);
  EXPECT_EQ(p.chunks[0].seq_id, 2);  // the decode comes first
  EXPECT_EQ(p.chunks[0].n_tokens, 1);
  EXPECT_EQ(p.chunks[1].seq_id, 3);
  EXPECT_EQ(p.chunks[1].n_tokens, 3);
}

TEST(Scheduler, AdmissionNeedsBlocksForTheWholePromptAndIsFirstComeFirstServed) {
  Fixture f(4, 4, {.max_num_seqs = 8, .max_step_tokens = 64, .watermark_blocks = 0});
  f.add(1, 9);  // 3 blocks
  f.add(2, 8);  // 2 blocks: does not fit beside 1
  f.add(3, 1);  // would fit, but waits behind 2
  StepPlan p = f.sched.schedule();
  EXPECT_EQ(p.admitted, (std::vector<int>{1}));
  EXPECT_EQ(f.bm.num_used(), 3);
  f.run(p);
  f.sched.remove(1);
  EXPECT_EQ(f.bm.num_free(), 4);
  p = f.sched.schedule();
  EXPECT_EQ(p.admitted, (std::vector<int>{2, 3}));
}

TEST(Scheduler, WatermarkKeepsBlocksForRunningDecodes) {
  Fixture f(5, 4, {.max_num_seqs = 8, .max_step_tokens = 64, .watermark_blocks = 1});
  f.add(1, 4);
  f.run(f.sched.schedule());
  f.add(2, 12);  // 3 blocks: fit in the 3 left after 1's decode, but the watermark keeps one back
  StepPlan p = f.sched.schedule();
  EXPECT_TRUE(p.admitted.empty());
  ASSERT_EQ(p.chunks.size(), 1u);
  EXPECT_EQ(p.chunks[0].seq_id, 1);
}

TEST(Scheduler, ChunkedPrefillStaysUnderTheBudgetAndDecodesAreNotStalled) {
  Fixture f(100, 4, {.max_num_seqs = 8, .max_step_tokens = 16, .watermark_blocks = 0});
  f.add(1, 3);
  f.run(f.sched.schedule());  // 1 is decoding now
  f.add(2, 40);
  std::vector<int> prefill_sizes;
  int steps = 0;
  while (f.get(2)->n_computed < 40) {
    const StepPlan p = f.sched.schedule();
    ASSERT_LE(p.n_tokens, 16);
    ASSERT_GE(p.chunks.size(), 2u);
    EXPECT_EQ(p.chunks[0].seq_id, 1);  // the running decode is in every step
    EXPECT_EQ(p.chunks[0].n_tokens, 1);
    EXPECT_EQ(p.chunks[1].seq_id, 2);
    EXPECT_EQ(p.chunks[1].logits, p.chunks[1].pos0 + p.chunks[1].n_tokens == 40);
    prefill_sizes.push_back(p.chunks[1].n_tokens);
    f.run(p);
    ASSERT_LT(++steps, 10);
  }
  EXPECT_EQ(prefill_sizes, (std::vector<int>{15, 15, 10}));
  EXPECT_EQ(f.get(2)->n_tokens, 41);  // the last chunk produced a token
}

TEST(Scheduler, PreemptsTheNewestSequenceWhenBlocksRunOutAndRecomputesIt) {
  // 3 blocks of 4 rows. Two sequences of 4 tokens take one block each; their next rows need a second block.
  Fixture f(3, 4, {.max_num_seqs = 8, .max_step_tokens = 64, .watermark_blocks = 0});
  f.add(1, 4);
  f.add(2, 4);
  f.run(f.sched.schedule());  // both prefilled, n_tokens = 5 each
  StepPlan p = f.sched.schedule();
  // Sequence 1 takes the last free block; sequence 2 finds none and is preempted (it is the newest).
  ASSERT_EQ(p.chunks.size(), 1u);
  EXPECT_EQ(p.chunks[0].seq_id, 1);
  EXPECT_EQ(p.preempted, (std::vector<int>{2}));
  EXPECT_TRUE(p.admitted.empty());  // no admission in a step that preempted
  EXPECT_EQ(f.get(2)->n_computed, 0);
  EXPECT_EQ(f.sched.num_waiting(), 1);
  EXPECT_EQ(f.bm.blocks_of(2), 0);
  f.run(p);
  f.sched.remove(1);  // 1 finishes; 2 comes back and recomputes prompt + generated token
  p = f.sched.schedule();
  EXPECT_EQ(p.admitted, (std::vector<int>{2}));
  ASSERT_EQ(p.chunks.size(), 1u);
  EXPECT_EQ(p.chunks[0].pos0, 0);
  EXPECT_EQ(p.chunks[0].n_tokens, 5);
  EXPECT_TRUE(p.chunks[0].logits);
}

TEST(Scheduler, PreemptionFreesBlocksForAnOlderSequence) {
  Fixture f(2, 4, {.max_num_seqs = 8, .max_step_tokens = 64, .watermark_blocks = 0});
  f.add(1, 4);
  f.add(2, 4);
  f.run(f.sched.schedule());
  // Pool full: 1 needs a block, the newest (2) is preempted, which frees one for 1.
  StepPlan p = f.sched.schedule();
  EXPECT_EQ(p.preempted, (std::vector<int>{2}));
  ASSERT_EQ(p.chunks.size(), 1u);
  f.run(p);
  EXPECT_EQ(f.bm.num_free(), 0);
}

TEST(Scheduler, RemoveDropsWaitingAndRunningSequences) {
  Fixture f(10, 4, {.max_num_seqs = 1, .max_step_tokens = 64, .watermark_blocks = 0});
  f.add(1, 4);
  f.add(2, 4);
  f.run(f.sched.schedule());
  f.sched.remove(2);  // waiting
  EXPECT_EQ(f.sched.num_waiting(), 0);
  f.sched.remove(1);  // running
  EXPECT_TRUE(f.sched.idle());
  EXPECT_EQ(f.bm.num_free(), 10);
}

}  // namespace
}  // namespace tessera::serving
