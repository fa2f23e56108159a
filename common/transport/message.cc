#include "common/transport/message.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dsv2::transport {
namespace {

constexpr size_t kMinSlot = 4096;
constexpr size_t kHeapAlignment = 64;

// Size class c holds slots of kMinSlot << c bytes.
int SizeClass(size_t size) {
  int c = 0;
  while ((kMinSlot << c) < size) ++c;
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------
// MessageBuffer

MessageBuffer MessageBuffer::Heap(size_t size) {
  MessageBuffer buffer;
  if (size == 0) return buffer;
  const size_t rounded = (size + kHeapAlignment - 1) / kHeapAlignment * kHeapAlignment;
  buffer.data_ = static_cast<uint8_t*>(std::aligned_alloc(kHeapAlignment, rounded));
  if (buffer.data_ == nullptr) throw std::bad_alloc();
  buffer.size_ = size;
  buffer.capacity_ = rounded;
  return buffer;
}

MessageBuffer MessageBuffer::Copy(absl::Span<const uint8_t> bytes) {
  MessageBuffer buffer = Heap(bytes.size());
  if (!bytes.empty()) std::memcpy(buffer.data_, bytes.data(), bytes.size());
  return buffer;
}

MessageBuffer::MessageBuffer(MessageBuffer&& other) noexcept
    : data_(other.data_),
      size_(other.size_),
      capacity_(other.capacity_),
      pool_(std::move(other.pool_)) {
  other.data_ = nullptr;
  other.size_ = 0;
  other.capacity_ = 0;
}

MessageBuffer& MessageBuffer::operator=(MessageBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = other.data_;
    size_ = other.size_;
    capacity_ = other.capacity_;
    pool_ = std::move(other.pool_);
    other.data_ = nullptr;
    other.size_ = 0;
    other.capacity_ = 0;
  }
  return *this;
}

MessageBuffer::~MessageBuffer() { Release(); }

void MessageBuffer::Release() {
  if (data_ != nullptr) {
    if (pool_ != nullptr) {
      pool_->Release(data_, capacity_);
    } else {
      std::free(data_);
    }
  }
  pool_.reset();
  data_ = nullptr;
  size_ = 0;
  capacity_ = 0;
}

// ---------------------------------------------------------------------------
// BufferPool

absl::StatusOr<std::shared_ptr<BufferPool>> BufferPool::Create(size_t arena_bytes) {
  arena_bytes = (arena_bytes + kMinSlot - 1) / kMinSlot * kMinSlot;
  uint8_t* arena = nullptr;
  if (arena_bytes > 0) {
    void* p =
        mmap(nullptr, arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot map a ", arena_bytes, "-byte message arena: ", std::strerror(errno)));
    }
    arena = static_cast<uint8_t*>(p);
  }
  return std::shared_ptr<BufferPool>(new BufferPool(arena, arena_bytes));
}

BufferPool::BufferPool(uint8_t* arena, size_t arena_bytes)
    : arena_(arena), arena_bytes_(arena_bytes) {
  free_lists_.resize(arena_bytes > 0 ? SizeClass(arena_bytes) + 1 : 0);
}

BufferPool::~BufferPool() {
  if (arena_ != nullptr) munmap(arena_, arena_bytes_);
}

MessageBuffer BufferPool::Allocate(size_t size) {
  if (size == 0) return MessageBuffer();
  const int c = SizeClass(size);
  const size_t slot = kMinSlot << c;
  uint8_t* data = nullptr;
  {
    MutexLock lock(&mutex_);
    if (c < static_cast<int>(free_lists_.size())) {
      if (!free_lists_[c].empty()) {
        data = free_lists_[c].back();
        free_lists_[c].pop_back();
      } else if (carved_ + slot <= arena_bytes_) {
        data = arena_ + carved_;
        carved_ += slot;
        stats_.bytes_carved += slot;
      }
    }
    if (data != nullptr) {
      ++stats_.arena_allocations;
      stats_.bytes_in_use += slot;
    } else {
      ++stats_.heap_fallbacks;
    }
  }
  if (data == nullptr) return MessageBuffer::Heap(size);
  MessageBuffer buffer;
  buffer.data_ = data;
  buffer.size_ = size;
  buffer.capacity_ = slot;
  buffer.pool_ = shared_from_this();
  return buffer;
}

void BufferPool::Release(uint8_t* data, size_t capacity) {
  MutexLock lock(&mutex_);
  free_lists_[SizeClass(capacity)].push_back(data);
  stats_.bytes_in_use -= capacity;
}

BufferPool::Stats BufferPool::stats() const {
  MutexLock lock(&mutex_);
  return stats_;
}

// ---------------------------------------------------------------------------
// Builders

namespace {

MessageBuffer AllocateFrom(BufferPool* pool, size_t size) {
  return pool != nullptr ? pool->Allocate(size) : MessageBuffer::Heap(size);
}

}  // namespace

absl::StatusOr<Message> NewDispatch(const FrameTag& tag, uint32_t token_count, uint32_t hidden_size,
                                    uint32_t top_k, DType dtype, BufferPool* pool) {
  return NewDispatch(tag, token_count, hidden_size, top_k, dtype,
                     [pool](size_t bytes) { return AllocateFrom(pool, bytes); });
}

absl::StatusOr<Message> NewDispatch(const FrameTag& tag, uint32_t token_count, uint32_t hidden_size,
                                    uint32_t top_k, DType dtype,
                                    absl::FunctionRef<MessageBuffer(size_t)> allocate) {
  absl::StatusOr<DispatchLayout> layout =
      ComputeDispatchLayout(token_count, hidden_size, top_k, dtype);
  if (!layout.ok()) return layout.status();
  Message message;
  message.header.type = FrameType::kDispatch;
  message.header.dtype = dtype;
  message.header.step_id = tag.step_id;
  message.header.layer = tag.layer;
  message.header.micro_batch = tag.micro_batch;
  message.header.token_count = token_count;
  message.header.hidden_size = hidden_size;
  message.header.top_k = top_k;
  message.header.payload_length = layout->total_bytes;
  message.payload = allocate(layout->total_bytes);
  uint8_t* p = message.payload.data();
  // Zero the alignment padding so payloads are deterministic on the wire.
  const uint64_t act_end = layout->activations_offset + layout->activations_bytes;
  if (layout->expert_ids_offset > act_end)
    std::memset(p + act_end, 0, layout->expert_ids_offset - act_end);
  const uint64_t ids_end = layout->expert_ids_offset + layout->expert_ids_bytes;
  if (layout->weights_offset > ids_end)
    std::memset(p + ids_end, 0, layout->weights_offset - ids_end);
  return message;
}

absl::StatusOr<Message> MakeDispatch(const FrameTag& tag, uint32_t hidden_size, uint32_t top_k,
                                     DType dtype, absl::Span<const uint8_t> activations,
                                     absl::Span<const int32_t> expert_ids,
                                     absl::Span<const float> weights, BufferPool* pool) {
  if (top_k == 0 || expert_ids.size() % top_k != 0 || weights.size() != expert_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch has ", expert_ids.size(),
                                                   " expert ids and ", weights.size(),
                                                   " weights for top_k ", top_k));
  }
  const uint64_t tokens = expert_ids.size() / top_k;
  if (tokens > kMaxFrameTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("dispatch of ", tokens, " tokens exceeds ", kMaxFrameTokens));
  }
  absl::StatusOr<Message> message =
      NewDispatch(tag, static_cast<uint32_t>(tokens), hidden_size, top_k, dtype, pool);
  if (!message.ok()) return message.status();
  absl::StatusOr<DispatchSpans> spans = DispatchSpansOf(message->header, message->payload.span());
  if (!spans.ok()) return spans.status();
  if (activations.size() != spans->activations.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dispatch activations are ", activations.size(), " bytes, ", tokens, " tokens x ",
        hidden_size, " ", std::string(DTypeName(dtype)), " need ", spans->activations.size()));
  }
  if (!activations.empty())
    std::memcpy(spans->activations.data(), activations.data(), activations.size());
  if (!expert_ids.empty()) {
    std::memcpy(spans->expert_ids.data(), expert_ids.data(), expert_ids.size() * sizeof(int32_t));
    std::memcpy(spans->weights.data(), weights.data(), weights.size() * sizeof(float));
  }
  return message;
}

