#include "common/transport/ucx_transport.h"

#include "common/transport/core_transport_impl.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <optional>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/logging.h"
#include "common/base/mutex.h"
#include "common/transport/transport_internal.h"

namespace dsv2::transport {
namespace internal {
namespace {

constexpr char kTcpScheme[] = "ucx://";
constexpr char kLocalScheme[] = "ucx-local://";
// Longest reply address a request may carry (a worker address is ~100-300
// bytes of hex).
constexpr size_t kMaxReplyAddressBytes = 4096;

std::string UcsError(const char* what, ucs_status_t status) {
  return absl::StrCat(what, ": ", ucs_status_string(status));
}

std::string ErrnoString(const char* what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

// This host's boot id (a UUID that changes at every boot), naming the host in
// local addresses so one from another host is refused rather than misread.
std::string BootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  id.erase(std::remove(id.begin(), id.end(), '-'), id.end());
  return id.empty() ? "unknown" : id.substr(0, 16);
}

// Parses "HOST:PORT" / "[V6]:PORT" into a socket address.
absl::Status ParseHostPort(std::string_view text, sockaddr_storage* out, socklen_t* out_len) {
  std::string host;
  std::string port;
  if (text.starts_with("[")) {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("bad address '", std::string(text), "'"));
    }
    host = std::string(text.substr(1, close - 1));
    port = std::string(text.substr(close + 2));
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("address '", std::string(text), "' has no :PORT"));
    }
    host = std::string(text.substr(0, colon));
    port = std::string(text.substr(colon + 1));
  }
  int port_number;
  if (!absl::SimpleAtoi(port, &port_number) || port_number < 0 || port_number > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad port in address '", std::string(text), "'"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST;
  addrinfo* result = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &result); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  std::memcpy(out, result->ai_addr, result->ai_addrlen);
  *out_len = result->ai_addrlen;
  freeaddrinfo(result);
  return absl::OkStatus();
}

std::string FormatSockaddr(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    return absl::StrCat(host, ":", ntohs(in->sin_port));
  }
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
  inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
  return absl::StrCat("[", host, "]:", ntohs(in6->sin6_port));
}

// Whether `text` can be a data-plane address: one of our schemes, at most
// kMaxReplyAddressBytes of [A-Za-z0-9:/.@[]-].
bool IsAddress(std::string_view text) {
  if (text.size() > kMaxReplyAddressBytes ||
      (!text.starts_with(kTcpScheme) && !text.starts_with(kLocalScheme))) {
    return false;
  }
  for (char c : text) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != ':' && c != '/' && c != '.' &&
        c != '@' && c != '[' && c != ']' && c != '-') {
      return false;
    }
  }
  return true;
}

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

bool SameHost(const sockaddr_storage& a, const sockaddr* b) {
  if (a.ss_family != b->sa_family) return false;
  if (a.ss_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in*>(&a)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(b)->sin_addr.s_addr;
  }
  return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(&a)->sin6_addr,
                     &reinterpret_cast<const sockaddr_in6*>(b)->sin6_addr, sizeof(in6_addr)) == 0;
}

// The network interface that holds the address `addr` ("lo", "eth0").
absl::StatusOr<std::string> InterfaceOf(const sockaddr_storage& addr) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return absl::InternalError(ErrnoString("getifaddrs"));
  std::string name;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr != nullptr && SameHost(addr, i->ifa_addr)) {
      name = i->ifa_name;
      break;
    }
  }
  freeifaddrs(list);
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no network interface of this host has the address ", FormatSockaddr(addr),
        " (listen on a specific address of this host, not a wildcard)"));
  }
  return name;
}

// A TCP port of `addr` that is free now (the kernel's choice for port 0).
absl::StatusOr<int> FreePort(sockaddr_storage addr, socklen_t length) {
  const int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(ErrnoString("socket"));
  if (addr.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&addr)->sin_port = 0;
  } else {
    reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = 0;
  }
  int port = -1;
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), length) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) == 0) {
    port = ntohs(addr.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&addr)->sin_port
                                           : reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  }
  const std::string error = ErrnoString("bind");
  close(fd);
  if (port < 0) return absl::UnavailableError(absl::StrCat("cannot find a free port: ", error));
  return port;
}

int PortOf(const sockaddr_storage& addr) {
  return ntohs(addr.ss_family == AF_INET
                   ? reinterpret_cast<const sockaddr_in*>(&addr)->sin_port
                   : reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
}

}  // namespace

// A UCP endpoint and what the data plane knows about it. Touched only on
// the progress thread, except that reply sinks hold a reference.
struct Connection {
  uint64_t key = 0;
  ucp_ep_h ep = nullptr;
  std::string name;       // The dialed address; cached under it in UcxCore::dialed_.
  bool peer_mode = true;  // ERR_HANDLING_MODE_PEER.
  bool failed = false;
  int pidfd = -1;
};

// Where the answer to a request goes: the caller's own address, which every
// request carries after the frame header (the endpoint UCX creates on our
// side for a caller is UCX's, which may destroy it when the caller goes, so
// we never use it).
struct ReplyRoute {
  std::string address;
  std::optional<uint64_t> key_id;  // The request's seal key: the reply's.
};

struct SendOp {
  UcxCore* core;
  std::shared_ptr<Connection> connection;
  std::vector<uint8_t> header;
  MessageBuffer payload;
  uint64_t call_id = 0;  // Nonzero for requests.
  absl::Time deadline;
  bool timed_out = false;
};

struct RecvOp {
  UcxCore* core;
  FrameHeader header;
  void* descriptor = nullptr;
  size_t length = 0;
  ReplyRoute reply_to;  // Empty for replies.
  MessageBuffer buffer;
  absl::Time deadline;
  bool abandoned = false;
  // Sealed frames: the seal and the additional data it covers, to open the
  // payload once it has arrived.
  std::optional<Seal> seal;
  std::vector<uint8_t> aad;
};

class UcxCore : public std::enable_shared_from_this<UcxCore> {
 public:
  explicit UcxCore(UcxTransportOptions options)
      : options_(std::move(options)),
        calls_(options_.max_calls_in_flight),
        dispatcher_(&counters_, options_.handler_threads, options_.max_queued_requests) {}
  ~UcxCore();

  // Starts the progress thread, which initializes UCX; returns its verdict.
  absl::Status Start();
  void Shutdown();

