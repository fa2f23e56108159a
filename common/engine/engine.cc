#include "common/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/logging.h"
#include "common/base/status_macros.h"

namespace dsv2 {
namespace {

constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopStringBytes = 256;

// Length of the longest suffix of `text` that is a proper prefix of one of
// `stops`: text that must be held back because a stop string may be starting.
size_t StopPrefixHoldback(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& stop : stops) {
    for (size_t len = std::min(stop.size() - 1, text.size()); len > hold; --len) {
      if (text.compare(text.size() - len, len, stop, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  return hold;
}

GenerationOutput ErrorOutput(absl::Status status) {
  GenerationOutput out;
  out.error = std::move(status);
  return out;
}

// A step that failed this way lost only its own work: the routed experts of
// a remote worker were unreachable or too slow. Its sequences end with the
// error; everything else carries on.
bool IsTransient(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status);
}

}  // namespace

Engine::Engine(const DeepseekV2Model* model, const TextDecoderFactory* text, EngineOptions options)
    : model_(model),
      text_(text),
      options_(std::move(options)),
      max_model_len_(options_.max_model_len > 0
                         ? std::min(options_.max_model_len, model->config().max_position_embeddings)
                         : model->config().max_position_embeddings),
      cache_(model->config(), options_.block_size,
             PagedKvCache::BlocksForBudget(model->config(), options_.block_size,
                                           options_.kv_cache_bytes),
             model->backend()),
      scheduler_(&cache_, SchedulerOptions{options_.max_num_seqs, options_.max_batch_tokens,
                                           options_.prefix_caching}),
      last_progress_(std::chrono::steady_clock::now()) {
  DSV2_LOG(INFO) << "engine: " << cache_.num_blocks() << " KV blocks of " << options_.block_size
                 << " tokens (" << kv_capacity_tokens() << " tokens, "
                 << options_.kv_cache_bytes / (1 << 20) << " MiB), max " << options_.max_num_seqs
                 << " running, " << options_.max_batch_tokens << " tokens per step, "
                 << options_.max_waiting << " waiting";
  if (text_ != nullptr) {
    for (int32_t id = 0; id < model->config().vocab_size; ++id) {
      if (!text_->Decodes(id)) unsampled_.push_back(id);
    }
  }
  if (!unsampled_.empty()) {
    DSV2_LOG(INFO) << "engine: " << unsampled_.size() << " of the model's "
                   << model->config().vocab_size
                   << " vocabulary rows have no token in the tokenizer (ids "
                   << unsampled_.front() << ".." << unsampled_.back()
                   << " among them); they are never sampled";
  }
  stats_.kv_blocks_total = cache_.num_blocks();
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() {
  {
    MutexLock lock(&mutex_);
    stop_ = true;
    abort_all_ = true;
  }
  thread_.join();
}

absl::StatusOr<std::shared_ptr<RequestStream>> Engine::Submit(GenerationRequest request) {
  absl::StatusOr<std::shared_ptr<RequestStream>> stream = SubmitUncounted(std::move(request));
  if (!stream.ok()) {
    MutexLock lock(&mutex_);
    switch (stream.status().code()) {
      case absl::StatusCode::kResourceExhausted: ++stats_.rejected_queue_full; break;
      case absl::StatusCode::kUnavailable: ++stats_.rejected_unavailable; break;
      default: ++stats_.rejected_invalid; break;
    }
  }
  return stream;
}

absl::StatusOr<std::shared_ptr<RequestStream>> Engine::SubmitUncounted(GenerationRequest request) {
  const ModelConfig& config = model_->config();
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  if (request.id.empty()) return absl::InvalidArgumentError("request_id must not be empty");
  if (prompt_len == 0) return absl::InvalidArgumentError("the prompt is empty");
  for (int64_t i = 0; i < prompt_len; ++i) {
    if (request.prompt[i] < 0 || request.prompt[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token id ", request.prompt[i],
                                                     " at index ", i, " is outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be >= 1, got ", request.max_tokens));
  }
  if (request.min_tokens < 0 || request.min_tokens > request.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("min_tokens must be in [0, max_tokens = ",
                                                   request.max_tokens, "], got ", request.min_tokens));
  }
  if (prompt_len + request.max_tokens > max_model_len_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", prompt_len, " tokens) + max_tokens (", request.max_tokens,
        ") exceeds the context limit of ", max_model_len_, " tokens"));
  }
  if (prompt_len + request.max_tokens > kv_capacity_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", prompt_len, " tokens) + max_tokens (", request.max_tokens,
        ") exceeds the KV cache capacity of ", kv_capacity_tokens(), " tokens"));
  }
  if (absl::Status status = request.sampling.Validate(); !status.ok()) return status;
  for (int32_t id : request.stop_token_ids) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop token id ", id, " is outside the vocabulary [0, ", config.vocab_size, ")"));
    }
  }
  for (const TokenBias& b : request.sampling.logit_bias) {
    if (b.token < 0 || b.token >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("logit_bias token id ", b.token,
                                                     " is outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  if (!request.stop.empty() && text_ == nullptr) {
    return absl::InvalidArgumentError("stop strings need a tokenizer, and this model has none");
  }
  if (request.stop.size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", kMaxStopStrings, " stop strings"));
  }
  for (const std::string& stop : request.stop) {
    if (stop.empty() || stop.size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop strings must be 1 to ", kMaxStopStringBytes, " bytes long"));
    }
  }
  if (request.logprobs < -1 || request.logprobs > options_.max_logprobs) {
    return absl::InvalidArgumentError(absl::StrCat("logprobs must be in [0, ", options_.max_logprobs,
                                                   "], got ", request.logprobs));
  }
  if (request.prompt_logprobs < -1 || request.prompt_logprobs > options_.max_logprobs) {
    return absl::InvalidArgumentError(absl::StrCat("prompt_logprobs must be in [0, ",
                                                   options_.max_logprobs, "], got ",
                                                   request.prompt_logprobs));
  }

  auto stream = std::make_shared<RequestStream>();
  auto sequence = std::make_unique<Sequence>(std::move(request), stream, &cache_);
  Sequence& s = *sequence;
  s.tokens = s.request.prompt;
  s.prompt_len = prompt_len;
  s.arrival_time = std::chrono::steady_clock::now();
  if (!s.request.has_seed) s.request.sampling.seed = std::random_device{}();
  s.sampler = std::make_unique<Sampler>(s.request.sampling);
  if (text_ != nullptr) s.decoder = text_->NewDecoder(s.request.skip_special_tokens);

  {
    MutexLock lock(&mutex_);
    if (failed_) {
      return absl::UnavailableError(
          absl::StrCat("the engine has failed and is not serving: ", failure_.message()));
    }
    if (!accepting_) return absl::UnavailableError("the server is shutting down");
    if (active_ids_.contains({s.request.owner, s.request.id})) {
      return absl::InvalidArgumentError(
          absl::StrCat("request_id '", s.request.id, "' is already in use by an active request"));
    }
    if (static_cast<int64_t>(inbox_.size()) + stats_.waiting >= options_.max_waiting) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the waiting queue is full (", options_.max_waiting, " requests); retry later"));
    }
    if (active_ids_.empty()) last_progress_ = std::chrono::steady_clock::now();
    active_ids_.insert({s.request.owner, s.request.id});
    inbox_.push_back(std::move(sequence));
  }
  return stream;
}

