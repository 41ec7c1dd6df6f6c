#include "connredir/error.hpp"
#include "proxy.hpp"
#include "bind_local.hpp"
#include "udp_relay.hpp"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <utility>

#include "connredir/client.hpp"
#include "connredir/records.hpp"
#include "metrics_server.hpp"

namespace connredir::proxy {

namespace {

// epoll_data.u64 = pointer | tag (Listener and Conn are 8-byte aligned).
enum Tag : uint64_t {
  kTagSignal = 0,
  kTagListener = 1,
  kTagClient = 2,
  kTagServer = 3,
  kTagUdpListener = 4,
  kTagUdpServer = 5,
};
constexpr uint64_t kTagMask = 7;  // every tagged object is at least 8-byte aligned
constexpr uint32_t kConnEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

uint64_t now_ns() {
  timespec ts{};
  (void)clock_gettime(CLOCK_MONOTONIC, &ts);  // cannot fail for CLOCK_MONOTONIC
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000 + static_cast<uint64_t>(ts.tv_nsec);
}
uint64_t now_ms() { return now_ns() / 1000000; }

void set_linger_zero(int fd) {
  linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  // Best effort: without it the peer sees FIN instead of RST.
  (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

std::string listen_hint(int err) {
  switch (err) {
    case EADDRINUSE:
      return "another socket already uses this address; stop it or pick another port";
    case EACCES:
      return "ports below 1024 need CAP_NET_BIND_SERVICE; the proxy runs unprivileged, so use a "
             "port >= 1024";
    case EADDRNOTAVAIL:
      return "no local interface has this address; use an address of this host (e.g. "
             "127.0.0.1 or ::1)";
    case EAFNOSUPPORT:
      return "this address family is disabled on this host (IPv6 off?); drop this --listen";
    default:
      return "check the --listen address";
  }
}

struct Listener {
  UniqueFd fd;
  Address addr;
  std::string text;
  bool pending = false;  // connections may wait in the backlog
  bool armed = true;     // EPOLLIN in the interest set (off while accepts pause)
};

struct Conn;
struct TimerList {
  Conn* head = nullptr;
  Conn* tail = nullptr;
  uint64_t timeout_ms = 0;
};

struct Conn {
  enum class Phase : uint8_t { Connecting, Relaying, Closed };
  // Timer list links: a connection sits in exactly one list while open
  // (connect timeouts while connecting, idle timeouts while relaying). All
  // timeouts of one list have the same length, so keeping the list in
  // stamp order (append on activity) keeps it in deadline order: O(1).
  Conn* prev = nullptr;
  Conn* next = nullptr;
  TimerList* list = nullptr;
  uint64_t stamp = 0;

  Phase phase = Phase::Connecting;
  bool resume_queued = false;
  uint32_t client_events = 0;  // seen while connecting
  uint64_t start_ms = 0;
  uint64_t start_ns = 0;                          // accepted (flow setup histogram)
  uint64_t published_up = 0, published_down = 0;  // bytes already in the metrics
  UniqueFd client, server;
  std::optional<Relay> relay;
  FlowRecord rec;
};

void list_remove(Conn* c) {
  TimerList* l = c->list;
  if (!l) return;
  (c->prev ? c->prev->next : l->head) = c->next;
  (c->next ? c->next->prev : l->tail) = c->prev;
  c->prev = c->next = nullptr;
  c->list = nullptr;
}

void list_append(TimerList* l, Conn* c, uint64_t stamp) {
  if (c->list) list_remove(c);
  c->stamp = stamp;
  c->list = l;
  c->prev = l->tail;
  c->next = nullptr;
  (l->tail ? l->tail->next : l->head) = c;
  l->tail = c;
}

}  // namespace

struct Proxy::Impl {
  // First member, so it outlives every relay that could hand a buffer back.
  BufferPool pool;
  ProxyOptions opt;
  FlowLog log;
  UniqueFd ep, sigfd;
  std::vector<std::unique_ptr<Listener>> listeners;
  TimerList connecting, idle;
  std::vector<Conn*> resume_list;
  std::vector<std::unique_ptr<Conn>> graveyard;
  uint64_t now = 0;
  unsigned active = 0;
  bool stopping = false;
  int stop_signal = 0;
  bool accept_blocked = false;  // at --max-conns
  uint64_t accept_paused_until = 0;
  uint64_t accept_backoff_ms = 0;
  bool warned_not_loaded = false;
  uint64_t n_ok = 0, n_failed = 0, n_not_redirected = 0;
  ProxyMetrics metrics;
  // Last member: destroyed (its thread stopped) first, while `metrics`
  // still exists.
  MetricsServer metrics_server;
  std::unique_ptr<UdpRelay> udp;  // --udp

  // The gauge counts TCP connections and UDP flows alike.
  void publish_active() { metrics.set_active(active + (udp ? udp->flows() : 0)); }
  std::string prefix() const { return "connredir-proxy[" + opt.name + "]: "; }

  std::string start();
  int run();
  int compute_timeout() const;
  void accept_from(Listener& l);
  void arm(Listener& l, bool on);
  void resume_accepting();
  void handle_accepted(Listener& l, UniqueFd fd, const sockaddr_storage& peer, socklen_t plen);
  void conn_event(Conn* c, Side side, uint32_t events);
  void established(Conn* c, uint32_t events);
  void after_relay(Conn* c);
  std::string start_metrics();
  void log_now(FlowRecord& rec, uint64_t start, const std::string& result, ErrorKind kind);
  void publish_bytes(Conn* c);
  void close_conn(Conn* c, const std::string& result, bool reset, ErrorKind kind);
  void expire_timers();
  void shutdown_all();
};

Proxy::Proxy(ProxyOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->opt = std::move(options);
}
Proxy::~Proxy() = default;
std::string Proxy::start() { return impl_->start(); }
int Proxy::run() { return impl_->run(); }
std::vector<Address> Proxy::bound() const {
  std::vector<Address> out;
  for (const auto& l : impl_->listeners) out.push_back(l->addr);
  return out;
}

std::string Proxy::Impl::start() {
  if (opt.listen.empty()) return "no --listen address given; pass e.g. --listen 127.0.0.1:15001";
  if (opt.max_conns == 0) return "--max-conns must be at least 1";
  connecting.timeout_ms = opt.connect_timeout_ms;
  idle.timeout_ms = opt.idle_timeout_ms;

  // A closed peer must not kill the proxy: splice/send report EPIPE instead.
  struct sigaction sa {};
  sa.sa_handler = SIG_IGN;
  if (sigaction(SIGPIPE, &sa, nullptr) != 0)
    return "ignoring SIGPIPE failed: " + connredir::errno_text(errno);

  // Each relayed flow needs up to 6 descriptors (2 sockets, 2 pipes).
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rlimit raised = rl;
      raised.rlim_cur = rl.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
    const rlim_t need = rlim_t{opt.max_conns} * 6 + 32;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
      std::fprintf(stderr,
                   "%swarning: --max-conns %u needs about %llu descriptors but the limit is "
                   "%llu; raise it (ulimit -n) or lower --max-conns, or accepts will pause when "
                   "descriptors run out\n",
                   prefix().c_str(), opt.max_conns, static_cast<unsigned long long>(need),
                   static_cast<unsigned long long>(rl.rlim_cur));
    }
  }