  const UcxTransportOptions& options() const { return options_; }
  PeerId id() const { return options_.id; }
  const std::string& address() const { return address_; }
  Counters& counters() { return counters_; }
  RequestDispatcher& dispatcher() { return dispatcher_; }
  MessageBuffer Allocate(size_t bytes) { return pool_->Allocate(bytes); }

  void Call(std::string_view peer_address, Message request, absl::Time deadline, CallCallback done);
  // Queues a reply along `route` (any thread).
  void SendReply(ReplyRoute route, Message reply);
  absl::StatusOr<std::string> DescribeConnection(std::string_view peer_address);

 private:
  // Runs `command` on the progress thread; false once stopping.
  bool Post(absl::AnyInvocable<void()> command) ABSL_LOCKS_EXCLUDED(mutex_);
  void Wake();
  void Run(std::promise<absl::Status>* started) ABSL_LOCKS_EXCLUDED(mutex_);
  absl::Status Init();
  void Teardown() ABSL_LOCKS_EXCLUDED(mutex_);
  bool RunCommands() ABSL_LOCKS_EXCLUDED(mutex_);  // True if any ran.
  void ExpireDeadlines();
  int EpollTimeoutMs();

  absl::StatusOr<std::shared_ptr<Connection>> Dial(const std::string& address);
  absl::Status DialTcp(const std::string& rest, Connection* connection);
  absl::Status DialLocal(const std::string& rest, Connection* connection);
  void EndpointFailed(ucp_ep_h ep, ucs_status_t status);
  // Takes the connection by value: closing the endpoint may complete (and
  // free) the operations that hold other references to it.
  void FailConnection(std::shared_ptr<Connection> connection, const absl::Status& status);
  void CloseEndpoint(Connection* connection, bool force);

  void StartCall(const std::string& address, uint64_t id, std::vector<uint8_t> am_header,
                 MessageBuffer payload);
  // Sends header bytes and payload as one active message; call_id is the
  // call it carries the request of (0 for replies and raw sends).
  void StartSend(std::shared_ptr<Connection> connection, std::vector<uint8_t> header,
                 MessageBuffer payload, uint64_t call_id);
  // The active-message header of `message`: the frame header, our reply
  // address (requests), and the seal when sealing (which encrypts the
  // payload in place).
  absl::StatusOr<std::vector<uint8_t>> FrameBytes(FrameHeader header, MessageBuffer& payload,
                                                  std::optional<uint64_t> key_id = std::nullopt);

 public:
  absl::Status SendRaw(std::string_view peer_address, absl::Span<const uint8_t> header,
                       absl::Span<const uint8_t> payload);
  FrameSealer& sealer() { return sealer_; }

 private:
  void SendDone(SendOp* op, ucs_status_t status);
  ucs_status_t ReceiveAm(const void* header, size_t header_length, void* data, size_t length,
                         const ucp_am_recv_param_t* param);
  void StartDeferredReceives();
  void ReceiveDone(RecvOp* op, ucs_status_t status);
  void Deliver(Message message, ReplyRoute reply_to);

  static void OnSendDone(void* request, ucs_status_t status, void* user_data);
  static void OnReceiveDone(void* request, ucs_status_t status, size_t length, void* user_data);
  static void OnCloseDone(void* request, ucs_status_t status, void* user_data);
  static ucs_status_t OnAm(void* arg, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t* param);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  // Drops a frame that did not open (or was not sealed when it must be).
  void DropUnauthenticated(const std::string& why);

  bool OnProgressThread() const { return std::this_thread::get_id() == thread_id_; }
  ucp_mem_h PoolHandleFor(const MessageBuffer& buffer) const {
    return buffer.pool() == pool_.get() && memh_ != nullptr ? memh_ : nullptr;
  }

  const UcxTransportOptions options_;
  Counters counters_;
  CallTable calls_;
  RequestDispatcher dispatcher_;
  std::shared_ptr<BufferPool> pool_;
  std::string address_;  // Published, and sent with requests as the reply address.
  FrameSealer sealer_;

  // Cross-thread state.
  Mutex shutdown_mutex_;  // Serializes Shutdown.
  Mutex mutex_;
  std::deque<absl::AnyInvocable<void()>> commands_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  int wake_fd_ = -1;  // Set by Start before the thread runs; written to from any thread.
  std::thread thread_;
  std::thread::id thread_id_;

  // Progress-thread state: owned by the progress thread, which alone reads
  // and writes it (UCX runs in UCS_THREAD_MODE_SINGLE), from Init to the end
  // of Teardown; other threads reach it only by Post-ing a command. No lock
  // protects it, so it carries no lock annotation.
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_mem_h memh_ = nullptr;
  int epoll_fd_ = -1;
  int worker_fd_ = -1;
  uint64_t next_connection_key_ = 1;
  absl::flat_hash_map<std::string, std::shared_ptr<Connection>> dialed_;
  absl::flat_hash_map<ucp_ep_h, std::shared_ptr<Connection>> by_endpoint_;
  absl::flat_hash_map<int, std::shared_ptr<Connection>> by_pidfd_;
  std::vector<std::shared_ptr<Connection>> closing_;  // Kept alive while UCX may call back.
  std::set<SendOp*> sends_;
  std::set<std::pair<absl::Time, SendOp*>> send_deadlines_;
  std::set<RecvOp*> receives_;
  std::set<std::pair<absl::Time, RecvOp*>> receive_deadlines_;
  std::vector<RecvOp*> deferred_;  // Rendezvous receives to start after progress returns.
  int pending_closes_ = 0;
};

// Answers a request over the connection it arrived on.
class UcxSink : public ResponseSink {
 public:
  UcxSink(std::weak_ptr<UcxCore> core, ReplyRoute route, std::shared_ptr<BufferPool> pool)
      : core_(std::move(core)), route_(std::move(route)), pool_(std::move(pool)) {}

  void Send(Message response) override {
    std::shared_ptr<UcxCore> core = core_.lock();
    if (core == nullptr) return;
    core->SendReply(std::move(route_), std::move(response));
  }
  MessageBuffer AllocatePayload(size_t bytes) override { return pool_->Allocate(bytes); }

 private:
  std::weak_ptr<UcxCore> core_;
  ReplyRoute route_;
  std::shared_ptr<BufferPool> pool_;
};

// ---------------------------------------------------------------------------
// Lifecycle