bool Engine::Abort(const std::string& owner, const std::string& id) {
  {
    MutexLock lock(&mutex_);
    if (!active_ids_.contains({owner, id})) return false;
    abort_ids_.insert({owner, id});
  }
  return true;
}

void Engine::StopAccepting() {
  MutexLock lock(&mutex_);
  accepting_ = false;
}

void Engine::AbortAll() {
  MutexLock lock(&mutex_);
  abort_all_ = true;
}

EngineStats Engine::stats() const {
  MutexLock lock(&mutex_);
  return stats_;
}

int64_t Engine::num_active() const {
  MutexLock lock(&mutex_);
  return static_cast<int64_t>(active_ids_.size());
}

absl::Status Engine::failure() const {
  MutexLock lock(&mutex_);
  return failure_;
}

absl::Status Engine::Health(std::chrono::milliseconds stall_timeout) const {
  MutexLock lock(&mutex_);
  if (failed_) {
    return absl::Status(failure_.code(), absl::StrCat("engine failed: ", failure_.message()));
  }
  const auto idle = std::chrono::steady_clock::now() - last_progress_;
  if (active_ids_.empty() || idle < stall_timeout) return absl::OkStatus();
  return absl::UnavailableError(absl::StrFormat(
      "engine stalled: %d request(s) pending and no step finished for %.2f s (the limit is "
      "%.2f s)",
      active_ids_.size(), std::chrono::duration<double>(idle).count(),
      std::chrono::duration<double>(stall_timeout).count()));
}

