#include "common/transport/nccl_transport.h"

#include "common/transport/core_transport_impl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <future>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/logging.h"
#include "common/base/mutex.h"
#include "common/transport/transport_internal.h"

namespace dsv2::transport {
namespace internal {
namespace {

constexpr char kScheme[] = "nccl://";
constexpr size_t kDeviceAlignment = 256;

std::string NcclError(const char* what, ncclResult_t r) {
  return absl::StrCat(what, ": ", ncclGetErrorString(r));
}
std::string CudaError(const char* what, cudaError_t e) {
  return absl::StrCat(what, ": ", cudaGetErrorString(e));
}
size_t AlignUp(size_t n) {
  return (n + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
}

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

// Device memory that grows on demand (freed and reallocated, never shrunk).
struct DeviceBuffer {
  uint8_t* data = nullptr;
  size_t size = 0;
  absl::Status Reserve(size_t bytes) {
    if (bytes <= size) return absl::OkStatus();
    if (data != nullptr) cudaFree(data);
    data = nullptr;
    size = 0;
    if (cudaError_t e = cudaMalloc(&data, bytes); e != cudaSuccess) {
      return absl::ResourceExhaustedError(CudaError("cudaMalloc", e));
    }
    size = bytes;
    return absl::OkStatus();
  }
  void Free() {
    if (data != nullptr) cudaFree(data);
    data = nullptr;
    size = 0;
  }
};

struct Outgoing {
  FrameHeader header;
  MessageBuffer payload;
};

}  // namespace

class NcclCore : public std::enable_shared_from_this<NcclCore> {
 public:
  explicit NcclCore(NcclTransportOptions options)
      : options_(std::move(options)),
        calls_(options_.max_calls_in_flight),
        dispatcher_(&counters_, options_.handler_threads, options_.max_queued_requests),
        outbox_(options_.nranks) {}

  absl::Status Start();
  void Shutdown();

  const NcclTransportOptions& options() const { return options_; }
  PeerId id() const { return options_.id; }
  const std::string& address() const { return address_; }
  Counters& counters() { return counters_; }
  RequestDispatcher& dispatcher() { return dispatcher_; }
  MessageBuffer Allocate(size_t bytes) { return pool_->Allocate(bytes); }

  void Call(std::string_view peer_address, Message request, absl::Time deadline, CallCallback done);
  // Queues `reply` for rank `peer` (any thread).
  void SendReply(int peer, Message reply);

 private:
  bool Post(absl::AnyInvocable<void()> command) ABSL_LOCKS_EXCLUDED(mutex_);
  void Run(std::promise<absl::Status>* started) ABSL_LOCKS_EXCLUDED(mutex_);
  absl::Status Init();
  void Teardown();
  void RunCommands() ABSL_LOCKS_EXCLUDED(mutex_);
  void ExpireDeadlines();
  // Waits for the last group to be enqueued and the stream to drain.
  absl::Status Wait();
  // One header + payload round; true if anything moved.
  absl::StatusOr<bool> Round();
  void Fail(const absl::Status& status);
  absl::StatusOr<int> ParseRank(std::string_view address) const;

  const NcclTransportOptions options_;
  Counters counters_;
  CallTable calls_;
  RequestDispatcher dispatcher_;
  std::shared_ptr<BufferPool> pool_;
  std::string address_;
  std::string tag_;

  Mutex mutex_;  // A failed progress thread waits on it for commands.
  std::deque<absl::AnyInvocable<void()>> commands_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  Mutex shutdown_mutex_;  // Serializes Shutdown.
  std::thread thread_;

  // Progress-thread state: owned by the progress thread, which alone reads
  // and writes it, from Init to the end of Teardown; other threads reach it
  // only by Post-ing a command. No lock protects it, so it carries no lock
  // annotation.
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer send_headers_, recv_headers_, out_, in_;
  uint8_t* host_send_headers_ = nullptr;  // Pinned.
  uint8_t* host_recv_headers_ = nullptr;
  std::vector<std::deque<Outgoing>> outbox_;  // Per peer rank.
  bool failed_ = false;
  absl::Status failure_;
};

class NcclSink : public ResponseSink {
 public:
  NcclSink(std::weak_ptr<NcclCore> core, int peer, std::shared_ptr<BufferPool> pool)
      : core_(std::move(core)), peer_(peer), pool_(std::move(pool)) {}
  void Send(Message response) override {
    if (std::shared_ptr<NcclCore> core = core_.lock()) core->SendReply(peer_, std::move(response));
  }
  MessageBuffer AllocatePayload(size_t bytes) override { return pool_->Allocate(bytes); }