absl::Status UcxCore::Start() {
  absl::StatusOr<std::shared_ptr<BufferPool>> pool = BufferPool::Create(options_.pool_bytes);
  if (!pool.ok()) return pool.status();
  pool_ = *std::move(pool);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::InternalError(ErrnoString("eventfd"));
  std::promise<absl::Status> started;
  std::future<absl::Status> result = started.get_future();
  thread_ = std::thread([this, &started] { Run(&started); });
  absl::Status status = result.get();
  if (!status.ok()) {
    thread_.join();
    {
      MutexLock lock(&mutex_);
      stopping_ = true;
    }
    dispatcher_.Stop();
  }
  return status;
}

UcxCore::~UcxCore() {
  if (wake_fd_ >= 0) close(wake_fd_);
}

absl::Status UcxCore::Init() {
  // kTcp: the listen address, its interface and port.
  sockaddr_storage listen_addr{};
  socklen_t listen_length = 0;
  std::string interface;
  if (options_.mode == UcxTransportOptions::Mode::kTcp) {
    if (absl::Status st = ParseHostPort(options_.listen_address, &listen_addr, &listen_length);
        !st.ok()) {
      return st;
    }
    absl::StatusOr<std::string> name = InterfaceOf(listen_addr);
    if (!name.ok()) return name.status();
    interface = *std::move(name);
  }
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return absl::InternalError(UcsError("ucp_config_read", s));
  }
  // What this mode uses, and nothing else, unless the environment says.
  const bool tcp = options_.mode == UcxTransportOptions::Mode::kTcp;
  int port = tcp ? PortOf(listen_addr) : 0;
  if (std::getenv("UCX_TLS") == nullptr) ucp_config_modify(config, "TLS", tcp ? "tcp" : "sm");
  if (tcp && std::getenv("UCX_NET_DEVICES") == nullptr) {
    ucp_config_modify(config, "NET_DEVICES", interface.c_str());
  }
  ucs_status_t s = UCS_OK;
  // With port 0, a free port is chosen here and handed to UCX, so that the
  // published address names it; another process may take it in between,
  // so try a few.
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (tcp) {
      if (PortOf(listen_addr) == 0) {
        absl::StatusOr<int> free_port = FreePort(listen_addr, listen_length);
        if (!free_port.ok()) {
          ucp_config_release(config);
          return free_port.status();
        }
        port = *free_port;
      }
      const std::string range = absl::StrCat(port, "-", port);
      // (Transport options go without their prefix: "PORT_RANGE", not
      // "TCP_PORT_RANGE", which UCX ignores with a warning.)
      ucp_config_modify(config, "PORT_RANGE", range.c_str());
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    params.mt_workers_shared = 0;
    s = ucp_init(&params, config, &context_);
    if (s != UCS_OK) {
      context_ = nullptr;
      ucp_config_release(config);
      return absl::InternalError(UcsError("ucp_init (check UCX_TLS)", s));
    }
    ucp_worker_params_t worker_params{};
    worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;  // Only the progress thread touches it.
    s = ucp_worker_create(context_, &worker_params, &worker_);
    if (s == UCS_OK) break;
    worker_ = nullptr;
    ucp_cleanup(context_);
    context_ = nullptr;
    if (!tcp || PortOf(listen_addr) != 0) break;  // A port of the caller's choice is taken.
  }
  ucp_config_release(config);
  if (s != UCS_OK) {
    return absl::UnavailableError(absl::StrCat(
        "cannot start the UCX worker",
        tcp ? absl::StrCat(" listening on ", options_.listen_address, " (port ", port, ")") : "",
        ": ", ucs_status_string(s)));
  }
  ucp_worker_attr_t attr{};
  attr.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  if (s = ucp_worker_query(worker_, &attr); s != UCS_OK) {
    return absl::InternalError(UcsError("ucp_worker_query", s));
  }
  if (attr.max_am_header < kFrameHeaderSize) {
    return absl::FailedPreconditionError(absl::StrCat("UCX active-message headers are limited to ",
                                                      attr.max_am_header, " bytes, frames need ",
                                                      kFrameHeaderSize));
  }
  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                       UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  handler.id = kUcxFrameAmId;
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  handler.cb = &UcxCore::OnAm;
  handler.arg = this;
  if (s = ucp_worker_set_am_recv_handler(worker_, &handler); s != UCS_OK) {
    return absl::InternalError(UcsError("ucp_worker_set_am_recv_handler", s));
  }

  // Register the pool once.
  if (pool_->arena_bytes() > 0) {
    ucp_mem_map_params_t map{};
    map.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    map.address = pool_->arena();
    map.length = pool_->arena_bytes();
    if (s = ucp_mem_map(context_, &map, &memh_); s != UCS_OK) {
      memh_ = nullptr;
      return absl::InternalError(UcsError("ucp_mem_map of the message pool", s));
    }
    pool_->set_registration(memh_);
  }

  // Sleep/wake: the worker's event fd, our wake-up eventfd, peer pidfds.
  if (s = ucp_worker_get_efd(worker_, &worker_fd_); s != UCS_OK) {
    return absl::InternalError(UcsError("ucp_worker_get_efd", s));
  }
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return absl::InternalError(ErrnoString("epoll_create1"));
  for (int fd : {worker_fd_, wake_fd_}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) {
      return absl::InternalError(ErrnoString("epoll_ctl"));
    }
  }

  // The address others dial, and the reply address our requests carry.
  ucp_address_t* worker_address = nullptr;
  size_t worker_address_length = 0;
  if (s = ucp_worker_get_address(worker_, &worker_address, &worker_address_length); s != UCS_OK) {
    return absl::InternalError(UcsError("ucp_worker_get_address", s));
  }
  const std::string hex = HexEncode(worker_address, worker_address_length);
  ucp_worker_release_address(worker_, worker_address);
  if (tcp) {
    sockaddr_storage bound = listen_addr;
    if (bound.ss_family == AF_INET) {
      reinterpret_cast<sockaddr_in*>(&bound)->sin_port = htons(static_cast<uint16_t>(port));
    } else {
      reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port = htons(static_cast<uint16_t>(port));
    }
    address_ = absl::StrCat(kTcpScheme, FormatSockaddr(bound), "/", hex);
  } else {
    address_ = absl::StrCat(kLocalScheme, getpid(), "@", BootId(), "/", hex);
  }
  // Requests carry the header, our address and a seal in the AM header.
  if (attr.max_am_header < kFrameHeaderSize + address_.size() + kSealBytes) {
    return absl::FailedPreconditionError(
        absl::StrCat("UCX active-message headers are limited to ", attr.max_am_header,
                     " bytes; requests need ", kFrameHeaderSize + address_.size() + kSealBytes));
  }
  return absl::OkStatus();
}