void Engine::Loop() {
  while (true) {
    {
      // Only this thread changes the scheduler, so its part is fixed while
      // it waits.
      const bool scheduled = scheduler_.num_running() > 0 || scheduler_.num_waiting() > 0;
      MutexLock lock(&mutex_);
      const auto has_work = [this, scheduled]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stop_ || !inbox_.empty() || !abort_ids_.empty() || abort_all_ ||
               (!failed_ && scheduled);
      };
      mutex_.Await(absl::Condition(&has_work));
      for (auto& sequence : inbox_) scheduler_.AddWaiting(std::move(sequence));
      inbox_.clear();
      // Submit bounds inbox + waiting: keep the count exact as they move.
      stats_.waiting = scheduler_.num_waiting();
    }
    ReapCancelled();
    {
      MutexLock lock(&mutex_);
      if (stop_) break;
    }
    Step();
  }
}

void Engine::ReapCancelled() {
  std::set<RequestKey> aborts;
  bool abort_all;
  bool failed;
  absl::Status failure;
  {
    MutexLock lock(&mutex_);
    aborts.swap(abort_ids_);
    abort_all = abort_all_;
    abort_all_ = false;
    failed = failed_;
    failure = failure_;
  }
  const auto now = std::chrono::steady_clock::now();
  for (Sequence* sequence : scheduler_.AllSequences()) {
    if (failed) {
      Finish(sequence, FinishReason::kError,
             ErrorOutput(absl::Status(failure.code(),
                                      absl::StrCat("the engine has failed: ", failure.message()))));
    } else if (abort_all || aborts.contains({sequence->request.owner, sequence->request.id})) {
      Finish(sequence, FinishReason::kAbort);
    } else if (sequence->request.deadline && now >= *sequence->request.deadline) {
      Finish(sequence, FinishReason::kTimeLimit);
    }
  }
}

