#include "server/http/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/logging.h"
#include "common/base/mutex.h"

namespace dsv2 {
namespace {

using Clock = std::chrono::steady_clock;

// A request head (request line and headers) longer than this is refused.
constexpr size_t kMaxHeadBytes = 64 << 10;

// Set by Threads::enqueue on the accepting thread while it runs a
// connection no thread is free for: the connection is refused at once.
thread_local bool t_refuse = false;

int RemainingMs(Clock::time_point deadline) {
  const auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return 0;
  // Rounded up, so that a wait never ends just before its deadline.
  return static_cast<int>(
      std::min<int64_t>(std::chrono::ceil<std::chrono::milliseconds>(left).count(), 1 << 30));
}

Clock::time_point After(absl::Duration d) { return Clock::now() + absl::ToChronoNanoseconds(d); }

std::string ReasonPhrase(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
  }
  return "Error";
}

int HttpStatusOfAuthentication(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

// A literal path as cpp-httplib's (ECMAScript) route regex.
std::string LiteralPattern(const std::string& path) {
  std::string out;
  for (char c : path) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '/' && c != '_' && c != '-') {
      out += '\\';
    }
    out += c;
  }
  return out;
}

// Splits "host:port" / "[v6]:port".
absl::Status SplitHostPort(const std::string& listen, std::string* host, int* port) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "' is not host:port"));
  }
  *host = listen.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  if (!absl::SimpleAtoi(listen.substr(colon + 1), port) || *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "' has no valid port"));
  }
  return absl::OkStatus();
}

int SelectHttp11(SSL*, const unsigned char** out, unsigned char* out_length,
                 const unsigned char* in, unsigned int in_length, void*) {
  // Offered protocols are length-prefixed strings.
  for (unsigned int i = 0; i < in_length;) {
    const unsigned int length = in[i];
    if (i + 1 + length > in_length) break;
    if (length == 8 && std::memcmp(in + i + 1, "http/1.1", 8) == 0) {
      *out = in + i + 1;
      *out_length = static_cast<unsigned char>(length);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + length;
  }
  return SSL_TLSEXT_ERR_NOACK;  // Proceed without ALPN (the client may give up on h2).
}

}  // namespace

// ---------------------------------------------------------------------------
// TLS: an SSL_CTX from the files, rebuilt when they change.

namespace http_internal {

class TlsContext {
 public:
  static absl::StatusOr<std::unique_ptr<TlsContext>> Create(const TlsFiles& files) {
    auto context = std::unique_ptr<TlsContext>(new TlsContext(files));
    absl::StatusOr<std::shared_ptr<SSL_CTX>> built = Build(files);
    if (!built.ok()) return built.status();
    MutexLock lock(&context->mutex_);
    context->ctx_ = *std::move(built);
    context->stamp_ = context->Stamp();
    context->next_check_ = absl::Now() + files.reload_interval;
    return context;
  }

  // The current context, rebuilt first if a file changed (checked at most
  // every reload_interval); a change that does not load keeps the old one.
  std::shared_ptr<SSL_CTX> Get() {
    MutexLock lock(&mutex_);
    if (absl::Now() >= next_check_) {
      next_check_ = absl::Now() + files_.reload_interval;
      const std::string stamp = Stamp();
      if (stamp != stamp_) {
        absl::StatusOr<std::shared_ptr<SSL_CTX>> built = Build(files_);
        if (built.ok()) {
          ctx_ = *std::move(built);
          stamp_ = stamp;
          DSV2_LOG(INFO) << "HTTP API: TLS certificate files reloaded";
        } else {
          DSV2_LOG(WARNING) << "HTTP API: TLS files changed but were not reloaded: "
                            << built.status().message();
        }
      }
    }
    return ctx_;
  }

 private:
  explicit TlsContext(TlsFiles files) : files_(std::move(files)) {}