void UcxCore::Shutdown() {
  MutexLock shutdown_lock(&shutdown_mutex_);
  // Handlers first, while their answers (queued requests are answered
  // UNAVAILABLE) can still be sent.
  dispatcher_.Stop();
  {
    MutexLock lock(&mutex_);
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
}

void UcxCore::Teardown() {
  // Commands posted before stopping (replies, mostly) go out before the
  // endpoints close.
  if (worker_ != nullptr) {
    RunCommands();
    while (ucp_worker_progress(worker_) != 0) {
    }
  }
  FailCalls(counters_, calls_.TakeAll(), absl::CancelledError("transport shut down"));
  // Close every endpoint we own: peer-mode ones at once (the peer sees the
  // disconnect and fails its calls to us), the others with a flush.
  std::vector<std::shared_ptr<Connection>> connections;
  for (auto& [ep, connection] : by_endpoint_) connections.push_back(connection);
  for (auto& connection : connections) {
    connection->failed = true;
    CloseEndpoint(connection.get(), connection->peer_mode);
  }
  by_endpoint_.clear();
  dialed_.clear();
  const absl::Time give_up = absl::Now() + absl::Seconds(2);
  while (worker_ != nullptr && pending_closes_ > 0 && absl::Now() < give_up) {
    ucp_worker_progress(worker_);
  }
  for (auto& [fd, connection] : by_pidfd_) close(fd);
  by_pidfd_.clear();
  if (memh_ != nullptr) {
    pool_->set_registration(nullptr);
    ucp_mem_unmap(context_, memh_);
    memh_ = nullptr;
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  worker_ = nullptr;
  if (context_ != nullptr) ucp_cleanup(context_);
  context_ = nullptr;
  // UCX will not call back any more: free what it still held.
  for (SendOp* op : sends_) delete op;
  sends_.clear();
  send_deadlines_.clear();
  for (RecvOp* op : receives_) delete op;
  receives_.clear();
  receive_deadlines_.clear();
  for (RecvOp* op : deferred_) delete op;
  deferred_.clear();
  closing_.clear();
  if (epoll_fd_ >= 0) close(epoll_fd_);
  epoll_fd_ = -1;
  // Commands posted before stopping_ was set and not yet run: calls among
  // them were failed above through the call table; replies are dropped.
  std::deque<absl::AnyInvocable<void()>> leftover;
  {
    MutexLock lock(&mutex_);
    leftover.swap(commands_);
  }
}

// ---------------------------------------------------------------------------
// The progress loop

bool UcxCore::Post(absl::AnyInvocable<void()> command) {
  {
    MutexLock lock(&mutex_);
    if (stopping_) return false;
    commands_.push_back(std::move(command));
  }
  Wake();
  return true;
}

void UcxCore::Wake() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

bool UcxCore::RunCommands() {
  std::deque<absl::AnyInvocable<void()>> commands;
  {
    MutexLock lock(&mutex_);
    commands.swap(commands_);
  }
  for (auto& command : commands) command();
  return !commands.empty();
}

void UcxCore::Run(std::promise<absl::Status>* started) {
  thread_id_ = std::this_thread::get_id();
  absl::Status init = Init();
  if (!init.ok()) {
    Teardown();
    started->set_value(init);
    return;
  }
  started->set_value(absl::OkStatus());
  absl::Time last_event = absl::Now();
  for (;;) {
    {
      MutexLock lock(&mutex_);
      if (stopping_) break;
    }
    bool active = RunCommands();
    while (ucp_worker_progress(worker_) != 0) active = true;
    if (!deferred_.empty()) {
      StartDeferredReceives();
      active = true;
    }
    ExpireDeadlines();
    if (active) {
      last_event = absl::Now();
      continue;
    }
    if (absl::Now() - last_event < options_.busy_poll) continue;
    // Nothing to do: arm the worker and sleep until an event or deadline.
    const ucs_status_t armed = ucp_worker_arm(worker_);
    if (armed == UCS_ERR_BUSY) continue;
    {
      MutexLock lock(&mutex_);
      if (!commands_.empty() || stopping_) continue;
    }
    epoll_event events[16];
    const int n = epoll_wait(epoll_fd_, events, 16, EpollTimeoutMs());
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_fd_) {
        uint64_t value;
        [[maybe_unused]] ssize_t r = read(wake_fd_, &value, sizeof(value));
      } else if (fd != worker_fd_) {
        auto it = by_pidfd_.find(fd);
        if (it != by_pidfd_.end()) {
          std::shared_ptr<Connection> connection = it->second;
          FailConnection(connection, absl::UnavailableError(absl::StrCat(
                                         "data-plane peer ", connection->name, " exited")));
        }
      }
    }
    last_event = absl::Now();
  }
  Teardown();
}

int UcxCore::EpollTimeoutMs() {
  absl::Time next = calls_.NextDeadline();
  if (!send_deadlines_.empty()) next = std::min(next, send_deadlines_.begin()->first);
  if (!receive_deadlines_.empty()) next = std::min(next, receive_deadlines_.begin()->first);
  const absl::Duration wait = next - absl::Now();
  if (wait <= absl::ZeroDuration()) return 0;
  // Cap so the loop re-checks state; round up so a deadline never spins.
  if (wait >= absl::Seconds(1)) return 1000;
  return static_cast<int>(absl::ToInt64Milliseconds(wait)) + 1;
}