  if (!opt.log_path.empty()) {
    if (auto err = log.open(opt.log_path); !err.empty()) return err;
  }

  ep.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!ep)
    return "epoll_create1 failed: " + connredir::errno_text(errno) + "; raise the descriptor limit";

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0)
    return "blocking SIGTERM/SIGINT failed: " + connredir::errno_text(errno);
  sigfd.reset(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!sigfd)
    return "signalfd failed: " + connredir::errno_text(errno) + "; raise the descriptor limit";
  epoll_event sev{};
  sev.events = EPOLLIN;
  sev.data.u64 = kTagSignal;
  if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, sigfd.get(), &sev) != 0)
    return "epoll_ctl(signalfd) failed: " + connredir::errno_text(errno);

  for (const Address& a : opt.listen) {
    auto l = std::make_unique<Listener>();
    l->addr = a;
    const std::string what = "listening on " + a.to_string() + " failed: ";
    auto bound = bind_local(a, SOCK_STREAM);
    if (!bound) return what + bound.error().message + "; " + listen_hint(bound.error().code);
    l->fd = std::move(bound->fd);
    l->addr = bound->addr;
    if (listen(l->fd.get(), SOMAXCONN) != 0) {
      const int e = errno;
      return what + "listen: " + connredir::errno_text(e) + "; " + listen_hint(e);
    }
    l->text = l->addr.to_string();
    // Level-triggered, accepts in bounded batches (see accept_from).
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = reinterpret_cast<uint64_t>(l.get()) | kTagListener;
    if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, l->fd.get(), &ev) != 0)
      return what + "epoll_ctl: " + connredir::errno_text(errno);
    std::fprintf(stderr, "%slistening on %s\n", prefix().c_str(), l->text.c_str());
    listeners.push_back(std::move(l));
  }
  if (opt.udp) {
    UdpRelay::Hooks hooks{[this] { metrics.flow_accepted(); },
                          [this](FlowRecord& rec, uint64_t start, const std::string& result,
                                 ErrorKind kind) { log_now(rec, start, result, kind); },
                          [this](uint64_t up, uint64_t down) { metrics.bytes(up, down); }};
    udp = std::make_unique<UdpRelay>(
        UdpRelay::Options{opt.name, opt.propagate, opt.udp_idle_timeout_ms, opt.max_udp_flows,
                          opt.udp_upstream},
        std::move(hooks));
    udp->set_server_tag(kTagUdpServer);
    for (const Address& a : opt.listen) {
      const size_t before = udp->listeners().size();
      std::string warn;
      if (auto err = udp->listen(a, ep.get(), kTagUdpListener, &warn); !err.empty()) return err;
      for (size_t i = before; i < udp->listeners().size(); ++i)
        std::fprintf(stderr, "%slistening for UDP on %s%s\n", prefix().c_str(),
                     udp->listeners()[i]->text.c_str(),
                     udp->listeners()[i]->any ? " (unconnected sends, by pool address)" : "");
      if (!warn.empty()) std::fprintf(stderr, "%swarning: %s\n", prefix().c_str(), warn.c_str());
    }
  }
  // Last: the server's threads inherit the blocked SIGTERM/SIGINT above.
  if (opt.metrics) return start_metrics();
  return {};
}