 private:
  std::weak_ptr<NcclCore> core_;
  const int peer_;
  std::shared_ptr<BufferPool> pool_;
};

// ---------------------------------------------------------------------------
// Lifecycle

absl::Status NcclCore::Start() {
  if (options_.nranks < 1 || options_.rank < 0 || options_.rank >= options_.nranks) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL rank ", options_.rank, " of ", options_.nranks, " is not valid"));
  }
  if (options_.max_messages_per_round < 1) {
    return absl::InvalidArgumentError("max_messages_per_round must be at least 1");
  }
  absl::StatusOr<std::shared_ptr<BufferPool>> pool = BufferPool::Create(32 << 20);
  if (!pool.ok()) return pool.status();
  pool_ = *std::move(pool);
  std::promise<absl::Status> started;
  std::future<absl::Status> result = started.get_future();
  thread_ = std::thread([this, &started] { Run(&started); });
  absl::Status status = result.get();
  if (!status.ok()) {
    thread_.join();
    dispatcher_.Stop();
  }
  return status;
}

absl::Status NcclCore::Init() {
  if (cudaError_t e = cudaSetDevice(options_.device); e != cudaSuccess) {
    return absl::FailedPreconditionError(CudaError("cudaSetDevice", e));
  }
  absl::StatusOr<std::vector<uint8_t>> id_bytes = HexDecode(options_.unique_id);
  if (!id_bytes.ok()) return id_bytes.status();
  ncclUniqueId id;
  if (id_bytes->size() != sizeof(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL unique id is ", id_bytes->size(), " bytes, expected ", sizeof(id)));
  }
  std::memcpy(&id, id_bytes->data(), sizeof(id));
  tag_ = options_.unique_id.substr(0, 16);
  address_ = absl::StrCat(kScheme, tag_, "/", options_.rank);

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // So a missing rank is a timeout, not a hang.
  ncclResult_t r = ncclCommInitRankConfig(&comm_, options_.nranks, id, options_.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    comm_ = nullptr;
    return absl::UnavailableError(NcclError("ncclCommInitRankConfig", r));
  }
  if (absl::Status s = Wait(); !s.ok()) return s;
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
      e != cudaSuccess) {
    return absl::InternalError(CudaError("cudaStreamCreate", e));
  }
  const size_t block = size_t{kFrameHeaderSize} * options_.max_messages_per_round * options_.nranks;
  if (absl::Status s = send_headers_.Reserve(block); !s.ok()) return s;
  if (absl::Status s = recv_headers_.Reserve(block); !s.ok()) return s;
  if (cudaError_t e = cudaMallocHost(&host_send_headers_, block); e != cudaSuccess) {
    return absl::ResourceExhaustedError(CudaError("cudaMallocHost", e));
  }
  if (cudaError_t e = cudaMallocHost(&host_recv_headers_, block); e != cudaSuccess) {
    return absl::ResourceExhaustedError(CudaError("cudaMallocHost", e));
  }
  return absl::OkStatus();
}

void NcclCore::Teardown() {
  FailCalls(counters_, calls_.TakeAll(), absl::CancelledError("transport shut down"));
  // A communicator is one fixed group: leaving it ends it for every rank
  // (their next round fails and they fail their calls UNAVAILABLE).
  if (comm_ != nullptr) ncclCommAbort(comm_);
  comm_ = nullptr;
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  stream_ = nullptr;
  send_headers_.Free();
  recv_headers_.Free();
  out_.Free();
  in_.Free();
  if (host_send_headers_ != nullptr) cudaFreeHost(host_send_headers_);
  if (host_recv_headers_ != nullptr) cudaFreeHost(host_recv_headers_);
  host_send_headers_ = host_recv_headers_ = nullptr;
  outbox_.clear();
}

void NcclCore::Shutdown() {
  MutexLock shutdown_lock(&shutdown_mutex_);
  dispatcher_.Stop();
  {
    MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

bool NcclCore::Post(absl::AnyInvocable<void()> command) {
  {
    MutexLock lock(&mutex_);
    if (stopping_) return false;
    commands_.push_back(std::move(command));
  }
  return true;
}

void NcclCore::RunCommands() {
  std::deque<absl::AnyInvocable<void()>> commands;
  {
    MutexLock lock(&mutex_);
    commands.swap(commands_);
  }
  for (auto& command : commands) command();
}

void NcclCore::ExpireDeadlines() {
  FailCalls(counters_, calls_.TakeExpired(absl::Now()),
            absl::DeadlineExceededError("data-plane call deadline exceeded"));
}

void NcclCore::Run(std::promise<absl::Status>* started) {
  absl::Status init = Init();
  started->set_value(init);
  if (!init.ok()) {
    Teardown();
    return;
  }
  for (;;) {
    {
      MutexLock lock(&mutex_);
      if (stopping_) break;
      if (failed_) {
        // Nothing moves any more; wake for commands (which fail at once) and deadlines.
        const auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
          return stopping_ || !commands_.empty();
        };
        mutex_.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(100));
      }
    }
    RunCommands();
    ExpireDeadlines();
    if (failed_) continue;
    absl::StatusOr<bool> moved = Round();
    if (!moved.ok()) {
      Fail(moved.status());
    } else if (!*moved) {
      // Every rank idles at about the same pace; this paces the lockstep
      // rounds, it synchronizes nothing.
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(options_.idle_backoff));
    }
  }
  Teardown();
}

void NcclCore::Fail(const absl::Status& status) {
  DSV2_LOG(ERROR) << "NCCL data plane (rank " << options_.rank << ") failed: " << status;
  failed_ = true;
  failure_ = absl::UnavailableError(absl::StrCat("NCCL communicator failed: ", status.message()));
  if (comm_ != nullptr) ncclCommAbort(comm_);
  comm_ = nullptr;
  for (auto& queue : outbox_) queue.clear();
  FailCalls(counters_, calls_.TakeAll(), failure_);
}

absl::Status NcclCore::Wait() {
  const absl::Time give_up = absl::Now() + options_.round_timeout;
  // The communicator first (nonblocking: enqueueing may still be in progress).
  for (;;) {
    ncclResult_t async = ncclSuccess;
    if (ncclResult_t r = ncclCommGetAsyncError(comm_, &async); r != ncclSuccess) {
      return absl::UnavailableError(NcclError("ncclCommGetAsyncError", r));
    }
    if (async == ncclSuccess) break;
    if (async != ncclInProgress) return absl::UnavailableError(NcclError("NCCL", async));
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError("a rank did not join the NCCL round in time");
    }
    ExpireDeadlines();
    std::this_thread::yield();
  }
  if (stream_ == nullptr) return absl::OkStatus();
  for (;;) {
    const cudaError_t e = cudaStreamQuery(stream_);
    if (e == cudaSuccess) return absl::OkStatus();
    if (e != cudaErrorNotReady) return absl::InternalError(CudaError("cudaStreamQuery", e));
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      return absl::UnavailableError(NcclError("NCCL", async));
    }
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError(
          "an NCCL round did not finish in time (a rank died or hung)");
    }
    ExpireDeadlines();
    std::this_thread::yield();
  }
}

