// relay_floor: the cheapest TCP relay this machine can run, to measure the
// floor any user-space proxy pays (bench/run.sh part 3, configs floor-epoll and
// floor-uring). It is a measuring instrument, not a proxy: one fixed
// destination, no records, no log, no metrics, no timeouts, no limits, and
// a reset on any error. What connredir-proxy (or haproxy) costs above it is
// what their features cost; what it costs above `direct` is what relaying
// through a process costs on this machine at all (issue 14 goals 3 and 4).
//
//   relay_floor --listen ADDR:PORT --to ADDR:PORT --engine epoll|uring
//
// epoll: edge-triggered, per direction recv into a 16 KiB buffer and send;
//   three system calls per direction per message (epoll_wait, recv, send),
//   as any epoll relay makes.
// uring: io_uring, one receive always posted per direction; a completed
//   receive posts the send, a completed send posts the next receive, and
//   one io_uring_enter submits everything and waits: one system call per
//   direction per message. Sockets are blocking, so io_uring waits for
//   readiness itself instead of returning EAGAIN.
// IPv4 loopback only (bench/run.sh's addresses).
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr size_t kBuf = 16 * 1024;

[[noreturn]] void die(const char* what, int err) {
  std::fprintf(stderr, "relay_floor: %s: %s\n", what, std::strerror(err));
  std::exit(1);
}

bool parse(const std::string& text, sockaddr_in& out) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) return false;
  out = {};
  out.sin_family = AF_INET;
  out.sin_port = htons(static_cast<uint16_t>(std::atoi(text.c_str() + colon + 1)));
  return inet_pton(AF_INET, text.substr(0, colon).c_str(), &out.sin_addr) == 1;
}

// Best effort: without it the peer sees a FIN instead of a reset.
void set_linger_zero(int fd) {
  linger l{1, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

void reset_close(int fd) {
  set_linger_zero(fd);
  close(fd);
}

sockaddr_in g_dst;

// One direction of a relayed connection, in either engine: d[0] reads the
// client and writes the server, d[1] the other way.
template <class Conn>
struct Dir {
  Conn* c;
  int from, to;
  char buf[kBuf];
  size_t off = 0, len = 0;
  bool eof = false;  // epoll: `from` returned EOF
};

// Points a new connection's two directions at its sockets.
template <class Conn>
void wire(Conn* c, int cfd, int sfd) {
  c->fd[0] = cfd;
  c->fd[1] = sfd;
  c->d[0].c = c->d[1].c = c;
  c->d[0].from = c->d[1].to = cfd;
  c->d[0].to = c->d[1].from = sfd;
}

// ---- epoll -----------------------------------------------------------------
struct EConn;
using EDir = Dir<EConn>;
struct EConn {
  int fd[2];
  EDir d[2];
  bool up = false;    // onward connect finished
  bool dead = false;  // closed; freed after this batch of events (more may name it)
  int shut = 0;       // directions that delivered their EOF
};
std::vector<EConn*> g_dead;

void e_close(EConn* c, bool reset) {
  for (int fd : c->fd) reset ? reset_close(fd) : (void)close(fd);  // close removes it from epoll
  c->dead = true;
  g_dead.push_back(c);
}

// Moves what it can in direction d; false when the connection was closed.
bool e_pump(EConn* c, EDir& d) {
  for (;;) {
    if (d.off < d.len) {
      const ssize_t n = send(d.to, d.buf + d.off, d.len - d.off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN) return true;  // EPOLLOUT resumes it
        e_close(c, true);
        return false;
      }
      d.off += static_cast<size_t>(n);
      continue;
    }
    if (d.eof) return true;
    const ssize_t n = recv(d.from, d.buf, kBuf, 0);
    if (n < 0) {
      if (errno == EAGAIN) return true;
      e_close(c, true);
      return false;
    }
    d.off = 0;
    d.len = static_cast<size_t>(n);
    if (n == 0) {
      d.eof = true;
      if (shutdown(d.to, SHUT_WR) != 0 || ++c->shut == 2) {
        e_close(c, c->shut != 2);
        return false;
      }
      return true;
    }
  }
}

int run_epoll(int lfd) {
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) die("epoll_ctl", errno);
  epoll_event evs[256];
  for (;;) {
    const int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait", errno);
    }
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.u64 == 0) {
        for (;;) {
          const int cfd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break;
          const int sfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
          if (sfd < 0) {
            reset_close(cfd);
            continue;
          }
          auto* c = new EConn{};
          wire(c, cfd, sfd);
          if (connect(sfd, reinterpret_cast<sockaddr*>(&g_dst), sizeof g_dst) != 0 &&
              errno != EINPROGRESS) {
            e_close(c, true);
            continue;
          }
          bool ok = true;
          for (int s = 0; s < 2 && ok; ++s) {
            epoll_event ce{};
            ce.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
            ce.data.u64 = reinterpret_cast<uint64_t>(c) | static_cast<uint64_t>(s + 1);
            ok = epoll_ctl(ep, EPOLL_CTL_ADD, c->fd[s], &ce) == 0;
          }
          if (!ok) e_close(c, true);
        }
        continue;
      }
      auto* c = reinterpret_cast<EConn*>(evs[i].data.u64 & ~uint64_t{3});
      const int side = static_cast<int>(evs[i].data.u64 & 3) - 1;  // 0 client, 1 server
      if (c->dead) continue;
      if (evs[i].events & EPOLLERR) {
        e_close(c, true);
        continue;
      }
      if (side == 1 && !c->up) {
        if (!(evs[i].events & EPOLLOUT)) continue;
        c->up = true;
        if (!e_pump(c, c->d[0])) continue;  // client bytes that arrived while connecting
      }
      if (!c->up) continue;  // client readable before the onward connect: the edge is kept
      // Readable: the direction reading this side; writable: the one writing to it.
      if (!e_pump(c, c->d[side])) continue;
      (void)e_pump(c, c->d[1 - side]);
    }
    for (EConn* c : g_dead) delete c;
    g_dead.clear();
  }
}