std::string Proxy::Impl::start_metrics() {
  MetricsLabels labels{opt.name, CONNREDIR_VERSION, {}};
  for (const auto& l : listeners) labels.listen.push_back(l->text);
  auto err = metrics_server.start(
      opt.metrics->ip_string(), opt.metrics->port, opt.metrics_allow_remote,
      [this, labels = std::move(labels)] { return format_metrics(metrics, labels); });
  if (!err.empty()) return err;
  Address shown = *opt.metrics;
  shown.port = metrics_server.port();
  std::fprintf(stderr, "%smetrics on http://%s/metrics\n", prefix().c_str(),
               shown.to_string().c_str());
  return {};
}

int Proxy::Impl::compute_timeout() const {
  if (!resume_list.empty()) return 0;
  uint64_t next = UINT64_MAX;
  if (connecting.head && connecting.timeout_ms)
    next = std::min(next, connecting.head->stamp + connecting.timeout_ms);
  if (idle.head && idle.timeout_ms) next = std::min(next, idle.head->stamp + idle.timeout_ms);
  if (accept_paused_until) next = std::min(next, accept_paused_until);
  if (udp) next = std::min(next, udp->next_deadline());
  if (next == UINT64_MAX) return -1;
  const uint64_t t = now_ms();
  if (next <= t) return 0;
  return static_cast<int>(std::min<uint64_t>(next - t, 60000));
}