  static absl::StatusOr<std::shared_ptr<SSL_CTX>> Build(const TlsFiles& files) {
    ERR_clear_error();
    std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
    if (ctx == nullptr) return absl::InternalError("SSL_CTX_new: " + OpenSslError());
    SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ctx.get(), SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), files.cert.c_str()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("certificate ", files.cert, ": ", OpenSslError()));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), files.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx.get()) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("private key ", files.key, ": ", OpenSslError()));
    }
    if (!files.ca.empty()) {
      if (SSL_CTX_load_verify_locations(ctx.get(), files.ca.c_str(), nullptr) != 1) {
        return absl::InvalidArgumentError(absl::StrCat("CA ", files.ca, ": ", OpenSslError()));
      }
      if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.ca.c_str())) {
        SSL_CTX_set_client_CA_list(ctx.get(), names);
      }
      // Asked for, verified if sent, not required: tokens may authenticate
      // instead (AccessPolicy::Public).
      SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
      static const unsigned char kSessionContext[] = "dsv2-http";
      SSL_CTX_set_session_id_context(ctx.get(), kSessionContext, sizeof(kSessionContext) - 1);
    }
    SSL_CTX_set_alpn_select_cb(ctx.get(), SelectHttp11, nullptr);
    ERR_clear_error();
    return ctx;
  }

  // Identity, size and modification time of every file.
  std::string Stamp() const {
    std::string stamp;
    for (const std::string* path : {&files_.cert, &files_.key, &files_.ca}) {
      struct stat st{};
      if (path->empty() || ::stat(path->c_str(), &st) != 0) {
        absl::StrAppend(&stamp, "-;");
        continue;
      }
      absl::StrAppend(&stamp, st.st_ino, ",", st.st_size, ",", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec, ";");
    }
    return stamp;
  }

  const TlsFiles files_;
  Mutex mutex_;
  std::shared_ptr<SSL_CTX> ctx_ ABSL_GUARDED_BY(mutex_);
  std::string stamp_ ABSL_GUARDED_BY(mutex_);
  absl::Time next_check_ ABSL_GUARDED_BY(mutex_);
};

// ---------------------------------------------------------------------------
// The server: cpp-httplib with this file's connection loop.

class Connection;

class ServerImpl final : public httplib::Server {
 public:
  struct RouteEntry {
    bool authenticated = false;
    HttpServer::Handler handler;
  };

  explicit ServerImpl(const HttpServerOptions& options) : options(options) {
    stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }
  ~ServerImpl() override {
    if (stop_fd >= 0) close(stop_fd);
  }

  // Listens with a backlog that takes a burst of clients (cpp-httplib 0.11
  // was built with 5).
  void WidenBacklog() { ::listen(svr_sock_, SOMAXCONN); }

  void SignalStop() {
    stopping = true;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd, &one, sizeof(one));
  }

  const RouteEntry* FindRoute(const std::string& method, const std::string& path) const {
    const auto it = routes.find(method + " " + path);
    return it == routes.end() ? nullptr : &it->second;
  }

  void FillError(int status, const std::string& message, httplib::Response& response) const {
    response.status = status;
    if (error_body) {
      error_body(status, message, response);
    } else {
      response.set_content(message + "\n", "text/plain");
    }
  }

  const HttpServerOptions& options;
  std::unique_ptr<TlsContext> tls;
  int stop_fd = -1;
  std::atomic<bool> stopping{false};
  std::map<std::string, RouteEntry> routes;  // "METHOD /path"
  HttpServer::Authenticate authenticate;
  HttpServer::ErrorBody error_body;

  std::atomic<int64_t> connections{0};
  std::atomic<int64_t> open{0};
  std::atomic<int64_t> refused_busy{0};
  std::atomic<int64_t> read_timeouts{0};
  std::atomic<int64_t> tls_failures{0};
  std::atomic<int64_t> threads{0};

 private:
  bool process_and_close_socket(socket_t sock) override;
  void RefuseBusy(int fd);
};

