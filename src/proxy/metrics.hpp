// The proxy's own Prometheus metrics (connredir-proxy --metrics; the names,
// types and labels are documented in docs/METRICS.md).
//
// Threading: the epoll loop is the only writer. Every value is a relaxed
// atomic that the loop updates with a plain load + store (one writer needs
// no read-modify-write, so on x86 an update is an ordinary add and mov, no
// locked instruction); the HTTP thread only loads them. A scrape therefore
// sees each value as of some recent moment, not all of them at one instant;
// the histogram's _count is derived from its buckets so the two always
// agree.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace connredir::proxy {

// The flow log's `result` values grouped into a fixed set of kinds (the
// `kind` label of connredir_proxy_flow_errors_total). Never a free-form
// string: label values must stay few.
enum class ErrorKind : uint8_t {
  None = 0,        // "ok": not an error
  NotRedirected,   // "not redirected": no records and no original destination
  Records,         // querying or attaching the redirect records failed
  NoDestination,   // redirected, but the original destination is unknown
  ConnectRefused,  // the destination refused the onward connection
  ConnectFailed,   // the onward connect failed otherwise (unreachable, ...)
  ConnectTimeout,  // --connect-timeout-ms passed
  ClientError,     // the client reset or failed (before or while relaying)
  ServerError,     // the destination reset or failed while relaying
  IdleTimeout,     // --idle-timeout-ms passed
  Resources,       // out of descriptors/memory (socket, epoll_ctl)
  Internal,        // the relay gave up on its own (splice pipe)
  Shutdown,        // still open when the proxy stopped
};
constexpr size_t kErrorKinds = static_cast<size_t>(ErrorKind::Shutdown) + 1;
// The label value, e.g. "connect_refused"; "" for None.
std::string_view kind_name(ErrorKind k);

// Upper bounds of the flow setup histogram, in nanoseconds: 50 us .. 5 s
// (loopback connects take tens of microseconds, a LAN a few milliseconds,
// a lossy path retransmits its SYN after 1 s).
inline constexpr std::array<uint64_t, 16> kSetupBucketsNs = {
    50'000,      100'000,       250'000,       500'000,      1'000'000,   2'500'000,
    5'000'000,   10'000'000,    25'000'000,    50'000'000,   100'000'000, 250'000'000,
    500'000'000, 1'000'000'000, 2'500'000'000, 5'000'000'000};

class ProxyMetrics {
 public:
  // Loop thread only.
  void flow_accepted() { bump(flows_total_, 1); }
  void set_active(uint64_t n) { flows_active_.store(n, std::memory_order_relaxed); }
  void flow_error(ErrorKind k) {
    if (k != ErrorKind::None) bump(errors_[static_cast<size_t>(k)], 1);
  }
  void bytes(uint64_t up, uint64_t down) {
    if (up) bump(bytes_up_, up);
    if (down) bump(bytes_down_, down);
  }
  void observe_setup(uint64_t ns);

  // Any thread.
  uint64_t flows_total() const { return flows_total_.load(std::memory_order_relaxed); }
  uint64_t flows_active() const { return flows_active_.load(std::memory_order_relaxed); }
  uint64_t errors(ErrorKind k) const {
    return errors_[static_cast<size_t>(k)].load(std::memory_order_relaxed);
  }
  uint64_t bytes_up() const { return bytes_up_.load(std::memory_order_relaxed); }
  uint64_t bytes_down() const { return bytes_down_.load(std::memory_order_relaxed); }
  // Non-cumulative count of bucket i (kSetupBucketsNs.size(): above the last).
  uint64_t setup_bucket(size_t i) const {
    return setup_buckets_[i].load(std::memory_order_relaxed);
  }
  uint64_t setup_sum_ns() const { return setup_sum_ns_.load(std::memory_order_relaxed); }

 private:
  using Counter = std::atomic<uint64_t>;
  // Single writer: no locked read-modify-write needed.
  static void bump(Counter& c, uint64_t d) {
    c.store(c.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
  }
  Counter flows_total_{0};
  Counter flows_active_{0};
  Counter bytes_up_{0}, bytes_down_{0};
  std::array<Counter, kErrorKinds> errors_{};
  std::array<Counter, kSetupBucketsNs.size() + 1> setup_buckets_{};
  Counter setup_sum_ns_{0};
};

struct MetricsLabels {
  std::string name;                 // --name
  std::string version;              // CONNREDIR_VERSION
  std::vector<std::string> listen;  // bound listener addresses
};

// The Prometheus text exposition format (version 0.0.4) of `m`.
std::string format_metrics(const ProxyMetrics& m, const MetricsLabels& labels);

}  // namespace connredir::proxy