int Proxy::Impl::run() {
  std::fprintf(stderr, "%sready (records %s, max %u connections)\n", prefix().c_str(),
               opt.propagate ? "propagated" : "NOT propagated (--no-propagate)", opt.max_conns);
  std::fflush(stderr);
  epoll_event evs[256];
  while (!stopping) {
    const int n = epoll_wait(ep.get(), evs, 256, compute_timeout());
    if (n < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "%sepoll_wait failed: %s; exiting\n", prefix().c_str(),
                   connredir::errno_text(errno).c_str());
      shutdown_all();
      return 1;
    }
    now = now_ms();
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = evs[i].data.u64 & kTagMask;
      void* ptr = reinterpret_cast<void*>(evs[i].data.u64 & ~kTagMask);
      switch (tag) {
        case kTagSignal: {
          signalfd_siginfo si{};
          while (read(sigfd.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
            stopping = true;
            stop_signal = static_cast<int>(si.ssi_signo);
          }
          break;
        }
        case kTagListener:
          accept_from(*static_cast<Listener*>(ptr));
          break;
        case kTagClient:
          conn_event(static_cast<Conn*>(ptr), Side::Client, evs[i].events);
          break;
        case kTagServer:
          conn_event(static_cast<Conn*>(ptr), Side::Server, evs[i].events);
          break;
        case kTagUdpListener:
          udp->on_listener(static_cast<UdpListener*>(ptr), now);
          publish_active();
          break;
        case kTagUdpServer:
          udp->on_server(static_cast<UdpSession*>(ptr), now);
          break;
      }
    }
    if (!resume_list.empty()) {
      std::vector<Conn*> todo;
      todo.swap(resume_list);
      for (Conn* c : todo) {
        c->resume_queued = false;
        if (c->phase != Conn::Phase::Relaying) continue;
        c->relay->resume();
        after_relay(c);
      }
    }
    expire_timers();
    resume_accepting();
    graveyard.clear();
  }
  shutdown_all();
  return 0;
}

void Proxy::Impl::resume_accepting() {
  if (stopping) return;
  if (accept_paused_until) {
    if (now < accept_paused_until) return;
    accept_paused_until = 0;
  } else if (!accept_blocked || active >= opt.max_conns) {
    return;
  }
  accept_blocked = false;
  for (auto& l : listeners) {
    if (l->pending) accept_from(*l);
  }
}

void Proxy::Impl::arm(Listener& l, bool on) {
  if (l.armed == on) return;
  epoll_event ev{};
  ev.events = on ? static_cast<uint32_t>(EPOLLIN) : 0u;
  ev.data.u64 = reinterpret_cast<uint64_t>(&l) | kTagListener;
  if (epoll_ctl(ep.get(), EPOLL_CTL_MOD, l.fd.get(), &ev) != 0) {
    // Cannot happen for a registered descriptor short of ENOMEM; disarmed
    // it would only spin while accepts pause, armed it would stall accepts.
    std::fprintf(stderr, "%sepoll_ctl(listener %s) failed: %s\n", prefix().c_str(), l.text.c_str(),
                 connredir::errno_text(errno).c_str());
    return;
  }
  l.armed = on;
}