// ---- io_uring ---------------------------------------------------------------
io_uring g_ring;
enum Op : uint64_t { kListen = 1, kConnect = 2, kRecv = 3, kSend = 4 };

struct UConn;
using UDir = Dir<UConn>;
struct UConn {
  int fd[2];
  UDir d[2];
  sockaddr_in dst;
  int inflight = 0;  // requests whose completion is still to come
  int shut = 0;
  bool up = false, dead = false;
};

io_uring_sqe* sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&g_ring);
  if (!s) {
    (void)io_uring_submit(&g_ring);  // full queue: hand it over, then take one
    s = io_uring_get_sqe(&g_ring);
  }
  if (!s) die("io_uring_get_sqe", EBUSY);
  return s;
}

void post(io_uring_sqe* s, void* obj, Op op, UConn* c) {
  io_uring_sqe_set_data64(s, reinterpret_cast<uint64_t>(obj) | op);
  if (c) ++c->inflight;
}
void post_recv(UDir& d) {
  io_uring_sqe* s = sqe();
  io_uring_prep_recv(s, d.from, d.buf, kBuf, 0);
  post(s, &d, kRecv, d.c);
}
void post_send(UDir& d) {
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, d.to, d.buf + d.off, d.len - d.off, MSG_NOSIGNAL);
  post(s, &d, kSend, d.c);
}
void post_listen(int lfd) {
  io_uring_sqe* s = sqe();
  io_uring_prep_poll_add(s, lfd, POLLIN);
  post(s, nullptr, kListen, nullptr);
}