void UcxCore::ExpireDeadlines() {
  const absl::Time now = absl::Now();
  FailCalls(counters_, calls_.TakeExpired(now),
            absl::DeadlineExceededError("data-plane call deadline exceeded"));
  while (!send_deadlines_.empty() && send_deadlines_.begin()->first <= now) {
    SendOp* op = send_deadlines_.begin()->second;
    send_deadlines_.erase(send_deadlines_.begin());
    op->timed_out = true;
    counters_.Add(counters_.send_timeouts);
    std::shared_ptr<Connection> connection = op->connection;  // `op` may be freed below.
    FailConnection(connection, absl::UnavailableError(absl::StrCat(
                                   "send to ", connection->name, " did not complete within ",
                                   absl::FormatDuration(options_.send_timeout))));
  }
  while (!receive_deadlines_.empty() && receive_deadlines_.begin()->first <= now) {
    RecvOp* op = receive_deadlines_.begin()->second;
    receive_deadlines_.erase(receive_deadlines_.begin());
    op->abandoned = true;  // Freed when UCX completes or at teardown.
    counters_.Add(counters_.receive_timeouts);
  }
}

// ---------------------------------------------------------------------------
// Connections

absl::StatusOr<std::shared_ptr<Connection>> UcxCore::Dial(const std::string& address) {
  if (auto it = dialed_.find(address); it != dialed_.end() && !it->second->failed) {
    return it->second;
  }
  auto connection = std::make_shared<Connection>();
  connection->key = next_connection_key_++;
  connection->name = address;
  absl::Status status;
  if (absl::StartsWith(address, kTcpScheme)) {
    status = DialTcp(address.substr(std::strlen(kTcpScheme)), connection.get());
  } else if (absl::StartsWith(address, kLocalScheme)) {
    status = DialLocal(address.substr(std::strlen(kLocalScheme)), connection.get());
  } else {
    status = absl::InvalidArgumentError(
        absl::StrCat("'", address.substr(0, 64),
                     "' is not a UCX data-plane address (ucx:// or ucx-local://)"));
  }
  if (!status.ok()) {
    if (connection->pidfd >= 0) close(connection->pidfd);
    return status;
  }
  by_endpoint_[connection->ep] = connection;
  dialed_[address] = connection;
  if (connection->pidfd >= 0) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = connection->pidfd;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, connection->pidfd, &event);
    by_pidfd_[connection->pidfd] = connection;
  }
  return connection;
}

absl::Status UcxCore::DialTcp(const std::string& rest, Connection* connection) {
  // HOST:PORT/HEX: the worker address is what connects; HOST:PORT says where
  // (for people and logs).
  const size_t slash = rest.find('/');
  if (slash == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", connection->name.substr(0, 64), "' is not ucx://HOST:PORT/HEX"));
  }
  absl::StatusOr<std::vector<uint8_t>> worker_address = HexDecode(rest.substr(slash + 1));
  if (!worker_address.ok()) return worker_address.status();
  if (worker_address->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", connection->name.substr(0, 64), "' has no worker address"));
  }
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(worker_address->data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &UcxCore::OnEndpointError;
  params.err_handler.arg = this;
  connection->peer_mode = true;
  if (ucs_status_t s = ucp_ep_create(worker_, &params, &connection->ep); s != UCS_OK) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", rest.substr(0, slash), ": ",
                                               ucs_status_string(s)));
  }
  return absl::OkStatus();
}

absl::Status UcxCore::DialLocal(const std::string& rest, Connection* connection) {
  // PID@BOOT/HEX
  const size_t at = rest.find('@');
  const size_t slash = rest.find('/');
  int pid = 0;
  if (at == std::string::npos || slash == std::string::npos || slash < at ||
      !absl::SimpleAtoi(rest.substr(0, at), &pid) || pid <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", connection->name, "' is not ucx-local://PID@BOOT/HEX"));
  }
  if (rest.substr(at + 1, slash - at - 1) != BootId()) {
    return absl::InvalidArgumentError(absl::StrCat(
        connection->name.substr(0, 40), "... is a local address of another host; use ucx://"));
  }
  absl::StatusOr<std::vector<uint8_t>> worker_address = HexDecode(rest.substr(slash + 1));
  if (!worker_address.ok()) return worker_address.status();
  connection->pidfd = PidfdOpen(pid);
  if (connection->pidfd < 0) {
    return absl::UnavailableError(
        absl::StrCat("data-plane peer process ", pid, " is gone: ", std::strerror(errno)));
  }
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  params.address = reinterpret_cast<const ucp_address_t*>(worker_address->data());
  // No peer-failure mode: it would rule out shared memory. The pidfd
  // watches the peer instead.
  params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  connection->peer_mode = false;
  if (ucs_status_t s = ucp_ep_create(worker_, &params, &connection->ep); s != UCS_OK) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to local peer ", pid, ": ", ucs_status_string(s)));
  }
  return absl::OkStatus();
}

void UcxCore::FailConnection(std::shared_ptr<Connection> connection, const absl::Status& status) {
  if (connection->failed) return;
  connection->failed = true;
  DSV2_LOG(DEBUG) << "data plane: " << connection->name << " failed: " << status;
  if (auto it = dialed_.find(connection->name);
      it != dialed_.end() && it->second == connection) {
    dialed_.erase(it);
  }
  if (connection->pidfd >= 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection->pidfd, nullptr);
    by_pidfd_.erase(connection->pidfd);
    close(connection->pidfd);
    connection->pidfd = -1;
  }
  FailCalls(counters_, calls_.TakeConnection(connection->key), status);
  if (auto it = by_endpoint_.find(connection->ep);
      it != by_endpoint_.end() && it->second == connection) {
    by_endpoint_.erase(it);
  }
  closing_.push_back(connection);
  // The peer is gone or stuck: nothing to flush to.
  CloseEndpoint(connection.get(), /*force=*/true);
}

void UcxCore::CloseEndpoint(Connection* connection, bool force) {
  if (connection->ep == nullptr) return;
  ucp_request_param_t param{};
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  param.cb.send = &UcxCore::OnCloseDone;
  param.user_data = this;
  ucs_status_ptr_t request = ucp_ep_close_nbx(connection->ep, &param);
  connection->ep = nullptr;
  if (request != nullptr && !UCS_PTR_IS_ERR(request)) ++pending_closes_;
}

void UcxCore::OnCloseDone(void* request, ucs_status_t, void* user_data) {
  UcxCore* core = static_cast<UcxCore*>(user_data);
  --core->pending_closes_;
  ucp_request_free(request);
}

// UCX runs this from ucp_worker_progress, i.e. on the progress thread; the
// Post fallback keeps it safe should a UCX build call it from its async
// thread instead.
void UcxCore::OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  UcxCore* core = static_cast<UcxCore*>(arg);
  if (!core->OnProgressThread()) {
    core->Post([core, ep, status] { core->EndpointFailed(ep, status); });
    return;
  }
  core->EndpointFailed(ep, status);
}