// The listener is level-triggered; each wakeup accepts until the backlog is
// empty (EAGAIN) or kAcceptBatch connections, so a burst of thousands of
// connects drains fast enough that the kernel's SYN and accept queues do not
// overflow (one accept per wakeup lost 22 of 10 000 connects to resets in the
// load test under ASan), while the cap keeps a flood from starving flows that
// are already relaying. While accepts pause (--max-conns, out of descriptors)
// the listener is disarmed.
void Proxy::Impl::accept_from(Listener& l) {
  constexpr int kAcceptBatch = 64;
  int accepted = 0;
  for (;;) {
    if (stopping) return;
    if (active >= opt.max_conns) {
      // Come back when a connection closes.
      l.pending = true;
      accept_blocked = true;
      arm(l, false);
      return;
    }
    if (accept_paused_until) {
      l.pending = true;
      arm(l, false);
      return;
    }
    arm(l, true);
    sockaddr_storage peer{};
    socklen_t plen = sizeof peer;
    const int fd = accept4(l.fd.get(), reinterpret_cast<sockaddr*>(&peer), &plen,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int e = errno;
      switch (e) {
        case EAGAIN:
          l.pending = false;
          return;
        // The connection died in the backlog, or a network error that
        // Linux reports through accept: skip it.
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
        case EPERM:
          continue;
        default: {
          // EMFILE/ENFILE/ENOBUFS/ENOMEM: out of resources. Retrying at once
          // would spin; pause accepting and let finished flows free some.
          const bool first = accept_backoff_ms == 0;
          accept_backoff_ms =
              std::min<uint64_t>(std::max<uint64_t>(accept_backoff_ms * 2, 50), 1000);
          accept_paused_until = now_ms() + accept_backoff_ms;
          l.pending = true;
          arm(l, false);
          if (first) {
            std::fprintf(stderr,
                         "%saccept on %s failed: %s; pausing accepts (up to 1 s at a time) until "
                         "resources free up. Raise the descriptor limit (ulimit -n) or lower "
                         "--max-conns\n",
                         prefix().c_str(), l.text.c_str(), connredir::errno_text(e).c_str());
          }
          return;
        }
      }
    }
    accept_backoff_ms = 0;
    l.pending = false;
    handle_accepted(l, UniqueFd(fd), peer, plen);
    if (++accepted >= kAcceptBatch) return;  // level-triggered: the rest comes next round
  }
}

void Proxy::Impl::log_now(FlowRecord& rec, uint64_t start, const std::string& result,
                          ErrorKind kind) {
  rec.result = result;
  metrics.flow_error(kind);
  const uint64_t t = now_ms();
  rec.duration_ms = t > start ? t - start : 0;
  if (result == "ok") {
    ++n_ok;
  } else if (result == "not redirected") {
    ++n_not_redirected;
  } else {
    ++n_failed;
  }
  log.write(rec);
}

