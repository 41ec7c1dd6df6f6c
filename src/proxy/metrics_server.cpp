#include "connredir/error.hpp"
#include "metrics_server.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <httplib.h>

#include "unique_fd.hpp"

namespace connredir::proxy {

namespace {

std::string bind_hint(int err) {
  switch (err) {
    case EADDRINUSE:
      return "another program (another connredir-proxy?) already listens on this port; stop it or "
             "give --metrics another port";
    case EACCES:
      return "ports below 1024 need CAP_NET_BIND_SERVICE; use a --metrics port >= 1024";
    case EADDRNOTAVAIL:
      return "no local interface has this address; use 127.0.0.1 or [::1]";
    case EAFNOSUPPORT:
      return "this address family is disabled on this host (IPv6 off?); use 127.0.0.1";
    default:
      return "check the --metrics address";
  }
}

// sockaddr for a numeric ip and port; 0 if `ip` is not an address.
socklen_t to_sockaddr(const std::string& ip, uint16_t port, sockaddr_storage& ss) {
  ss = {};
  auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
  if (inet_pton(AF_INET, ip.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    return sizeof *s4;
  }
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET6, ip.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    return sizeof *s6;
  }
  return 0;
}

}  // namespace

bool is_loopback_ip(const std::string& ip) {
  sockaddr_storage ss{};
  if (to_sockaddr(ip, 0, ss) == 0) return false;
  if (ss.ss_family == AF_INET) {
    const uint32_t a = ntohl(reinterpret_cast<sockaddr_in*>(&ss)->sin_addr.s_addr);
    return (a >> 24) == 127;
  }
  const in6_addr& a6 = reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr;
  if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
  return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

struct MetricsServer::Impl {
  httplib::Server svr;
};

MetricsServer::MetricsServer() : impl_(std::make_unique<Impl>()) {}
MetricsServer::~MetricsServer() { stop(); }

std::string MetricsServer::start(const std::string& ip, uint16_t port, bool allow_remote,
                                 std::function<std::string()> render) {
  const std::string what = "serving metrics on " + ip + ":" + std::to_string(port) + " failed: ";
  sockaddr_storage ss{};
  const socklen_t len = to_sockaddr(ip, port, ss);
  if (len == 0) return what + "not a numeric IP address; use e.g. --metrics 127.0.0.1:9464";
  if (!allow_remote && !is_loopback_ip(ip)) {
    return "--metrics " + ip + ":" + std::to_string(port) +
           " is not a loopback address: the metrics reveal flow counts and traffic volumes "
           "to anyone who can reach the port. Use 127.0.0.1 or [::1] (and scrape locally or "
           "through an authenticating front end), or add --metrics-allow-remote if the port "
           "is firewalled";
  }
  // Bind a probe first: cpp-httplib reports only success or failure, and
  // the operator needs the reason (port in use, address not local, ...).
  if (port != 0) {
    UniqueFd probe(socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe) return what + "socket: " + connredir::errno_text(errno) + "; " + bind_hint(errno);
    const int one = 1;
    if (setsockopt(probe.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
      return what + "SO_REUSEADDR: " + connredir::errno_text(errno);
    if (bind(probe.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      const int e = errno;
      return what + "bind: " + connredir::errno_text(e) + "; " + bind_hint(e);
    }
  }

  auto& svr = impl_->svr;
  // One worker: scrapes are serial; never the default of 8+ threads.
  svr.new_task_queue = [] { return new httplib::ThreadPool(1); };
  svr.set_read_timeout(5, 0);
  svr.set_write_timeout(5, 0);
  svr.set_keep_alive_timeout(2);
  svr.set_payload_max_length(64 * 1024);
  svr.Get("/metrics",
          [render = std::move(render)](const httplib::Request&, httplib::Response& res) {
            res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
          });
  if (port == 0) {
    const int p = svr.bind_to_any_port(ip);
    if (p <= 0) return what + "could not bind any port; check the --metrics address";
    port_ = static_cast<uint16_t>(p);
  } else {
    if (!svr.bind_to_port(ip, port))
      return what + "bind: " + bind_hint(EADDRINUSE);  // the probe bound, so it is taken now
    port_ = port;
  }
  thread_ = std::thread([this] { (void)impl_->svr.listen_after_bind(); });
  // stop() does nothing before the server runs; wait so it cannot be missed.
  const auto t0 = std::chrono::steady_clock::now();
  while (!svr.is_running()) {
    if (!thread_.joinable() || std::chrono::steady_clock::now() - t0 > std::chrono::seconds(5)) {
      stop();
      return what + "the HTTP server thread did not start";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return {};
}

void MetricsServer::stop() {
  if (!thread_.joinable()) return;
  impl_->svr.stop();
  thread_.join();
}

}  // namespace connredir::proxy