void UcxCore::EndpointFailed(ucp_ep_h ep, ucs_status_t status) {
  auto it = by_endpoint_.find(ep);
  if (it == by_endpoint_.end()) return;
  std::shared_ptr<Connection> connection = it->second;
  FailConnection(connection,
                 absl::UnavailableError(absl::StrCat("data-plane peer ", connection->name,
                                                     " failed: ", ucs_status_string(status))));
}

absl::StatusOr<std::string> UcxCore::DescribeConnection(std::string_view peer_address) {
  auto result = std::make_shared<std::promise<absl::StatusOr<std::string>>>();
  std::future<absl::StatusOr<std::string>> future = result->get_future();
  const std::string address(peer_address);
  if (!Post([this, address, result] {
        auto it = dialed_.find(address);
        if (it == dialed_.end() || it->second->ep == nullptr) {
          result->set_value(absl::NotFoundError(absl::StrCat("not connected to ", address)));
          return;
        }
        char* text = nullptr;
        size_t size = 0;
        FILE* stream = open_memstream(&text, &size);
        ucp_ep_print_info(it->second->ep, stream);
        std::fclose(stream);
        // Lines like "#   lane[1]:  0:tcp/lo.0 md[0] -> ... am am_bw#0": keep the tl/dev.
        std::vector<std::string> lanes;
        for (absl::string_view line : absl::StrSplit(absl::string_view(text, size), '\n')) {
          const size_t lane = line.find("lane[");
          if (lane == absl::string_view::npos || absl::StrContains(line, " cm ")) continue;
          const size_t colon = line.find(':', line.find(']', lane) + 2);
          if (colon == absl::string_view::npos) continue;
          const size_t end = line.find(' ', colon);
          lanes.emplace_back(line.substr(colon + 1, end - colon - 1));
        }
        std::free(text);
        result->set_value(absl::StrJoin(lanes, ","));
      })) {
    return absl::CancelledError("transport shut down");
  }
  if (future.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    return absl::DeadlineExceededError("progress thread did not answer");
  }
  return future.get();
}

// ---------------------------------------------------------------------------
// Sending

void UcxCore::Call(std::string_view peer_address, Message request, absl::Time deadline,
                   CallCallback done) {
  counters_.Add(counters_.calls_started);
  const uint64_t id = calls_.NextId();
  request.header.request_id = id;
  request.header.sender = options_.id;
  PendingCall call{std::move(done), deadline, request.header, 0};
  if (absl::Status s = ValidateOutgoingRequest(request); !s.ok()) {
    auto shared = std::make_shared<PendingCall>(std::move(call));
    if (!Post([this, shared, s] { FinishCall(counters_, std::move(*shared), s); })) {
      FinishCall(counters_, std::move(*shared), absl::CancelledError("transport shut down"));
    }
    return;
  }
  if (!calls_.Add(id, &call)) {
    auto shared = std::make_shared<PendingCall>(std::move(call));
    const absl::Status full = absl::ResourceExhaustedError(
        absl::StrCat("too many data-plane calls in flight (", options_.max_calls_in_flight, ")"));
    if (!Post([this, shared, full] { FinishCall(counters_, std::move(*shared), full); })) {
      FinishCall(counters_, std::move(*shared), absl::CancelledError("transport shut down"));
    }
    return;
  }
  // Sealed here, on the caller's thread, so the progress thread only sends.
  absl::StatusOr<std::vector<uint8_t>> am_header = FrameBytes(request.header, request.payload);
  if (!am_header.ok()) {
    PendingCall taken;
    if (calls_.Take(id, &taken) == CallTable::Lookup::kFound) {
      auto shared = std::make_shared<PendingCall>(std::move(taken));
      const absl::Status failed = am_header.status();
      if (!Post([this, shared, failed] { FinishCall(counters_, std::move(*shared), failed); })) {
        FinishCall(counters_, std::move(*shared), absl::CancelledError("transport shut down"));
      }
    }
    return;
  }
  auto shared_payload = std::make_shared<MessageBuffer>(std::move(request.payload));
  if (!Post([this, address = std::string(peer_address), id, header = *std::move(am_header),
             shared_payload]() mutable {
        StartCall(address, id, std::move(header), std::move(*shared_payload));
      })) {
    PendingCall taken;
    if (calls_.Take(id, &taken) == CallTable::Lookup::kFound) {
      FinishCall(counters_, std::move(taken), absl::CancelledError("transport shut down"));
    }
  }
}

absl::StatusOr<std::vector<uint8_t>> UcxCore::FrameBytes(FrameHeader header,
                                                         MessageBuffer& payload,
                                                         std::optional<uint64_t> key_id) {
  const bool sealing = sealer_.sealing();
  header.flags = sealing ? kFrameFlagSealed : 0;
  const EncodedHeader encoded = EncodeHeader(header);
  std::vector<uint8_t> bytes(encoded.begin(), encoded.end());
  if (header.type == FrameType::kDispatch) bytes.insert(bytes.end(), address_.begin(), address_.end());
  if (sealing) {
    absl::StatusOr<Seal> seal = sealer_.SealFrame(bytes, payload.span(), key_id);
    if (!seal.ok()) return seal.status();
    bytes.insert(bytes.end(), seal->begin(), seal->end());
  }
  return bytes;
}

void UcxCore::StartCall(const std::string& address, uint64_t id, std::vector<uint8_t> am_header,
                        MessageBuffer payload) {
  absl::StatusOr<std::shared_ptr<Connection>> connection = Dial(address);
  if (!connection.ok()) {
    PendingCall call;
    if (calls_.Take(id, &call) == CallTable::Lookup::kFound) {
      FinishCall(counters_, std::move(call), std::move(connection).status());
    }
    return;
  }
  if (!calls_.Bind(id, (*connection)->key)) return;  // Ended already (deadline).
  StartSend(*std::move(connection), std::move(am_header), std::move(payload), id);
}