// Ends the connection: shutdown wakes its posted requests (their buffers
// must stay until they complete), the last completion frees it.
void u_kill(UConn* c) {
  if (!c->dead) {
    c->dead = true;
    for (int fd : c->fd) {
      set_linger_zero(fd);
      (void)shutdown(fd, SHUT_RDWR);
    }
  }
}
void u_maybe_free(UConn* c) {
  if ((c->dead || c->shut == 2) && c->inflight == 0) {
    close(c->fd[0]);
    close(c->fd[1]);
    delete c;
  }
}

void u_accept(int lfd) {
  for (;;) {
    const int cfd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);  // blocking: see the top
    if (cfd < 0) return;
    const int sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sfd < 0) {
      reset_close(cfd);
      continue;
    }
    auto* c = new UConn{};
    c->dst = g_dst;
    wire(c, cfd, sfd);
    io_uring_sqe* s = sqe();
    io_uring_prep_connect(s, sfd, reinterpret_cast<sockaddr*>(&c->dst), sizeof c->dst);
    post(s, c, kConnect, c);
    post_recv(c->d[0]);  // the client's first bytes wait in the buffer for the connect
  }
}

void u_complete(uint64_t data, int res, int lfd) {
  const auto op = static_cast<Op>(data & 7);
  void* obj = reinterpret_cast<void*>(data & ~uint64_t{7});
  if (op == kListen) {
    u_accept(lfd);
    post_listen(lfd);
    return;
  }
  if (op == kConnect) {
    auto* c = static_cast<UConn*>(obj);
    --c->inflight;
    if (res < 0) u_kill(c);
    if (!c->dead) {
      c->up = true;
      if (c->d[0].len > 0) post_send(c->d[0]);
      post_recv(c->d[1]);
    }
    u_maybe_free(c);
    return;
  }
  UDir& d = *static_cast<UDir*>(obj);
  UConn* c = d.c;
  --c->inflight;
  if (c->dead || res < 0) {
    u_kill(c);
  } else if (op == kRecv && res == 0) {
    if (shutdown(d.to, SHUT_WR) != 0) u_kill(c);
    ++c->shut;
  } else if (op == kRecv) {
    d.off = 0;
    d.len = static_cast<size_t>(res);
    if (c->up || &d != &c->d[0]) post_send(d);
  } else {  // kSend
    d.off += static_cast<size_t>(res);
    if (d.off < d.len) {
      post_send(d);
    } else {
      d.off = d.len = 0;
      post_recv(d);
    }
  }
  u_maybe_free(c);
}

int run_uring(int lfd) {
  if (const int e = io_uring_queue_init(4096, &g_ring, 0); e < 0) die("io_uring_queue_init", -e);
  post_listen(lfd);
  for (;;) {
    const int r = io_uring_submit_and_wait(&g_ring, 1);
    if (r < 0 && r != -EINTR) die("io_uring_submit_and_wait", -r);
    io_uring_cqe* cqe = nullptr;
    unsigned head = 0, seen = 0;
    io_uring_for_each_cqe(&g_ring, head, cqe) {
      ++seen;
      u_complete(cqe->user_data, cqe->res, lfd);
    }
    io_uring_cq_advance(&g_ring, seen);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen_at, to, engine = "epoll";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--listen")
      listen_at = argv[i + 1];
    else if (k == "--to")
      to = argv[i + 1];
    else if (k == "--engine")
      engine = argv[i + 1];
  }
  sockaddr_in la{};
  if (!parse(listen_at, la) || !parse(to, g_dst) || (engine != "epoll" && engine != "uring")) {
    std::fprintf(stderr,
                 "usage: relay_floor --listen IPV4:PORT --to IPV4:PORT --engine epoll|uring\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  const int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket", errno);
  const int one = 1;
  if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) die("SO_REUSEADDR", errno);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&la), sizeof la) != 0) die("bind", errno);
  if (listen(lfd, 4096) != 0) die("listen", errno);
  return engine == "uring" ? run_uring(lfd) : run_epoll(lfd);
}
