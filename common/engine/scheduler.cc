#include "common/engine/scheduler.h"

#include <algorithm>

#include "common/base/logging.h"

namespace dsv2 {

void Scheduler::AddWaiting(std::unique_ptr<Sequence> sequence) {
  waiting_.push_back(std::move(sequence));
}

std::vector<Sequence*> Scheduler::AllSequences() const {
  std::vector<Sequence*> all;
  for (const auto& s : running_) all.push_back(s.get());
  for (const auto& s : waiting_) all.push_back(s.get());
  return all;
}

void Scheduler::Preempt(Sequence* sequence) {
  auto it = std::find_if(running_.begin(), running_.end(),
                         [&](const auto& s) { return s.get() == sequence; });
  DSV2_CHECK(it != running_.end());
  sequence->kv.ReleaseAll();
  waiting_.push_front(std::move(*it));
  running_.erase(it);
  ++preemptions_;
  DSV2_LOG(DEBUG) << "preempted request " << sequence->request.id << " (recompute)";
}

std::unique_ptr<Sequence> Scheduler::Remove(Sequence* sequence) {
  std::unique_ptr<Sequence> removed;
  if (auto it = std::find_if(running_.begin(), running_.end(),
                             [&](const auto& s) { return s.get() == sequence; });
      it != running_.end()) {
    removed = std::move(*it);
    running_.erase(it);
  } else if (auto wit = std::find_if(waiting_.begin(), waiting_.end(),
                                     [&](const auto& s) { return s.get() == sequence; });
             wit != waiting_.end()) {
    removed = std::move(*wit);
    waiting_.erase(wit);
  }
  DSV2_CHECK(removed != nullptr) << "unknown sequence";
  removed->kv.ReleaseAll();
  return removed;
}

std::vector<ScheduledChunk> Scheduler::Schedule() {
  std::vector<ScheduledChunk> plan;
  int64_t budget = options_.max_batch_tokens;
  int64_t logits_budget = options_.max_prompt_logits_tokens;
  // A sequence's tokens this step; takes them from the budgets.
  const auto take = [&](const Sequence& s) {
    int64_t n = std::min(s.num_pending(), budget);
    if (s.wants_prompt_logits()) {
      n = std::min(n, logits_budget);
      logits_budget -= n;
    }
    budget -= n;
    return n;
  };
  bool preempted = false;
  // Running sequences first, oldest first.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* sequence = running_[i].get();
    const int64_t n = take(*sequence);
    if (n == 0) {  // Its prompt logits wait for the next step.
      ++i;
      continue;
    }
    bool scheduled = true;
    while (!sequence->kv.Reserve(sequence->kv.size() + n)) {
      Sequence* victim = running_.back().get();
      Preempt(victim);
      preempted = true;
      if (victim == sequence) {
        scheduled = false;
        break;
      }
    }
    if (!scheduled) break;  // It was the newest; nothing after it runs.
    plan.push_back({sequence, n, n == sequence->num_pending()});
    ++i;
  }
  // Then waiting sequences join in order while there is room.
  while (!preempted && !waiting_.empty() && budget > 0 &&
         num_running() < options_.max_num_seqs) {
    Sequence* sequence = waiting_.front().get();
    // Prompt logprobs need every prompt position computed.
    if (options_.prefix_caching && sequence->kv.size() == 0 &&
        sequence->request.prompt_logprobs < 0) {
      const int64_t adopted = sequence->kv.AdoptCachedPrefix(sequence->tokens);
      if (!sequence->admitted_before) sequence->cached_tokens = std::min(adopted, sequence->prompt_len);
    }
    const int64_t n = take(*sequence);
    if (n == 0) break;  // First come, first served: nobody overtakes it.
    if (!sequence->kv.Reserve(sequence->kv.size() + n)) {
      sequence->kv.ReleaseAll();
      break;  // First come, first served: nobody overtakes it.
    }
    sequence->admitted_before = true;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    plan.push_back({sequence, n, n == sequence->num_pending()});
  }
  return plan;
}

}  // namespace dsv2