void UcxCore::SendReply(ReplyRoute route, Message reply) {
  reply.header.sender = options_.id;
  if (reply.header.type == FrameType::kError) counters_.Add(counters_.error_replies_sent);
  absl::StatusOr<std::vector<uint8_t>> am_header =
      FrameBytes(reply.header, reply.payload, route.key_id);
  if (!am_header.ok()) {
    counters_.Add(counters_.responses_dropped);
    return;
  }
  auto shared_payload = std::make_shared<MessageBuffer>(std::move(reply.payload));
  if (!Post([this, route = std::move(route), header = *std::move(am_header),
             shared_payload]() mutable {
        // Connections to callers' addresses are made (and cached) here,
        // outside any UCX callback.
        absl::StatusOr<std::shared_ptr<Connection>> connection = Dial(route.address);
        if (!connection.ok()) {
          DSV2_LOG(DEBUG) << "data plane: cannot answer " << route.address.substr(0, 40)
                          << "...: " << connection.status();
          counters_.Add(counters_.responses_dropped);
          return;
        }
        if ((*connection)->failed) {
          counters_.Add(counters_.responses_dropped);
          return;
        }
        StartSend(*std::move(connection), std::move(header), std::move(*shared_payload), 0);
      })) {
    counters_.Add(counters_.responses_dropped);
  }
}

void UcxCore::StartSend(std::shared_ptr<Connection> connection, std::vector<uint8_t> header,
                        MessageBuffer payload, uint64_t call_id) {
  auto* op = new SendOp{this,
                        std::move(connection),
                        std::move(header),
                        std::move(payload),
                        call_id,
                        absl::Now() + options_.send_timeout,
                        false};
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &UcxCore::OnSendDone;
  param.user_data = op;
  if (ucp_mem_h memh = PoolHandleFor(op->payload)) {
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    param.memh = memh;
  }
  // Track the op before posting: UCX may complete it (and our callback free
  // it) inside ucp_am_send_nbx, e.g. when the endpoint has already failed.
  sends_.insert(op);
  send_deadlines_.emplace(op->deadline, op);
  ucs_status_ptr_t request =
      ucp_am_send_nbx(op->connection->ep, kUcxFrameAmId, op->header.data(), op->header.size(),
                      op->payload.data(), op->payload.size(), &param);
  // Only when it returns no request does the callback not run: finish here.
  if (request == nullptr) {
    SendDone(op, UCS_OK);
  } else if (UCS_PTR_IS_ERR(request)) {
    SendDone(op, UCS_PTR_STATUS(request));
  }
}

void UcxCore::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  ucp_request_free(request);
  SendOp* op = static_cast<SendOp*>(user_data);
  op->core->SendDone(op, status);
}

void UcxCore::SendDone(SendOp* op, ucs_status_t status) {
  sends_.erase(op);
  if (!op->timed_out) send_deadlines_.erase({op->deadline, op});
  if (status == UCS_OK) {
    counters_.Add(counters_.messages_sent);
    counters_.Add(counters_.bytes_sent, kFrameHeaderSize + op->payload.size());
  } else if (op->call_id != 0) {
    // The connection's failure (if that is the cause) ends the call too;
    // whichever comes first wins.
    PendingCall call;
    if (calls_.Take(op->call_id, &call) == CallTable::Lookup::kFound) {
      FinishCall(counters_, std::move(call),
                 absl::UnavailableError(absl::StrCat("send to ", op->connection->name,
                                                     " failed: ", ucs_status_string(status))));
    }
  } else {
    counters_.Add(counters_.responses_dropped);
  }
  delete op;
}

absl::Status UcxCore::SendRaw(std::string_view peer_address, absl::Span<const uint8_t> header,
                              absl::Span<const uint8_t> payload) {
  auto done = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> future = done->get_future();
  std::vector<uint8_t> header_bytes(header.begin(), header.end());
  auto buffer = std::make_shared<MessageBuffer>(MessageBuffer::Copy(payload));
  if (!Post([this, address = std::string(peer_address), header_bytes, buffer, done]() mutable {
        absl::StatusOr<std::shared_ptr<Connection>> connection = Dial(address);
        if (!connection.ok()) {
          done->set_value(connection.status());
          return;
        }
        // Laid out as Call lays it out: a request (the type byte says
        // dispatch) carries our reply address right after the 64-byte
        // header, before anything else the caller put there (a seal).
        const bool request = header_bytes.size() > 6 &&
                             header_bytes[6] == static_cast<uint8_t>(FrameType::kDispatch);
        if (request) {
          header_bytes.insert(header_bytes.begin() + std::min(header_bytes.size(), kFrameHeaderSize),
                              address_.begin(), address_.end());
        }
        StartSend(*connection, std::move(header_bytes), std::move(*buffer), 0);
        done->set_value(absl::OkStatus());
      })) {
    return absl::CancelledError("transport shut down");
  }
  if (future.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    return absl::DeadlineExceededError("progress thread did not answer");
  }
  return future.get();
}

// ---------------------------------------------------------------------------
// Receiving

ucs_status_t UcxCore::OnAm(void* arg, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t* param) {
  return static_cast<UcxCore*>(arg)->ReceiveAm(header, header_length, data, length, param);
}