void Proxy::Impl::handle_accepted(Listener& l, UniqueFd fd, const sockaddr_storage& peer,
                                  socklen_t plen) {
  const uint64_t start_ns = now_ns();
  const uint64_t start = start_ns / 1000000;
  metrics.flow_accepted();
  FlowRecord rec;
  rec.name = opt.name;
  rec.listen = l.text;
  if (auto p = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&peer), plen)) {
    rec.client = p->to_string();
  }
  // Failures before the outgoing connection exists: reset the client so the
  // application sees its connection fail instead of a clean close.
  auto reject = [&](const std::string& result, ErrorKind kind) {
    set_linger_zero(fd.get());
    log_now(rec, start, result, kind);
  };

  RecordsBlob blob;
  std::optional<Address> dst;
  // Records and context in one call (query_flow): on every accepted flow.
  auto flow = query_flow(fd.get());
  if (!flow) {
    const int e = flow.error().code;
    if (e != ENOENT && e != EOPNOTSUPP && e != ENOPROTOOPT) {
      reject("querying the redirect records failed: " + flow.error().message, ErrorKind::Records);
      return;
    }
    if (e != ENOENT && !warned_not_loaded) {
      warned_not_loaded = true;
      std::fprintf(stderr,
                   "%s%s. Until then every accepted connection without an original destination "
                   "is closed and logged as \"not redirected\"\n",
                   prefix().c_str(), flow.error().message.c_str());
    }
    // No records: only a connection with a known original destination (for
    // example an iptables REDIRECT) that is not this listener itself.
    auto od = original_destination(fd.get());
    bool usable = od.has_value() && od->family != 0;
    if (usable) {
      sockaddr_storage self{};
      socklen_t slen = sizeof self;
      if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&self), &slen) != 0) {
        usable = false;
      } else if (auto s = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&self), slen)) {
        usable = !(s->ip == od->ip && s->port == od->port);
      }
    }
    if (!usable) {
      log_now(rec, start, "not redirected", ErrorKind::NotRedirected);
      return;
    }
    dst = *od;
  } else {
    blob = std::move(flow->records);
    describe_flow(rec, blob, &flow->context);
    if (flow->context.orig_dst.family != 0) dst = flow->context.orig_dst;
    if (!dst) {
      auto od = original_destination(fd.get());
      if (od && od->family != 0) dst = *od;
    }
    if (!dst) {
      reject("redirected, but the original destination is unknown (context has none)",
             ErrorKind::NoDestination);
      return;
    }
  }
  rec.orig_dst = dst->to_string();

  UniqueFd out(socket(dst->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!out) {
    reject("creating the outgoing socket failed: " + connredir::errno_text(errno) +
               "; raise the descriptor limit (ulimit -n) or lower --max-conns",
           ErrorKind::Resources);
    return;
  }
  if (opt.propagate && !blob.empty()) {
    auto r = set_records(out.get(), blob);
    if (!r) {
      // Connecting without the records could loop the flow back here.
      reject("setting the redirect records on the outgoing socket failed, not connecting: " +
                 r.error().message,
             ErrorKind::Records);
      return;
    }
    rec.propagated = true;
  }
  sockaddr_storage ds{};
  const socklen_t dlen = dst->to_sockaddr(ds);
  if (connect(out.get(), reinterpret_cast<sockaddr*>(&ds), dlen) != 0 && errno != EINPROGRESS) {
    const int e = errno;
    reject("connecting to " + *rec.orig_dst + " failed: " + connredir::errno_text(e),
           e == ECONNREFUSED ? ErrorKind::ConnectRefused : ErrorKind::ConnectFailed);
    return;
  }

  auto owned = std::make_unique<Conn>();
  Conn* c = owned.get();
  c->start_ms = start;
  c->start_ns = start_ns;
  c->rec = std::move(rec);
  epoll_event ev{};
  ev.events = kConnEvents;
  ev.data.u64 = reinterpret_cast<uint64_t>(c) | kTagClient;
  if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd.get(), &ev) != 0) {
    set_linger_zero(fd.get());
    log_now(c->rec, start, "epoll_ctl(client) failed: " + connredir::errno_text(errno),
            ErrorKind::Resources);
    return;
  }
  ev.data.u64 = reinterpret_cast<uint64_t>(c) | kTagServer;
  if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, out.get(), &ev) != 0) {
    set_linger_zero(fd.get());
    log_now(c->rec, start, "epoll_ctl(server) failed: " + connredir::errno_text(errno),
            ErrorKind::Resources);
    return;
  }
  c->client = std::move(fd);
  c->server = std::move(out);
  list_append(&connecting, c, start);
  ++active;
  publish_active();
  owned.release();  // owned by the timer lists until close_conn()
}