void Engine::Step() {
  const std::vector<ScheduledChunk> plan = scheduler_.Schedule();
  {
    MutexLock lock(&mutex_);
    stats_.waiting = scheduler_.num_waiting();  // Admitted ones no longer wait.
  }
  int64_t computed_prompt_tokens = 0;
  if (!plan.empty()) {
    std::vector<SequenceChunk> chunks;
    chunks.reserve(plan.size());
    const auto scheduled_at = std::chrono::steady_clock::now();
    int64_t step_tokens = 0;
    for (const ScheduledChunk& work : plan) {
      Sequence& s = *work.sequence;
      if (!s.first_scheduled_time) s.first_scheduled_time = scheduled_at;
      step_tokens += work.num_tokens;
      const int64_t start = s.kv.size();
      // Prompt tokens always take the decompressed form and generated tokens
      // the absorbed one, so a request's numbers do not depend on how its
      // prompt was chunked or what else shared the step.
      const bool decode = start >= s.prompt_len;
      chunks.push_back({std::span<const int32_t>(s.tokens).subspan(start, work.num_tokens), &s.kv,
                        decode ? AttentionForm::kAbsorbed : AttentionForm::kDecompressed,
                        s.wants_prompt_logits() ? ChunkLogits::kAll
                        : work.completes        ? ChunkLogits::kLast
                                                : ChunkLogits::kNone});
      computed_prompt_tokens += std::max<int64_t>(0, std::min(s.prompt_len, start + work.num_tokens) - start);
    }
    std::vector<float> logits;
    const absl::Status status = Forward(chunks, &logits);
    if (!status.ok() && IsTransient(status)) {
      DSV2_LOG(WARNING) << "engine step failed; ending its " << plan.size()
                        << " request(s): " << status;
      // The caches' sizes only grow when a forward succeeds, so nothing
      // else needs undoing.
      for (const ScheduledChunk& work : plan) {
        Finish(work.sequence, FinishReason::kError, ErrorOutput(status));
      }
      MutexLock lock(&mutex_);
      UpdateStatsLocked();
      last_progress_ = std::chrono::steady_clock::now();
      return;
    }
    if (!status.ok()) {
      DSV2_LOG(ERROR) << "engine step failed: " << status;
      {
        MutexLock lock(&mutex_);
        failed_ = true;
        failure_ = status;
      }
      // Reported before the requests end, so whoever sees their errors
      // also sees the engine failed.
      if (options_.on_fatal) options_.on_fatal(status);
      for (Sequence* sequence : scheduler_.AllSequences()) {
        Finish(sequence, FinishReason::kError, ErrorOutput(status));
      }
      return;
    }
    if (options_.observer != nullptr) options_.observer->OnStep(step_tokens);
    const int64_t vocab = model_->config().vocab_size;
    int64_t row = 0;
    for (size_t c = 0; c < plan.size(); ++c) {
      const ScheduledChunk& work = plan[c];
      Sequence* sequence = work.sequence;
      if (options_.prefix_caching) sequence->kv.RegisterFullBlocks(sequence->tokens);
      if (chunks[c].logits == ChunkLogits::kAll) {
        const int64_t start = sequence->kv.size() - work.num_tokens;
        PushPromptLogprobs(sequence, start, work.num_tokens, &logits[row * vocab]);
        row += work.num_tokens - 1;  // The last row is the next token's.
      }
      if (work.completes) Advance(sequence, &logits[row * vocab]);
      if (chunks[c].logits != ChunkLogits::kNone) ++row;
    }
  }
  MutexLock lock(&mutex_);
  stats_.prompt_tokens += computed_prompt_tokens;
  stats_.steps += plan.empty() ? 0 : 1;
  UpdateStatsLocked();
  last_progress_ = std::chrono::steady_clock::now();
}

absl::Status Engine::Forward(std::span<const SequenceChunk> chunks, std::vector<float>* logits) {
  const int64_t m = std::min<int64_t>(options_.micro_batches, static_cast<int64_t>(chunks.size()));
  if (m <= 1) return model_->ForwardBatch(chunks, logits);
  // Micro-batches of about equal token counts, each a contiguous run of
  // chunks, run concurrently: while one waits for its routed experts on
  // the data plane, another computes (kernels take turns on the pool).
  // Every sequence's numbers are independent of its batch, so the split
  // changes no output.
  int64_t total = 0;
  for (const SequenceChunk& chunk : chunks) total += static_cast<int64_t>(chunk.tokens.size());
  std::vector<size_t> begin{0};
  int64_t seen = 0;
  for (size_t c = 0; c < chunks.size() && static_cast<int64_t>(begin.size()) < m; ++c) {
    seen += static_cast<int64_t>(chunks[c].tokens.size());
    if (seen * m >= total * static_cast<int64_t>(begin.size()) && c + 1 < chunks.size()) {
      begin.push_back(c + 1);
    }
  }
  begin.push_back(chunks.size());
  const size_t parts = begin.size() - 1;
  std::vector<std::vector<float>> part_logits(parts);
  std::vector<absl::Status> part_status(parts);
  auto run = [&](size_t p) {
    part_status[p] = model_->ForwardBatch(chunks.subspan(begin[p], begin[p + 1] - begin[p]),
                                          &part_logits[p]);
  };
  std::vector<std::thread> helpers;
  for (size_t p = 1; p < parts; ++p) helpers.emplace_back(run, p);
  run(0);
  for (std::thread& helper : helpers) helper.join();
  logits->clear();
  for (size_t p = 0; p < parts; ++p) {
    RETURN_IF_ERROR(part_status[p]);
    logits->insert(logits->end(), part_logits[p].begin(), part_logits[p].end());
  }
  return absl::OkStatus();
}

