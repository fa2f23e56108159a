// Owned message memory for the data plane.
//
// A Message is a decoded FrameHeader plus its payload bytes in a
// MessageBuffer. Transports move Messages, never copy them: the in-process
// transport hands the caller's buffer to the handler, and the UCX transport
// sends straight from it (registered memory when it came from the
// transport's pool) and receives into pool buffers.
//
// BufferPool is one large page-aligned arena carved into power-of-two slots
// (4 KiB and up) with a free list per size; freed slots are reused by later
// messages of the same size class, which is the steady state of decode (the
// same shapes every step). A request the arena cannot satisfy falls back to
// an aligned heap allocation and is counted. The arena is what the UCX
// transport registers once with ucp_mem_map.
//
// Ownership: a MessageBuffer owns its bytes and returns them on destruction;
// pool buffers keep their pool alive, so they may outlive the transport that
// handed them out. Thread safety: BufferPool is thread-safe; a MessageBuffer
// is a value (thread-compatible).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/base/mutex.h"
#include "common/transport/frame.h"

namespace dsv2::transport {

class BufferPool;

class MessageBuffer {
 public:
  MessageBuffer() = default;
  // A heap buffer of `size` bytes, 64-byte aligned, uninitialized.
  static MessageBuffer Heap(size_t size);
  // A heap buffer holding a copy of `bytes`.
  static MessageBuffer Copy(absl::Span<const uint8_t> bytes);

  MessageBuffer(MessageBuffer&& other) noexcept;
  MessageBuffer& operator=(MessageBuffer&& other) noexcept;
  MessageBuffer(const MessageBuffer&) = delete;
  MessageBuffer& operator=(const MessageBuffer&) = delete;
  ~MessageBuffer();

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  absl::Span<uint8_t> span() { return absl::MakeSpan(data_, size_); }
  absl::Span<const uint8_t> span() const { return absl::MakeConstSpan(data_, size_); }
  // The pool the bytes came from, or nullptr for heap memory.
  const BufferPool* pool() const { return pool_.get(); }

 private:
  friend class BufferPool;
  void Release();

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;  // Slot size for pool buffers.
  std::shared_ptr<BufferPool> pool_;
};

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  struct Stats {
    uint64_t arena_allocations = 0;
    uint64_t heap_fallbacks = 0;  // Requests the arena could not hold.
    uint64_t bytes_in_use = 0;    // Arena slot bytes currently handed out.
    uint64_t bytes_carved = 0;    // Arena bytes ever carved into slots.
  };

  // An arena of `arena_bytes` (rounded up to 4 KiB; 0 → every buffer comes
  // from the heap). Fails if the memory cannot be mapped.
  static absl::StatusOr<std::shared_ptr<BufferPool>> Create(size_t arena_bytes);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of `size` bytes (64-byte aligned, uninitialized): an arena slot
  // when one fits, else heap memory (counted in heap_fallbacks).
  MessageBuffer Allocate(size_t size);

  uint8_t* arena() const { return arena_; }
  size_t arena_bytes() const { return arena_bytes_; }
  bool Contains(const void* p) const {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    return arena_ != nullptr && b >= arena_ && b < arena_ + arena_bytes_;
  }
  Stats stats() const;

  // An opaque handle a transport attaches after registering the arena (the
  // UCX transport stores its ucp_mem_h), read back when sending from or
  // receiving into pool memory. Set and cleared by that transport only.
  void set_registration(void* handle) { registration_ = handle; }
  void* registration() const { return registration_; }

 private:
  friend class MessageBuffer;
  BufferPool(uint8_t* arena, size_t arena_bytes);
  void Release(uint8_t* data, size_t capacity);

  uint8_t* const arena_;
  const size_t arena_bytes_;
  void* registration_ = nullptr;
  mutable Mutex mutex_;
  size_t carved_ ABSL_GUARDED_BY(mutex_) = 0;
  std::vector<std::vector<uint8_t*>> free_lists_ ABSL_GUARDED_BY(mutex_);  // By size class.
  Stats stats_ ABSL_GUARDED_BY(mutex_);
};

// One frame in memory: the header fields and the payload bytes.
struct Message {
  FrameHeader header;
  MessageBuffer payload;
};

// Fields of a dispatch or combine header that the caller chooses; the
// transport stamps request_id and sender.
struct FrameTag {
  uint64_t step_id = 0;
  uint32_t layer = 0;
  uint32_t micro_batch = 0;
};

// Allocates a dispatch Message of the given shape whose payload the caller
// fills in place through DispatchSpansOf(message.header, message.payload.span()).
// `pool` may be null (heap). Padding bytes are zeroed.
absl::StatusOr<Message> NewDispatch(const FrameTag& tag, uint32_t token_count, uint32_t hidden_size,
                                    uint32_t top_k, DType dtype, BufferPool* pool);
// The same with the payload from `allocate(bytes)` (e.g. Transport::AllocatePayload).
absl::StatusOr<Message> NewDispatch(const FrameTag& tag, uint32_t token_count, uint32_t hidden_size,
                                    uint32_t top_k, DType dtype,
                                    absl::FunctionRef<MessageBuffer(size_t)> allocate);

// A dispatch Message holding copies of the three sections. `activations` is
// [T, hidden_size] of `dtype` as bytes; `expert_ids` and `weights` are [T, K].
absl::StatusOr<Message> MakeDispatch(const FrameTag& tag, uint32_t hidden_size, uint32_t top_k,
                                     DType dtype, absl::Span<const uint8_t> activations,
                                     absl::Span<const int32_t> expert_ids,
                                     absl::Span<const float> weights, BufferPool* pool);

// A combine Message answering `request` ([request.token_count,
// request.hidden_size] of `dtype`, tag fields copied); the caller fills the
// payload in place.
absl::StatusOr<Message> NewCombine(const FrameHeader& request, DType dtype, BufferPool* pool);
// The same with the payload from `allocate(bytes)`.
absl::StatusOr<Message> NewCombine(const FrameHeader& request, DType dtype,
                                   absl::FunctionRef<MessageBuffer(size_t)> allocate);

// An error Message carrying `status`.
Message MakeErrorMessage(const absl::Status& status);

}  // namespace dsv2::transport