// One connection: the byte stream cpp-httplib reads requests from and
// writes responses to (plaintext or TLS, non-blocking, every wait bounded),
// and what its handlers may ask of it.
class Connection final : public httplib::Stream, public ClientConnection {
 public:
  Connection(ServerImpl& server, int fd) : server_(server), fd_(fd) {
    fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
    fcntl(fd_, F_SETFD, FD_CLOEXEC);
    const int yes = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));  // SSE events go out at once.
  }
  ~Connection() override {
    if (ssl_ != nullptr) {
      ERR_clear_error();
      SSL_shutdown(ssl_);  // Best effort: one non-blocking close_notify.
      SSL_free(ssl_);
      ERR_clear_error();
    }
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
  }

  // The TLS handshake, within the read timeout.
  bool Handshake(SSL_CTX* ctx) {
    ERR_clear_error();
    ssl_ = SSL_new(ctx);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) return false;
    const Clock::time_point deadline = After(server_.options.read_timeout);
    while (true) {
      ERR_clear_error();
      const int r = SSL_accept(ssl_);
      if (r == 1) break;
      const int error = SSL_get_error(ssl_, r);
      short events = 0;
      if (error == SSL_ERROR_WANT_READ) {
        events = POLLIN;
      } else if (error == SSL_ERROR_WANT_WRITE) {
        events = POLLOUT;
      } else {
        ERR_clear_error();
        return false;
      }
      if (WaitIo(events, deadline) != Io::kReady) return false;
    }
    X509* peer = SSL_get1_peer_certificate(ssl_);
    if (peer != nullptr && SSL_get_verify_result(ssl_) == X509_V_OK) {
      if (std::optional<std::string> name = CertificatePrincipalName(peer)) {
        certificate_ = ClientCertificate{*name, CertificatePem(peer)};
      }
    }
    if (peer != nullptr) X509_free(peer);
    return true;
  }

  // Waits for the first byte of the next request (or bytes already here).
  bool WaitForRequest(absl::Duration idle) {
    if (Buffered()) return true;
    return WaitIo(POLLIN, After(idle)) == Io::kReady;
  }

  // A new request: its head and body must arrive by now + read_timeout.
  void BeginRequest() {
    read_deadline_ = After(server_.options.read_timeout);
    request_bytes_ = 0;
    budget_ = kMaxHeadBytes;
    timed_out_ = over_budget_ = close_after_ = routed_ = gated_ = bad_length_ = false;
    content_length_ = 0;
    principal_.clear();
  }

  // The head has been read (cpp-httplib's setup_request): the body may be
  // as large as the server allows, and a request that declares no body has
  // none (cpp-httplib 0.11 would read one to EOF).
  void HeadDone(httplib::Request& request) {
    budget_ = request_bytes_ + 2 * server_.options.max_body_bytes + (64 << 10);
    const bool chunked = request.has_header("Transfer-Encoding");
    if (request.has_header("Content-Length")) {
      const std::string value = request.get_header_value("Content-Length");
      uint64_t length = 0;
      if (chunked || request.get_header_value_count("Content-Length") != 1 ||
          value.empty() || !absl::SimpleAtoi(value, &length) ||
          !std::all_of(value.begin(), value.end(), absl::ascii_isdigit)) {
        bad_length_ = true;
      }
      content_length_ = length;
    } else if (chunked) {
      if (!absl::EqualsIgnoreCase(request.get_header_value("Transfer-Encoding"), "chunked")) {
        bad_length_ = true;
      }
    } else {
      request.set_header("Content-Length", "0");
    }
    declares_body_ = chunked || content_length_ > 0;
  }

  // -- httplib::Stream
  bool is_readable() const override {
    if (Buffered()) return true;
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }
  bool is_writable() const override {
    return const_cast<Connection*>(this)->WaitIo(POLLOUT, After(server_.options.write_timeout)) ==
           Io::kReady;
  }
  ssize_t read(char* ptr, size_t size) override {
    if (pos_ == len_ && !Fill()) return -1;
    if (pos_ == len_) return 0;  // End of stream.
    const size_t n = std::min(size, len_ - pos_);
    std::memcpy(ptr, buffer_ + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (size == 0) return 0;
    const Clock::time_point deadline = After(server_.options.write_timeout);
    while (true) {
      short events = POLLOUT;
      if (ssl_ != nullptr) {
        ERR_clear_error();
        const int r = SSL_write(ssl_, ptr, static_cast<int>(std::min<size_t>(size, 1 << 30)));
        if (r > 0) return r;
        const int error = SSL_get_error(ssl_, r);
        if (error == SSL_ERROR_WANT_READ) {
          events = POLLIN;
        } else if (error != SSL_ERROR_WANT_WRITE) {
          ERR_clear_error();
          return -1;
        }
      } else {
        const ssize_t n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
      }
      if (WaitIo(events, deadline) != Io::kReady) return -1;
    }
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    Address(/*peer=*/true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    Address(/*peer=*/false, ip, port);
  }
  // cpp-httplib 0.11 asks only to refuse descriptors its select() cannot
  // watch; this stream uses poll().
  socket_t socket() const override { return fd_; }

  // -- ClientConnection
  Wake WaitReadable(int fd, absl::Time deadline) override {
    while (true) {
      pollfd fds[3] = {{fd, POLLIN, 0}, {fd_, POLLRDHUP, 0}, {server_.stop_fd, POLLIN, 0}};
      const absl::Duration left = deadline - absl::Now();
      const int timeout_ms =
          deadline == absl::InfiniteFuture()
              ? -1
              : static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(
                                                         left, absl::Milliseconds(1))),
                                                     0, 1 << 30));
      const int n = ::poll(fds, 3, timeout_ms);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Wake::kClientGone;
      if (fds[2].revents != 0 || (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
        return Wake::kClientGone;
      }
      if (fds[0].revents != 0) return Wake::kReady;
      if (absl::Now() >= deadline) return Wake::kTimeout;
    }
  }
  bool Gone() override {
    if (server_.stopping) return true;
    pollfd p{fd_, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }
  const std::optional<ClientCertificate>& certificate() const override { return certificate_; }
  std::string peer() const override {
    std::string ip;
    int port = 0;
    Address(/*peer=*/true, ip, port);
    return absl::StrCat(ip, ":", port);
  }

  // Per request.
  bool timed_out() const { return timed_out_; }
  bool over_budget() const { return over_budget_; }
  bool close_after() const { return close_after_; }
  // Closes the connection once `response` is written, and tells the client.
  void CloseAfterResponse(httplib::Response& response) {
    close_after_ = true;
    response.set_header("Connection", "close");
  }
  bool declares_body() const { return declares_body_; }
  bool bad_length() const { return bad_length_; }
  uint64_t content_length() const { return content_length_; }
  bool routed() const { return routed_; }
  void set_routed() { routed_ = true; }
  bool gated() const { return gated_; }
  void set_gated() { gated_ = true; }
  const std::string& principal() const { return principal_; }
  void set_principal(std::string principal) { principal_ = std::move(principal); }

 private:
  enum class Io { kReady, kTimeout, kStopped };

  bool Buffered() const { return pos_ < len_ || (ssl_ != nullptr && SSL_pending(ssl_) > 0); }

  // Waits until the socket is ready for `events`, the deadline passes or
  // the server stops.
  Io WaitIo(short events, Clock::time_point deadline) {
    while (true) {
      pollfd fds[2] = {{fd_, events, 0}, {server_.stop_fd, POLLIN, 0}};
      const int n = ::poll(fds, 2, RemainingMs(deadline));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || fds[1].revents != 0) return Io::kStopped;
      if (fds[0].revents != 0) return Io::kReady;  // Errors show in the next call.
      if (Clock::now() >= deadline) return Io::kTimeout;
    }
  }

  // Reads more bytes of the current request into the buffer; false on an
  // error, a timeout or too many bytes; true with an empty buffer at the end
  // of the stream.
  bool Fill() {
    pos_ = len_ = 0;
    if (request_bytes_ >= budget_) {
      over_budget_ = true;
      return false;
    }
    const size_t want = std::min(sizeof(buffer_), budget_ - request_bytes_);
    while (true) {
      short events = POLLIN;
      if (ssl_ != nullptr) {
        ERR_clear_error();
        const int r = SSL_read(ssl_, buffer_, static_cast<int>(want));
        if (r > 0) {
          len_ = static_cast<size_t>(r);
          break;
        }
        const int error = SSL_get_error(ssl_, r);
        if (error == SSL_ERROR_ZERO_RETURN) return true;
        if (error == SSL_ERROR_WANT_WRITE) {
          events = POLLOUT;
        } else if (error != SSL_ERROR_WANT_READ) {
          ERR_clear_error();
          return false;
        }
      } else {
        const ssize_t n = ::recv(fd_, buffer_, want, 0);
        if (n > 0) {
          len_ = static_cast<size_t>(n);
          break;
        }
        if (n == 0) return true;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
      }
      const Io io = WaitIo(events, read_deadline_);
      if (io == Io::kTimeout) timed_out_ = true;
      if (io != Io::kReady) return false;
    }
    request_bytes_ += len_;
    return true;
  }

  void Address(bool peer, std::string& ip, int& port) const {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    auto* raw = reinterpret_cast<sockaddr*>(&address);
    if ((peer ? getpeername(fd_, raw, &length) : getsockname(fd_, raw, &length)) != 0) return;
    char text[INET6_ADDRSTRLEN] = {};
    if (address.ss_family == AF_INET) {
      const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
      inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
      port = ntohs(v4->sin_port);
    } else if (address.ss_family == AF_INET6) {
      const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
      inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
      port = ntohs(v6->sin6_port);
    }
    ip = text;
  }

  ServerImpl& server_;
  const int fd_;
  SSL* ssl_ = nullptr;
  std::optional<ClientCertificate> certificate_;
  char buffer_[16 << 10];
  size_t pos_ = 0;
  size_t len_ = 0;
  Clock::time_point read_deadline_;
  size_t request_bytes_ = 0;
  size_t budget_ = kMaxHeadBytes;
  bool timed_out_ = false;
  bool over_budget_ = false;
  bool close_after_ = false;
  bool routed_ = false;
  bool gated_ = false;
  bool bad_length_ = false;
  bool declares_body_ = false;
  uint64_t content_length_ = 0;
  std::string principal_;
};

