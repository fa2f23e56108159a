// Minimal leveled logging to standard error, and CHECK for conditions that
// can only fail through a programming error. Standard output is reserved for
// the data a command produces, so logs never go there.
//
//   DSV2_LOG(INFO) << "loaded " << n << " tensors";
//   DSV2_CHECK(ptr != nullptr) << "why it cannot be null";
#pragma once

#include <sstream>

namespace dsv2 {

enum class LogSeverity { kDebug, kInfo, kWarning, kError, kFatal };

// Messages below this severity are dropped. Default kInfo; the environment
// variable DSV2_LOG_LEVEL (debug, info, warning, error) overrides it.
void SetMinLogSeverity(LogSeverity severity);
LogSeverity MinLogSeverity();

class LogMessage {
 public:
  LogMessage(LogSeverity severity, const char* file, int line);
  ~LogMessage();  // Writes the line; aborts for kFatal.
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Swallows the stream of a disabled log statement.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace dsv2

#define DSV2_LOG_SEVERITY_DEBUG ::dsv2::LogSeverity::kDebug
#define DSV2_LOG_SEVERITY_INFO ::dsv2::LogSeverity::kInfo
#define DSV2_LOG_SEVERITY_WARNING ::dsv2::LogSeverity::kWarning
#define DSV2_LOG_SEVERITY_ERROR ::dsv2::LogSeverity::kError
#define DSV2_LOG_SEVERITY_FATAL ::dsv2::LogSeverity::kFatal

#define DSV2_LOG(level)                                            \
  (DSV2_LOG_SEVERITY_##level < ::dsv2::MinLogSeverity())           \
      ? (void)0                                                    \
      : ::dsv2::LogVoidify() &                                     \
            ::dsv2::LogMessage(DSV2_LOG_SEVERITY_##level, __FILE__, __LINE__).stream()

#define DSV2_CHECK(cond)                                                               \
  (cond) ? (void)0                                                                     \
         : ::dsv2::LogVoidify() &                                                      \
               ::dsv2::LogMessage(::dsv2::LogSeverity::kFatal, __FILE__, __LINE__).stream() \
                   << "Check failed: " #cond " "