void Proxy::Impl::conn_event(Conn* c, Side side, uint32_t events) {
  if (c->phase == Conn::Phase::Closed) return;  // closed earlier in this batch
  if (c->phase == Conn::Phase::Connecting) {
    if (side == Side::Client) {
      c->client_events |= events;
      if (events & EPOLLERR) {
        close_conn(c,
                   "client reset the connection before the connection to " + *c->rec.orig_dst +
                       " was established",
                   true, ErrorKind::ClientError);
      }
      return;
    }
    if (events & (EPOLLERR | EPOLLHUP)) {
      int soerr = 0;
      socklen_t len = sizeof soerr;
      if (getsockopt(c->server.get(), SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) soerr = errno;
      if (soerr == 0) soerr = ECONNREFUSED;
      close_conn(
          c, "connecting to " + *c->rec.orig_dst + " failed: " + connredir::errno_text(soerr), true,
          soerr == ECONNREFUSED ? ErrorKind::ConnectRefused : ErrorKind::ConnectFailed);
      return;
    }
    if (events & EPOLLOUT) established(c, events);
    return;
  }
  list_append(&idle, c, now);
  c->relay->on_event(side, events);
  after_relay(c);
}

void Proxy::Impl::established(Conn* c, uint32_t events) {
  const uint64_t t = now_ns();
  metrics.observe_setup(t > c->start_ns ? t - c->start_ns : 0);
  c->relay.emplace(
      std::move(c->client), std::move(c->server),
      Relay::Options{
          .splice = opt.splice, .copy_buffer = opt.buffer_size, .budget = 64, .pool = &pool});
  c->phase = Conn::Phase::Relaying;
  list_append(&idle, c, now);  // relaying connections always sit in `idle`
  // Client readiness seen while connecting (edges are not repeated).
  if (c->client_events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    c->relay->on_event(Side::Client, c->client_events & ~static_cast<uint32_t>(EPOLLOUT));
  }
  c->relay->on_event(Side::Server, events);
  after_relay(c);
}

// Moves the bytes the relay delivered since the last call into the
// metrics, so a long flow's traffic shows while it runs.
void Proxy::Impl::publish_bytes(Conn* c) {
  const uint64_t up = c->relay->bytes_up(), down = c->relay->bytes_down();
  metrics.bytes(up - c->published_up, down - c->published_down);
  c->published_up = up;
  c->published_down = down;
}

void Proxy::Impl::after_relay(Conn* c) {
  publish_bytes(c);
  switch (c->relay->state()) {
    case Relay::State::Done:
      close_conn(c, "ok", false, ErrorKind::None);
      return;
    case Relay::State::Failed: {
      ErrorKind kind = ErrorKind::Internal;
      if (c->relay->culprit() == Relay::Culprit::Client) kind = ErrorKind::ClientError;
      if (c->relay->culprit() == Relay::Culprit::Server) kind = ErrorKind::ServerError;
      close_conn(c, c->relay->error(), true, kind);
      return;
    }
    case Relay::State::Running:
      if (c->relay->needs_resume() && !c->resume_queued) {
        c->resume_queued = true;
        resume_list.push_back(c);
      }
      return;
  }
}

void Proxy::Impl::close_conn(Conn* c, const std::string& result, bool reset, ErrorKind kind) {
  if (c->phase == Conn::Phase::Closed) return;
  if (c->relay) {
    publish_bytes(c);
    c->rec.bytes_up = c->relay->bytes_up();
    c->rec.bytes_down = c->relay->bytes_down();
    if (c->relay->state() == Relay::State::Running) c->relay->abort(result, reset);
  } else {
    if (reset) {
      if (c->client) set_linger_zero(c->client.get());
      if (c->server) set_linger_zero(c->server.get());
    }
    c->client.reset();
    c->server.reset();
  }
  log_now(c->rec, c->start_ms, result, kind);
  list_remove(c);
  c->phase = Conn::Phase::Closed;
  --active;
  publish_active();
  graveyard.emplace_back(c);  // freed after this batch of events
}

void Proxy::Impl::expire_timers() {
  if (udp) {
    udp->expire(now);
    publish_active();
  }
  while (connecting.head && connecting.timeout_ms &&
         connecting.head->stamp + connecting.timeout_ms <= now) {
    Conn* c = connecting.head;
    close_conn(c,
               "connecting to " + *c->rec.orig_dst + " timed out after " +
                   std::to_string(connecting.timeout_ms) + " ms (--connect-timeout-ms)",
               true, ErrorKind::ConnectTimeout);
  }
  while (idle.head && idle.timeout_ms && idle.head->stamp + idle.timeout_ms <= now) {
    close_conn(idle.head,
               "idle for " + std::to_string(idle.timeout_ms) +
                   " ms (--idle-timeout-ms); both connections were reset",
               true, ErrorKind::IdleTimeout);
  }
}

void Proxy::Impl::shutdown_all() {
  listeners.clear();  // stop accepting first
  const std::string why = stop_signal ? "proxy stopped by " + std::string(sigabbrev_np(stop_signal))
                                      : std::string("proxy stopped");
  for (TimerList* l : {&connecting, &idle}) {
    while (l->head) close_conn(l->head, why, false, ErrorKind::Shutdown);
  }
  if (udp) udp->shutdown(now_ms());
  graveyard.clear();
  std::fprintf(stderr, "%sexiting: %llu flows ok, %llu failed, %llu not redirected\n",
               prefix().c_str(), static_cast<unsigned long long>(n_ok),
               static_cast<unsigned long long>(n_failed),
               static_cast<unsigned long long>(n_not_redirected));
}

}  // namespace connredir::proxy