// The connection whose request this thread is serving (set by the
// connection loop), for the callbacks cpp-httplib gives only the request.
thread_local Connection* t_connection = nullptr;

// Connection threads: started on demand up to max_connections, kept for
// later connections. A connection that finds none free is refused by the
// accepting thread itself (t_refuse), so nothing ever waits in a queue.
class Threads final : public httplib::TaskQueue {
 public:
  Threads(ServerImpl& server, int max) : server_(server), max_(static_cast<size_t>(max)) {}
  ~Threads() override = default;

  void enqueue(std::function<void()> job) override {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!shutdown_ && (idle_ > 0 || threads_.size() < max_)) {
        if (idle_ > 0) {
          --idle_;
        } else {
          threads_.emplace_back([this] { Run(); });
          ++server_.threads;
        }
        jobs_.push_back(std::move(job));
        wake_.notify_one();
        return;
      }
    }
    t_refuse = true;
    job();
    t_refuse = false;
  }

  void shutdown() override {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      shutdown_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      wake_.wait(lock, [this] { return !jobs_.empty() || shutdown_; });
      if (jobs_.empty()) return;
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
      ++idle_;
    }
  }

  ServerImpl& server_;
  const size_t max_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;  // Threads waiting that no job is promised to.
  bool shutdown_ = false;
};

