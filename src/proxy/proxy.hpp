// The reference proxy: accepts redirected connections, reads their redirect
// records and context, connects to the original destination with the
// records attached (so connredir does not loop the flow back to this proxy)
// and relays. Single-threaded epoll; see relay.hpp for the data path, and
// udp_relay.hpp for UDP (--udp).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "connredir/address.hpp"
#include "flow_log.hpp"
#include "metrics.hpp"
#include "relay.hpp"
#include "unique_fd.hpp"

namespace connredir::proxy {

struct ProxyOptions {
  std::vector<Address> listen;
  std::string log_path;  // empty: no flow log; "-": standard output
  std::string name = "connredir-proxy";
  bool propagate = true;  // set the records on the outgoing socket
  unsigned max_conns = 1024;
  unsigned connect_timeout_ms = 10000;
  unsigned idle_timeout_ms = 300000;  // 0: never
  // Bulk mode past a flow's first 64 KiB per direction: recv/send through
  // buffer_size bytes (default, faster on loopback), or splice.
  bool splice = false;
  // Per-direction relay buffer once a flow is past its first 64 KiB (copy
  // mode); small flows use 16 KiB.
  size_t buffer_size = 64 * 1024;
  // --metrics: serve Prometheus metrics at http://ADDR:PORT/metrics.
  std::optional<Address> metrics;
  bool metrics_allow_remote = false;  // else a non-loopback ADDR is refused
  // --udp: relay UDP flows too, on a UDP socket at each --listen address
  // (udp_relay.hpp).
  bool udp = false;
  unsigned udp_idle_timeout_ms = 30000;
  unsigned max_udp_flows = 4096;
  // --udp-upstream: where UDP flows connredir did not redirect go (a DNS
  // forwarder behind an nftables REDIRECT rule, which tells no original
  // destination for UDP); unset: such flows are dropped.
  std::optional<Address> udp_upstream;
};

class Proxy {
 public:
  explicit Proxy(ProxyOptions options);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Opens the log, binds every listener, sets up epoll and the signal fd.
  // Returns an empty string, or an error message that says what to do.
  std::string start();
  // Runs until SIGTERM/SIGINT. Returns the process exit code.
  int run();
  // Listener addresses as bound (the real port when 0 was asked for).
  std::vector<Address> bound() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace connredir::proxy