absl::StatusOr<bool> NcclCore::Round() {
  const int n = options_.nranks;
  const size_t slots = options_.max_messages_per_round;
  const size_t block = slots * kFrameHeaderSize;

  // 1. Headers.
  std::vector<std::vector<Outgoing>> sending(n);
  std::memset(host_send_headers_, 0, block * n);
  bool moved = false;
  for (int p = 0; p < n; ++p) {
    while (sending[p].size() < slots && !outbox_[p].empty()) {
      const EncodedHeader header = EncodeHeader(outbox_[p].front().header);
      std::memcpy(host_send_headers_ + p * block + sending[p].size() * kFrameHeaderSize,
                  header.data(), header.size());
      sending[p].push_back(std::move(outbox_[p].front()));
      outbox_[p].pop_front();
      moved = true;
    }
  }
  if (cudaError_t e = cudaMemcpyAsync(send_headers_.data, host_send_headers_, block * n,
                                      cudaMemcpyHostToDevice, stream_);
      e != cudaSuccess) {
    return absl::InternalError(CudaError("cudaMemcpyAsync", e));
  }
  ncclGroupStart();
  for (int p = 0; p < n; ++p) {
    ncclSend(send_headers_.data + p * block, block, ncclUint8, p, comm_, stream_);
    ncclRecv(recv_headers_.data + p * block, block, ncclUint8, p, comm_, stream_);
  }
  if (ncclResult_t r = ncclGroupEnd(); r != ncclSuccess && r != ncclInProgress) {
    return absl::UnavailableError(NcclError("ncclGroupEnd (headers)", r));
  }
  if (absl::Status s = Wait(); !s.ok()) return s;
  if (cudaError_t e = cudaMemcpyAsync(host_recv_headers_, recv_headers_.data, block * n,
                                      cudaMemcpyDeviceToHost, stream_);
      e != cudaSuccess) {
    return absl::InternalError(CudaError("cudaMemcpyAsync", e));
  }
  if (absl::Status s = Wait(); !s.ok()) return s;

  std::vector<std::vector<FrameHeader>> receiving(n);
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < slots; ++i) {
      const uint8_t* slot = host_recv_headers_ + p * block + i * kFrameHeaderSize;
      if (AllZero(slot, kFrameHeaderSize)) continue;
      absl::StatusOr<FrameHeader> header =
          DecodeHeader(absl::MakeConstSpan(slot, kFrameHeaderSize));
      if (!header.ok()) {
        // The payload lengths that follow are unknown: the ranks can no
        // longer agree on what to post. Fatal for the communicator.
        counters_.Add(counters_.malformed_dropped);
        return absl::DataLossError(
            absl::StrCat("rank ", p, " sent a malformed header: ", header.status().message()));
      }
      receiving[p].push_back(*header);
      moved = true;
    }
  }
  if (!moved) return false;

  // 2. Payloads, staged through device memory.
  size_t out_bytes = 0, in_bytes = 0;
  for (int p = 0; p < n; ++p) {
    for (const Outgoing& m : sending[p]) out_bytes += AlignUp(m.payload.size());
    for (const FrameHeader& h : receiving[p]) in_bytes += AlignUp(h.payload_length);
  }
  if (absl::Status s = out_.Reserve(std::max<size_t>(out_bytes, 1)); !s.ok()) return s;
  if (absl::Status s = in_.Reserve(std::max<size_t>(in_bytes, 1)); !s.ok()) return s;
  size_t offset = 0;
  std::vector<std::vector<size_t>> out_offsets(n), in_offsets(n);
  for (int p = 0; p < n; ++p) {
    for (const Outgoing& m : sending[p]) {
      out_offsets[p].push_back(offset);
      if (!m.payload.empty()) {
        cudaMemcpyAsync(out_.data + offset, m.payload.data(), m.payload.size(),
                        cudaMemcpyHostToDevice, stream_);
      }
      offset += AlignUp(m.payload.size());
    }
  }
  offset = 0;
  for (int p = 0; p < n; ++p) {
    for (const FrameHeader& h : receiving[p]) {
      in_offsets[p].push_back(offset);
      offset += AlignUp(h.payload_length);
    }
  }
  ncclGroupStart();
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < sending[p].size(); ++i) {
      const size_t size = sending[p][i].payload.size();
      if (size > 0) ncclSend(out_.data + out_offsets[p][i], size, ncclUint8, p, comm_, stream_);
    }
    for (size_t i = 0; i < receiving[p].size(); ++i) {
      const size_t size = receiving[p][i].payload_length;
      if (size > 0) ncclRecv(in_.data + in_offsets[p][i], size, ncclUint8, p, comm_, stream_);
    }
  }
  if (ncclResult_t r = ncclGroupEnd(); r != ncclSuccess && r != ncclInProgress) {
    return absl::UnavailableError(NcclError("ncclGroupEnd (payloads)", r));
  }
  if (absl::Status s = Wait(); !s.ok()) return s;
  std::vector<std::vector<MessageBuffer>> payloads(n);
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < receiving[p].size(); ++i) {
      MessageBuffer buffer = pool_->Allocate(receiving[p][i].payload_length);
      if (!buffer.empty()) {
        cudaMemcpyAsync(buffer.data(), in_.data + in_offsets[p][i], buffer.size(),
                        cudaMemcpyDeviceToHost, stream_);
      }
      payloads[p].push_back(std::move(buffer));
    }
  }
  if (absl::Status s = Wait(); !s.ok()) return s;

  // 3. Delivery.
  for (int p = 0; p < n; ++p) {
    for (const Outgoing& m : sending[p]) {
      counters_.Add(counters_.messages_sent);
      counters_.Add(counters_.bytes_sent, kFrameHeaderSize + m.payload.size());
    }
    for (size_t i = 0; i < receiving[p].size(); ++i) {
      Message message{receiving[p][i], std::move(payloads[p][i])};
      if (message.header.type == FrameType::kDispatch) {
        if (!dispatcher_.Admit(message.header)) continue;
        counters_.Add(counters_.messages_received);
        counters_.Add(counters_.bytes_received, kFrameHeaderSize + message.payload.size());
        dispatcher_.Dispatch(std::move(message),
                             std::make_shared<NcclSink>(weak_from_this(), p, pool_));
      } else {
        counters_.Add(counters_.messages_received);
        counters_.Add(counters_.bytes_received, kFrameHeaderSize + message.payload.size());
        DeliverReply(counters_, calls_, std::move(message));
      }
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Calls and replies

absl::StatusOr<int> NcclCore::ParseRank(std::string_view address) const {
  const std::string prefix = absl::StrCat(kScheme, tag_, "/");
  int rank;
  if (address.substr(0, prefix.size()) != prefix ||
      !absl::SimpleAtoi(std::string(address.substr(prefix.size())), &rank) || rank < 0 ||
      rank >= options_.nranks) {
    return absl::InvalidArgumentError(absl::StrCat("'", std::string(address),
                                                   "' is not a rank of this NCCL communicator (",
                                                   prefix, "0..", options_.nranks - 1, ")"));
  }
  return rank;
}

void NcclCore::Call(std::string_view peer_address, Message request, absl::Time deadline,
                    CallCallback done) {
  counters_.Add(counters_.calls_started);
  const uint64_t id = calls_.NextId();
  request.header.request_id = id;
  request.header.sender = options_.id;
  PendingCall call{std::move(done), deadline, request.header, 0};
  absl::Status problem = ValidateOutgoingRequest(request);
  absl::StatusOr<int> rank = ParseRank(peer_address);
  if (problem.ok() && !rank.ok()) problem = rank.status();
  if (problem.ok() && !calls_.Add(id, &call)) {
    problem = absl::ResourceExhaustedError("too many data-plane calls in flight");
  }
  if (!problem.ok()) {
    auto shared = std::make_shared<PendingCall>(std::move(call));
    if (!Post([this, shared, problem] { FinishCall(counters_, std::move(*shared), problem); })) {
      FinishCall(counters_, std::move(*shared), absl::CancelledError("transport shut down"));
    }
    return;
  }
  auto shared = std::make_shared<Message>(std::move(request));
  const int peer = *rank;
  if (!Post([this, id, peer, shared] {
        if (failed_) {
          PendingCall taken;
          if (calls_.Take(id, &taken) == CallTable::Lookup::kFound) {
            FinishCall(counters_, std::move(taken), failure_);
          }
          return;
        }
        if (!calls_.Bind(id, static_cast<uint64_t>(peer) + 1)) return;
        outbox_[peer].push_back({shared->header, std::move(shared->payload)});
      })) {
    PendingCall taken;
    if (calls_.Take(id, &taken) == CallTable::Lookup::kFound) {
      FinishCall(counters_, std::move(taken), absl::CancelledError("transport shut down"));
    }
  }
}

void NcclCore::SendReply(int peer, Message reply) {
  reply.header.sender = options_.id;
  if (reply.header.type == FrameType::kError) counters_.Add(counters_.error_replies_sent);
  auto shared = std::make_shared<Message>(std::move(reply));
  if (!Post([this, peer, shared] {
        if (failed_) {
          counters_.Add(counters_.responses_dropped);
          return;
        }
        outbox_[peer].push_back({shared->header, std::move(shared->payload)});
      })) {
    counters_.Add(counters_.responses_dropped);
  }
}

}  // namespace internal

template class internal::CoreTransport<internal::NcclCore>;

// ---------------------------------------------------------------------------
// NcclTransport

absl::StatusOr<std::string> NcclTransport::NewUniqueId() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
    return absl::UnavailableError(absl::StrCat("ncclGetUniqueId: ", ncclGetErrorString(r)));
  }
  return internal::HexEncode(&id, sizeof(id));
}

absl::StatusOr<std::unique_ptr<NcclTransport>> NcclTransport::Create(NcclTransportOptions options) {
  auto core = std::make_shared<internal::NcclCore>(std::move(options));
  if (absl::Status s = core->Start(); !s.ok()) return s;
  return std::unique_ptr<NcclTransport>(new NcclTransport(std::move(core)));
}


}  // namespace dsv2::transport