absl::StatusOr<Message> NewCombine(const FrameHeader& request, DType dtype, BufferPool* pool) {
  return NewCombine(request, dtype, [pool](size_t bytes) { return AllocateFrom(pool, bytes); });
}

absl::StatusOr<Message> NewCombine(const FrameHeader& request, DType dtype,
                                   absl::FunctionRef<MessageBuffer(size_t)> allocate) {
  absl::StatusOr<uint64_t> bytes =
      CombinePayloadBytes(request.token_count, request.hidden_size, dtype);
  if (!bytes.ok()) return bytes.status();
  Message message;
  message.header.type = FrameType::kCombine;
  message.header.dtype = dtype;
  message.header.request_id = request.request_id;
  message.header.step_id = request.step_id;
  message.header.layer = request.layer;
  message.header.micro_batch = request.micro_batch;
  message.header.token_count = request.token_count;
  message.header.hidden_size = request.hidden_size;
  message.header.top_k = 0;
  message.header.payload_length = *bytes;
  message.payload = allocate(*bytes);
  return message;
}

Message MakeErrorMessage(const absl::Status& status) {
  const std::string payload = EncodeErrorPayload(status);
  Message message;
  message.header.type = FrameType::kError;
  message.header.payload_length = payload.size();
  message.payload = MessageBuffer::Copy(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  return message;
}

}  // namespace dsv2::transport
