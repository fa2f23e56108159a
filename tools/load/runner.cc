#include "tools/load/runner.h"

#include <thread>

#include "absl/strings/str_cat.h"

namespace dsv2::load {

// One streaming Generate call; deletes itself when gRPC is done with it.
class Runner::Call final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  Call(Runner* runner, RequestRecord record, v1::GenerateRequest request)
      : runner_(runner), record_(std::move(record)), request_(std::move(request)) {
    context_.set_deadline(
        std::chrono::system_clock::now() +
        std::chrono::milliseconds(static_cast<int64_t>(runner->options_.timeout_s * 1000)));
    if (!runner->options_.token.empty()) {
      context_.AddMetadata("authorization", "Bearer " + runner->options_.token);
    }
  }

  void Start() {
    record_.start = runner_->Now();
    runner_->stub_->async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows.
    const double now = runner_->Now();
    const google::protobuf::RepeatedField<int32_t>* ids = nullptr;
    if (response_.has_chunk()) {
      ids = &response_.chunk().token_ids();
    } else if (response_.has_complete()) {
      ids = &response_.complete().token_ids();
      record_.prompt_tokens = response_.complete().usage().prompt_tokens();
    } else if (response_.has_error()) {
      record_.code = response_.error().code();
      record_.error = response_.error().message();
    }
    if (ids != nullptr && !ids->empty()) {
      if (record_.first_token < 0) record_.first_token = now;
      for (int i = 0; i < ids->size(); ++i) record_.token_times.push_back(now);
      record_.output_tokens += ids->size();
      runner_->tokens_.fetch_add(ids->size(), std::memory_order_relaxed);
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    record_.end = runner_->Now();
    if (!status.ok()) {
      record_.code = status.error_code();
      record_.error = status.error_message();
    }
    runner_->Finished(std::move(record_));
    delete this;
  }

 private:
  Runner* const runner_;
  RequestRecord record_;
  v1::GenerateRequest request_;
  v1::GenerateResponse response_;
  grpc::ClientContext context_;
};

Runner::Runner(RunnerOptions options)
    : options_(std::move(options)),
      stub_(v1::Generation::NewStub(options_.channel)),
      epoch_(std::chrono::steady_clock::now()) {}

double Runner::Now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_).count();
}

void Runner::Launch(int stage_index, double scheduled) {
  int64_t index;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    index = next_index_++;
    ++in_flight_;
  }
  const Prompt& prompt = options_.prompts[index % options_.prompts.size()];
  v1::GenerateRequest request = options_.request;
  request.set_request_id(absl::StrCat(options_.id_prefix, "-", index));
  if (prompt.token_ids.empty()) {
    request.set_text(prompt.text);
  } else {
    request.mutable_token_ids()->mutable_ids()->Add(prompt.token_ids.begin(),
                                                    prompt.token_ids.end());
  }
  if (prompt.max_tokens > 0) {
    request.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(prompt.max_tokens));
  }
  sent_.fetch_add(1, std::memory_order_relaxed);
  (new Call(this, {.index = index, .stage = stage_index, .scheduled = scheduled},
            std::move(request)))
      ->Start();
}

void Runner::Finished(RequestRecord record) {
  done_.fetch_add(1, std::memory_order_relaxed);
  if (record.code != 0) failed_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mutex_);
  --in_flight_;
  if (record.stage >= 0) records_.push_back(std::move(record));
  changed_.notify_all();
}

void Runner::WaitBelow(int64_t limit) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return in_flight_ < limit; });
}

void Runner::RunStage(const Stage& stage, int stage_index, std::mt19937_64& rng) {
  const double start = Now();
  const double end = stage.duration_s > 0 ? start + stage.duration_s : 1e300;
  const int64_t limit = stage.requests > 0 ? stage.requests : INT64_MAX;
  if (stage.open_loop()) {
    for (double t : ArrivalTimes(stage, rng)) {
      const double due = start + t;
      const double wait = due - Now();
      if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
      if (stage.concurrency > 0) WaitBelow(stage.concurrency);
      Launch(stage_index, due);
    }
  } else {
    for (int64_t n = 0; n < limit && Now() < end; ++n) {
      WaitBelow(std::max<int64_t>(1, stage.concurrency));
      if (Now() >= end) break;
      Launch(stage_index, Now());
    }
  }
  WaitBelow(1);
}

std::vector<RequestRecord> Runner::TakeRecords() {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::move(records_);
}

Runner::Progress Runner::progress() const {
  Progress p;
  p.sent = sent_.load(std::memory_order_relaxed);
  p.done = done_.load(std::memory_order_relaxed);
  p.failed = failed_.load(std::memory_order_relaxed);
  p.tokens = tokens_.load(std::memory_order_relaxed);
  p.in_flight = p.sent - p.done;
  return p;
}

}  // namespace dsv2::load