ucs_status_t UcxCore::ReceiveAm(const void* header, size_t header_length, void* data, size_t length,
                                const ucp_am_recv_param_t* param) {
  // Returning UCS_OK for a rendezvous message we do not start receiving
  // drops it (the sender's send completes).
  const auto* bytes = static_cast<const uint8_t*>(header);
  absl::StatusOr<FrameHeader> decoded =
      DecodeHeader(absl::MakeConstSpan(bytes, std::min(header_length, kFrameHeaderSize)));
  std::string problem;
  if (!decoded.ok()) {
    problem = std::string(decoded.status().message());
  } else if (decoded->payload_length != length) {
    problem = absl::StrCat("payload is ", length, " bytes, header says ", decoded->payload_length);
  } else if (decoded->payload_length > options_.max_payload_bytes) {
    problem = absl::StrCat("payload of ", length, " bytes is over the limit");
  }
  // After the frame header: a request's reply address (where its answer
  // goes), then the seal of a sealed frame. Replies carry no address.
  const bool sealed = decoded.ok() && (decoded->flags & kFrameFlagSealed) != 0;
  const size_t seal_bytes = sealed ? kSealBytes : 0;
  ReplyRoute reply_to;
  if (problem.empty() && header_length < kFrameHeaderSize + seal_bytes) {
    problem = "the frame's seal is cut short";
  } else if (problem.empty() && decoded->type == FrameType::kDispatch) {
    reply_to.address.assign(reinterpret_cast<const char*>(bytes) + kFrameHeaderSize,
                            reinterpret_cast<const char*>(bytes) + header_length - seal_bytes);
    if (!IsAddress(reply_to.address)) {
      problem = "request without a usable reply address";
    }
  } else if (problem.empty() && header_length != kFrameHeaderSize + seal_bytes) {
    problem = "unexpected bytes after the frame header";
  }
  if (!problem.empty()) {
    counters_.Add(counters_.malformed_dropped);
    DSV2_LOG(DEBUG) << "data plane: dropped a malformed frame: " << problem;
    return UCS_OK;
  }
  // With keys, only sealed frames; without, only plain ones (a sealed frame
  // cannot be opened).
  if (sealed != sealer_.sealing()) {
    DropUnauthenticated(sealed ? "a sealed frame, and this transport has no key"
                               : "an unsealed frame, and this transport requires seals");
    return UCS_OK;
  }
  if (decoded->type == FrameType::kDispatch) {
    if (!dispatcher_.Admit(*decoded, reply_to.address)) return UCS_OK;
  } else {
    switch (calls_.Peek(decoded->request_id)) {
      case CallTable::Lookup::kFound:
        break;
      case CallTable::Lookup::kLate:
        counters_.Add(counters_.late_replies_dropped);
        return UCS_OK;
      case CallTable::Lookup::kUnknown:
        counters_.Add(counters_.unexpected_dropped);
        return UCS_OK;
    }
  }
  std::optional<Seal> seal;
  std::vector<uint8_t> aad;
  if (sealed) {
    seal.emplace();
    std::memcpy(seal->data(), bytes + header_length - kSealBytes, kSealBytes);
    aad.assign(bytes, bytes + header_length - kSealBytes);
    reply_to.key_id = FrameSealer::KeyIdOf(*seal);
  }
  if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
    auto* op = new RecvOp{this,
                          *decoded,
                          data,
                          length,
                          std::move(reply_to),
                          MessageBuffer(),
                          absl::InfiniteFuture(),
                          false,
                          std::move(seal),
                          std::move(aad)};
    deferred_.push_back(op);
    return UCS_INPROGRESS;
  }
  MessageBuffer buffer = pool_->Allocate(length);
  if (length > 0) std::memcpy(buffer.data(), data, length);
  if (seal) {
    if (absl::Status opened = sealer_.OpenFrame(*seal, aad, buffer.span()); !opened.ok()) {
      DropUnauthenticated(std::string(opened.message()));
      return UCS_OK;
    }
  }
  Deliver(Message{*decoded, std::move(buffer)}, std::move(reply_to));
  return UCS_OK;
}

void UcxCore::DropUnauthenticated(const std::string& why) {
  counters_.Add(counters_.unauthenticated_dropped);
  DSV2_LOG(DEBUG) << "data plane: dropped " << why;
}

void UcxCore::StartDeferredReceives() {
  std::vector<RecvOp*> deferred;
  deferred.swap(deferred_);
  for (RecvOp* op : deferred) {
    op->buffer = pool_->Allocate(op->length);
    op->deadline = absl::Now() + options_.receive_timeout;
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.recv_am = &UcxCore::OnReceiveDone;
    param.user_data = op;
    if (ucp_mem_h memh = PoolHandleFor(op->buffer)) {
      param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
      param.memh = memh;
    }
    // Tracked before posting, as in StartSend: the callback may run inside.
    receives_.insert(op);
    receive_deadlines_.emplace(op->deadline, op);
    ucs_status_ptr_t request =
        ucp_am_recv_data_nbx(worker_, op->descriptor, op->buffer.data(), op->length, &param);
    if (request == nullptr) {
      ReceiveDone(op, UCS_OK);
    } else if (UCS_PTR_IS_ERR(request)) {
      ReceiveDone(op, UCS_PTR_STATUS(request));
    }
  }
}

void UcxCore::OnReceiveDone(void* request, ucs_status_t status, size_t, void* user_data) {
  ucp_request_free(request);
  RecvOp* op = static_cast<RecvOp*>(user_data);
  op->core->ReceiveDone(op, status);
}

void UcxCore::ReceiveDone(RecvOp* op, ucs_status_t status) {
  receives_.erase(op);
  if (!op->abandoned) receive_deadlines_.erase({op->deadline, op});
  if (status == UCS_OK && !op->abandoned) {
    absl::Status opened =
        op->seal ? sealer_.OpenFrame(*op->seal, op->aad, op->buffer.span()) : absl::OkStatus();
    if (opened.ok()) {
      Deliver(Message{op->header, std::move(op->buffer)}, std::move(op->reply_to));
    } else {
      DropUnauthenticated(std::string(opened.message()));
    }
  } else if (status != UCS_OK) {
    DSV2_LOG(DEBUG) << "data plane: a rendezvous receive failed: " << ucs_status_string(status);
  }
  delete op;
}

void UcxCore::Deliver(Message message, ReplyRoute reply_to) {
  counters_.Add(counters_.messages_received);
  counters_.Add(counters_.bytes_received, kFrameHeaderSize + message.payload.size());
  if (message.header.type == FrameType::kDispatch) {
    dispatcher_.Dispatch(std::move(message),
                         std::make_shared<UcxSink>(weak_from_this(), std::move(reply_to), pool_));
  } else {
    DeliverReply(counters_, calls_, std::move(message));
  }
}

}  // namespace internal

template class internal::CoreTransport<internal::UcxCore>;

// ---------------------------------------------------------------------------
// UcxTransport

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(UcxTransportOptions options) {
  auto core = std::make_shared<internal::UcxCore>(std::move(options));
  if (absl::Status s = core->Start(); !s.ok()) return s;
  return std::unique_ptr<UcxTransport>(new UcxTransport(std::move(core)));
}

absl::StatusOr<std::string> UcxTransport::DescribeConnection(std::string_view peer_address) {
  return core_->DescribeConnection(peer_address);
}
void UcxTransport::SetFrameKeys(std::vector<FrameKey> keys, absl::Duration hold_second) {
  core_->sealer().SetKeys(std::move(keys), hold_second);
}

absl::Status UcxTransport::SendRawForTesting(std::string_view peer_address,
                                             absl::Span<const uint8_t> header,
                                             absl::Span<const uint8_t> payload) {
  return core_->SendRaw(peer_address, header, payload);
}

}  // namespace dsv2::transport