void ServerImpl::RefuseBusy(int fd) {
  ++refused_busy;
  if (!tls) {
    httplib::Response response;
    FillError(503, absl::StrCat("the server has ", options.max_connections,
                                " connections open, its most; retry later"),
              response);
    std::string out = absl::StrCat("HTTP/1.1 503 Service Unavailable\r\nContent-Type: ",
                                   response.get_header_value("Content-Type"),
                                   "\r\nContent-Length: ", response.body.size(),
                                   "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n", response.body);
    // The request may have arrived: read what is there, so that closing
    // does not reset the connection before the answer is read.
    char discard[4096];
    for (int i = 0; i < 16 && ::recv(fd, discard, sizeof(discard), MSG_DONTWAIT) > 0; ++i) {
    }
    [[maybe_unused]] ssize_t n = ::send(fd, out.data(), out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
  }
  ::close(fd);
}

bool ServerImpl::process_and_close_socket(socket_t sock) {
  if (t_refuse || stopping) {
    RefuseBusy(sock);
    return true;
  }
  ++connections;
  ++open;
  {
    Connection connection(*this, sock);
    bool ready = true;
    if (tls) {
      std::shared_ptr<SSL_CTX> ctx = tls->Get();
      ready = connection.Handshake(ctx.get());
      if (!ready) ++tls_failures;
    }
    t_connection = &connection;
    for (int left = options.max_requests_per_connection; ready && left > 0 && !stopping; --left) {
      if (!connection.WaitForRequest(options.idle_timeout)) break;
      connection.BeginRequest();
      bool closed = false;
      const bool ok = process_request(connection, /*close_connection=*/left == 1, closed,
                                      [&connection](httplib::Request& request) {
                                        connection.HeadDone(request);
                                      });
      if (connection.timed_out()) ++read_timeouts;
      if (!ok || closed || connection.close_after()) break;
    }
    t_connection = nullptr;
  }
  --open;
  return true;
}

}  // namespace http_internal

using http_internal::Connection;
using http_internal::ServerImpl;
using http_internal::t_connection;
using http_internal::Threads;
using http_internal::TlsContext;

// ---------------------------------------------------------------------------

HttpServer::HttpServer(HttpServerOptions options)
    : options_(std::move(options)), impl_(std::make_unique<ServerImpl>(options_)) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Route(const std::string& method, const std::string& path, bool authenticated,
                       Handler handler) {
  impl_->routes[method + " " + path] = ServerImpl::RouteEntry{authenticated, std::move(handler)};
}

