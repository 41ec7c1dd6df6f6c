// Serves GET /metrics over HTTP for connredir-proxy --metrics.
//
// Why cpp-httplib in its own thread instead of a listener on the proxy's
// epoll loop: a scrape is rare and small, but an HTTP server on the loop
// would have to parse requests, bound slow or stuck clients and buffer
// partial writes right next to the relay; any mistake there stalls every
// flow. In a thread of its own (one worker, bounded timeouts) the worst a
// misbehaving scraper can do is delay its own scrape. The loop never waits
// for it: the server only loads the relaxed atomics of ProxyMetrics.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

namespace connredir::proxy {

class MetricsServer {
 public:
  MetricsServer();
  ~MetricsServer();  // stop()
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds ip:port (port 0: any free port) and serves `render()` at
  // /metrics from a thread of its own. Refuses an address that is not
  // loopback unless allow_remote (the metrics reveal flow counts and
  // traffic volumes). Returns "" or an error message that says what to do.
  // Start it after the process blocked the signals it handles with a
  // signalfd: the server's threads inherit the mask.
  std::string start(const std::string& ip, uint16_t port, bool allow_remote,
                    std::function<std::string()> render);
  // The port actually bound (after start()).
  uint16_t port() const { return port_; }
  // Stops serving and joins the thread. Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  uint16_t port_ = 0;
};

// True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104; false for anything
// else, including text that is not an address.
bool is_loopback_ip(const std::string& ip);

}  // namespace connredir::proxy