void Engine::UpdateStatsLocked() {
  const PagedKvCache::Stats kv = cache_.stats();
  stats_.running = scheduler_.num_running();
  stats_.waiting = scheduler_.num_waiting();
  stats_.kv_blocks_used = kv.used_blocks;
  stats_.kv_blocks_cached = kv.cached_blocks;
  stats_.kv_usage = static_cast<double>(kv.used_blocks) / std::max<int64_t>(1, kv.num_blocks);
  stats_.prefix_queries = kv.prefix_queries;
  stats_.prefix_hits = kv.prefix_hits;
  stats_.preemptions = scheduler_.num_preemptions();
}

void Engine::PushPromptLogprobs(Sequence* s, int64_t start, int64_t n, const float* logits) {
  const int64_t vocab = model_->config().vocab_size;
  GenerationOutput out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = start + i;  // Its logits give token p + 1's.
    if (p != s->prompt_logprobs_done || p + 1 >= s->prompt_len) continue;
    const float* row = logits + i * vocab;
    const int32_t token = s->tokens[p + 1];
    out.prompt_logprobs.push_back(
        {token, Logprob(row, vocab, token), TopLogprobs(row, vocab, s->request.prompt_logprobs)});
    ++s->prompt_logprobs_done;
  }
  if (out.prompt_logprobs.empty()) return;
  out.usage = {s->prompt_len, s->num_generated(), s->cached_tokens};
  s->stream->Push(std::move(out));
}