void HttpServer::SetAuthenticate(Authenticate authenticate) {
  impl_->authenticate = std::move(authenticate);
}

void HttpServer::SetErrorBody(ErrorBody error_body) { impl_->error_body = std::move(error_body); }

HttpServer::Stats HttpServer::stats() const {
  return Stats{.connections = impl_->connections.load(),
               .open = impl_->open.load(),
               .refused_busy = impl_->refused_busy.load(),
               .read_timeouts = impl_->read_timeouts.load(),
               .tls_failures = impl_->tls_failures.load(),
               .threads = impl_->threads.load()};
}

absl::Status HttpServer::Start() {
  if (started_) return absl::FailedPreconditionError("the HTTP server was started already");
  if (impl_->stop_fd < 0) return absl::InternalError("eventfd failed");
  if (options_.max_connections < 1) {
    return absl::InvalidArgumentError("max_connections must be >= 1");
  }
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(options_.listen, &host, &port); !s.ok()) return s;
  if (options_.tls) {
    absl::StatusOr<std::unique_ptr<TlsContext>> tls = TlsContext::Create(*options_.tls);
    if (!tls.ok()) return tls.status();
    impl_->tls = *std::move(tls);
  }
  ServerImpl& impl = *impl_;

  // Before the body is read: a declared body over the limit, a malformed
  // length, and authentication.
  auto gate = [&impl](const httplib::Request& request, httplib::Response& response) {
    Connection* connection = t_connection;
    if (connection == nullptr || connection->gated()) return false;
    connection->set_gated();
    if (connection->bad_length()) {
      connection->CloseAfterResponse(response);
      impl.FillError(400, "the request's Content-Length / Transfer-Encoding is malformed",
                     response);
      return true;
    }
    if (connection->content_length() > impl.options.max_body_bytes) {
      connection->CloseAfterResponse(response);
      impl.FillError(413,
                     absl::StrCat("the request body is ", connection->content_length(),
                                  " bytes; at most ", impl.options.max_body_bytes),
                     response);
      return true;
    }
    const ServerImpl::RouteEntry* route = impl.FindRoute(request.method, request.path);
    if (route == nullptr || !route->authenticated || !impl.authenticate) return false;
    absl::StatusOr<std::string> principal = impl.authenticate(request, *connection);
    if (!principal.ok()) {
      if (connection->declares_body()) connection->CloseAfterResponse(response);  // Left unread.
      const int status = HttpStatusOfAuthentication(principal.status().code());
      impl.FillError(status, std::string(principal.status().message()), response);
      if (status == 401) response.set_header("WWW-Authenticate", "Bearer");
      return true;
    }
    connection->set_principal(*std::move(principal));
    return false;
  };
  impl.set_pre_routing_handler([gate](const httplib::Request& request, httplib::Response& response) {
    return gate(request, response) ? httplib::Server::HandlerResponse::Handled
                                   : httplib::Server::HandlerResponse::Unhandled;
  });
  impl.set_expect_100_continue_handler(
      [gate](const httplib::Request& request, httplib::Response& response) {
        return gate(request, response) ? response.status : 100;
      });
  impl.set_error_handler(httplib::Server::HandlerWithResponse([&impl](
                                                                  const httplib::Request& request,
                                                                  httplib::Response& response) {
    Connection* connection = t_connection;
    if (connection != nullptr && connection->timed_out()) response.status = 408;
    // Close where bytes of the request may be left unread (a refused body)
    // or the stream is not HTTP.
    if (connection != nullptr &&
        ((!connection->routed() && connection->declares_body()) || response.status == 400 ||
         response.status == 408 || response.status == 413 || response.status == 414)) {
      connection->CloseAfterResponse(response);
    }
    if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message;
    switch (response.status) {
      case 400:
        message = connection != nullptr && connection->over_budget()
                      ? absl::StrCat("the request head is larger than ", kMaxHeadBytes, " bytes")
                      : "the request could not be parsed as HTTP/1.1";
        break;
      case 404: message = absl::StrCat("no such route: ", request.method, " ", request.path); break;
      case 405: message = absl::StrCat(request.method, " is not allowed on ", request.path); break;
      case 408:
        message = absl::StrCat("the request's head and body did not arrive within ",
                               absl::FormatDuration(impl.options.read_timeout));
        break;
      case 413:
        message = absl::StrCat("the request body is larger than ", impl.options.max_body_bytes,
                               " bytes");
        break;
      case 414: message = "the request URI is too long"; break;
      default: message = ReasonPhrase(response.status); break;
    }
    impl.FillError(response.status, message, response);
    return httplib::Server::HandlerResponse::Handled;
  }));
  impl.set_exception_handler(
      [&impl](const httplib::Request&, httplib::Response& response, std::exception_ptr error) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        DSV2_LOG(ERROR) << "HTTP handler failed: " << what;
        response.body.clear();
        impl.FillError(500, "internal error: " + what, response);
      });

  // Routes, and 405 for the other method on their paths.
  std::map<std::string, std::set<std::string>> methods;  // path -> methods
  for (const auto& [key, route] : impl.routes) {
    const size_t space = key.find(' ');
    methods[key.substr(space + 1)].insert(key.substr(0, space));
  }
  for (const auto& [path, allowed] : methods) {
    const std::string pattern = LiteralPattern(path);
    const std::string allow = absl::StrJoin(allowed, ", ");
    auto not_allowed = [allow](httplib::Response& response) {
      response.status = 405;
      response.set_header("Allow", allow);
    };
    auto dispatch = [&impl](const ServerImpl::RouteEntry& route, const httplib::Request& request,
                            std::string body, httplib::Response& response) {
      Connection* connection = t_connection;
      connection->set_routed();
      HttpRequest call{request, std::move(body), connection->principal(), *connection};
      route.handler(call, response);
    };
    if (allowed.contains("GET")) {
      const ServerImpl::RouteEntry* route = impl.FindRoute("GET", path);
      impl.Get(pattern, [route, dispatch](const httplib::Request& request,
                                          httplib::Response& response) {
        dispatch(*route, request, "", response);
      });
    } else {
      impl.Get(pattern, [not_allowed](const httplib::Request&, httplib::Response& response) {
        not_allowed(response);
      });
    }
    const ServerImpl::RouteEntry* post = allowed.contains("POST") ? impl.FindRoute("POST", path) : nullptr;
    impl.Post(pattern, [&impl, post, dispatch, not_allowed](const httplib::Request& request,
                                                             httplib::Response& response,
                                                             const httplib::ContentReader& reader) {
      Connection* connection = t_connection;
      if (post == nullptr) {
        connection->CloseAfterResponse(response);  // The body is left unread.
        not_allowed(response);
        return;
      }
      std::string body;
      bool too_large = false;
      const size_t limit = impl.options.max_body_bytes;
      const bool read = reader([&](const char* data, size_t length) {
        if (body.size() + length > limit) {
          too_large = true;
          return false;
        }
        body.append(data, length);
        return true;
      });
      if (!read) {
        connection->CloseAfterResponse(response);
        response.body.clear();
        if (too_large) {
          impl.FillError(413, absl::StrCat("the request body is larger than ", limit, " bytes"),
                         response);
        } else {
          response.status = connection->timed_out() ? 408 : 400;
        }
        return;
      }
      dispatch(*post, request, std::move(body), response);
    });
  }

  impl.set_socket_options([](socket_t socket) {
    // Not cpp-httplib's SO_REUSEPORT: no other process may bind our port.
    const int yes = 1;
    setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  impl.set_payload_max_length(options_.max_body_bytes);
  impl.set_keep_alive_max_count(static_cast<size_t>(options_.max_requests_per_connection));
  impl.set_keep_alive_timeout(std::max<time_t>(1, absl::ToInt64Seconds(options_.idle_timeout)));
  impl.new_task_queue = [&impl] { return new Threads(impl, impl.options.max_connections); };

  errno = 0;
  const int bound = port == 0 ? impl.bind_to_any_port(host)
                              : (impl.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.listen, " (HTTP)",
                                               errno != 0 ? ": " : "",
                                               errno != 0 ? std::strerror(errno) : ""));
  }
  impl.WidenBacklog();
  port_ = bound;
  started_ = true;
  listener_ = std::thread([this] {
    impl_->listen_after_bind();
    listening_done_ = true;
  });
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (!started_ || stopped_.exchange(true)) return;
  impl_->SignalStop();
  // cpp-httplib's stop() does nothing until its loop has started.
  while (!impl_->is_running() && !listening_done_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl_->stop();
  listener_.join();  // Its task queue joins every connection thread.
}

}  // namespace dsv2
