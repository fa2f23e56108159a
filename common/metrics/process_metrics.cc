#include "common/metrics/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "common/metrics/metrics_registry.h"

namespace dsv2 {
namespace {

std::string ReadAll(const char* path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

double Num(const std::string& text) { return std::strtod(text.c_str(), nullptr); }

// /proc/self/stat's fields after the command name (which may hold spaces
// and parentheses, so split after its last ')'): index 0 is field 3, state.
std::vector<std::string> StatFields() {
  const std::string stat = ReadAll("/proc/self/stat");
  const size_t close = stat.rfind(')');
  std::vector<std::string> fields;
  if (close == std::string::npos) return fields;
  std::istringstream rest(stat.substr(close + 1));
  std::string field;
  while (rest >> field) fields.push_back(field);
  return fields;
}

// Seconds since the epoch at boot (/proc/stat's btime), or -1.
double BootTime() {
  std::istringstream stat(ReadAll("/proc/stat"));
  std::string key;
  while (stat >> key) {
    if (key == "btime") {
      double value = -1;
      stat >> value;
      return value;
    }
    stat.ignore(1 << 20, '\n');
  }
  return -1;
}

int64_t CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int64_t n = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // Less the descriptor of the listing itself.
}

void Add(std::vector<prometheus::MetricFamily>* out, prometheus::MetricFamily family,
         double value) {
  AddSample(&family, value);
  out->push_back(std::move(family));
}

}  // namespace

void CollectProcessMetrics(std::vector<prometheus::MetricFamily>* out) {
  // Fields of proc(5), numbered from 1: 14 utime, 15 stime (clock ticks),
  // 20 num_threads, 22 starttime (ticks after boot), 23 vsize (bytes),
  // 24 rss (pages). Index = number - 3.
  const std::vector<std::string> f = StatFields();
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  if (f.size() > 21 && ticks > 0) {
    Add(out, CounterFamily("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
        (Num(f[11]) + Num(f[12])) / ticks);
    Add(out, GaugeFamily("process_threads", "Number of OS threads in the process."), Num(f[17]));
    Add(out, GaugeFamily("process_virtual_memory_bytes", "Virtual memory size in bytes."),
        Num(f[20]));
    Add(out, GaugeFamily("process_resident_memory_bytes", "Resident memory size in bytes."),
        Num(f[21]) * page);
    const double boot = BootTime();
    if (boot >= 0) {
      Add(out,
          GaugeFamily("process_start_time_seconds",
                      "Start time of the process since unix epoch in seconds."),
          boot + Num(f[19]) / ticks);
    }
  }
  if (const int64_t fds = CountOpenFds(); fds >= 0) {
    Add(out, GaugeFamily("process_open_fds", "Number of open file descriptors."),
        static_cast<double>(fds));
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    Add(out, GaugeFamily("process_max_fds", "Maximum number of open file descriptors."),
        static_cast<double>(limit.rlim_cur));
  }
}

}  // namespace dsv2