void Engine::Advance(Sequence* s, const float* raw_logits) {
  const GenerationRequest& request = s->request;
  const int64_t vocab = model_->config().vocab_size;
  const int32_t eos = static_cast<int32_t>(model_->config().eos_token_id);
  std::vector<float> logits(raw_logits, raw_logits + vocab);
  AdjustLogits(request.sampling, std::span<const int32_t>(s->tokens).first(s->prompt_len),
               std::span<const int32_t>(s->tokens).subspan(s->prompt_len), logits.data(), vocab);
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  for (int32_t id : unsampled_) logits[id] = kMasked;
  if (s->num_generated() < request.min_tokens) {
    if (!request.ignore_eos && eos >= 0) logits[eos] = kMasked;
    for (int32_t id : request.stop_token_ids) logits[id] = kMasked;
  }
  const int32_t token = s->sampler->Sample(logits.data(), vocab);
  s->tokens.push_back(token);
  const auto now = std::chrono::steady_clock::now();
  if (!s->first_token_time) {
    s->first_token_time = now;
    if (options_.observer != nullptr) {
      options_.observer->OnFirstToken(std::chrono::duration<double>(now - s->arrival_time).count());
    }
  } else if (options_.observer != nullptr) {
    options_.observer->OnNextToken(std::chrono::duration<double>(now - s->last_token_time).count());
  }
  s->last_token_time = now;

  GenerationOutput out;
  out.token_ids.push_back(token);
  if (request.logprobs >= 0) {
    out.logprobs.push_back({token, Logprob(raw_logits, vocab, token),
                            TopLogprobs(raw_logits, vocab, request.logprobs)});
  }
  const size_t old_size = s->text.size();
  if (s->decoder) s->text += s->decoder->Append(token);

  std::optional<FinishReason> finish;
  const bool stop_token = (!request.ignore_eos && token == eos) ||
                          std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(),
                                    token) != request.stop_token_ids.end();
  if (stop_token) finish = FinishReason::kStop;
  if (!finish && !request.stop.empty() && s->num_generated() >= request.min_tokens) {
    size_t longest = 0;
    for (const std::string& stop : request.stop) longest = std::max(longest, stop.size());
    const size_t from = old_size >= longest ? old_size - longest + 1 : 0;
    // The earliest match (of one position, the first stop string listed).
    size_t earliest = std::string::npos, matched = 0;
    for (const std::string& stop : request.stop) {
      const size_t at = s->text.find(stop, from);
      if (at < earliest) {
        earliest = at;
        matched = stop.size();
      }
    }
    if (earliest != std::string::npos) {
      finish = FinishReason::kStop;
      // What follows the stop string (and the string itself, unless asked
      // for) is never sent.
      s->text.resize(earliest + (request.include_stop_str ? matched : 0));
      s->stopped_by_string = true;
    }
  }
  if (!finish && (s->num_generated() >= request.max_tokens ||
                  static_cast<int64_t>(s->tokens.size()) >= max_model_len_)) {
    finish = FinishReason::kLength;
  }
  {
    MutexLock lock(&mutex_);
    ++stats_.generation_tokens;
  }
  if (finish) return Finish(s, *finish, std::move(out));
  // Stream the text, less a tail that may be the start of a stop string.
  const size_t end = s->text.size() - StopPrefixHoldback(s->text, request.stop);
  if (end > s->text_sent) {
    out.text = s->text.substr(s->text_sent, end - s->text_sent);
    s->text_sent = end;
  }
  out.usage = {s->prompt_len, s->num_generated(), s->cached_tokens};
  s->stream->Push(std::move(out));
}

namespace {

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// What an EngineObserver is told of a sequence that ends now.
FinishedRequest Finished(const Sequence& s, FinishReason reason) {
  const auto now = std::chrono::steady_clock::now();
  FinishedRequest r;
  r.reason = reason;
  r.prompt_tokens = s.prompt_len;
  r.generation_tokens = s.num_generated();
  r.e2e_s = Seconds(now - s.arrival_time);
  r.scheduled = s.first_scheduled_time.has_value();
  r.queue_s = Seconds((r.scheduled ? *s.first_scheduled_time : now) - s.arrival_time);
  if (r.scheduled && s.first_token_time) {
    r.prefill_s = Seconds(*s.first_token_time - *s.first_scheduled_time);
    r.decode_s = Seconds(s.last_token_time - *s.first_token_time);
  }
  return r;
}

}  // namespace

void Engine::Finish(Sequence* s, FinishReason reason, GenerationOutput out) {
  out.finish = reason;
  out.usage = {s->prompt_len, s->num_generated(), s->cached_tokens};
  // Text held back for a possible stop string goes out now, with the end of
  // an incomplete character, unless a stop string cut the text.
  if (s->decoder && !s->stopped_by_string) s->text += s->decoder->Finish();
  if (s->text.size() > s->text_sent) out.text += s->text.substr(s->text_sent);
  if (options_.observer != nullptr) options_.observer->OnFinished(Finished(*s, reason));
  std::unique_ptr<Sequence> removed = scheduler_.Remove(s);
  {
    // The id is free before the client sees the end, so it can be reused at once.
    MutexLock lock(&mutex_);
    active_ids_.erase({removed->request.owner, removed->request.id});
    ++stats_.finished[static_cast<int>(reason)];
    UpdateStatsLocked();
  }
  removed->stream->Push(std::move(out));
}

}  // namespace dsv2
