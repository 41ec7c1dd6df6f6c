// connload: the load generator and destination server of the connredir
// benchmark suite (bench/run.sh). One binary, one mode per invocation; every
// client mode prints one JSON object on standard output.
//
//   connload server  --listen ADDR:PORT [--listen ...]
//       Destination server (epoll). The first byte a client sends picks the
//       protocol: 'E' echo every byte (including the 'E'); 'U' upload: read to
//       EOF, answer the byte count (8 bytes); 'D' + 8-byte count: send that
//       many bytes, then close.
//   connload connect --to ADDR:PORT (--seconds S | --count N)
//       Sequential connections: connect, send 'E', read it back, close with
//       SO_LINGER 0. Reports conn/s and p50/p99 of connect+first byte.
//   connload rr      --to ADDR:PORT --seconds S [--size 64]
//       Request/response of SIZE bytes on one connection.
//   connload bulk    --to ADDR:PORT --bytes N
//       Upload N bytes, then download N bytes (one connection each).
//   connload udp-server --listen ADDR:PORT [--listen ...]
//       UDP echo server: each datagram goes back to its source.
//   connload udp-rr  --to ADDR:PORT --seconds S [--size 64] [--connected 0|1]
//       Request/response of SIZE-byte datagrams on one UDP socket, connected
//       or sending with sendto(). Each reply must come from ADDR:PORT
//       (recvfrom()) and carry the request's sequence number; a lost one
//       (100 ms) is counted and resent.
//   connload udp-flows --to ADDR:PORT --seconds S [--connected 0|1]
//       One request/response per new UDP socket, sequentially (each a new
//       flow for a proxy, as a stub resolver's queries are). Reports flows/s
//       and p50/p99 of socket to reply.
//   connload hold    --to ADDR:PORT --conns N --seconds S [--churn-per-s R]
//                    [--watch-pid PID] [--slab-dump PREFIX]
//       Opens N concurrent echo connections, then for S seconds closes and
//       reopens R of them per second. Samples VmRSS of PID and the kernel
//       slab total at each step.
//   connload syscall [--count N]
//       The machine's cost of entering and leaving the kernel: ns per
//       getppid(), the median of 5 batches of N calls (default 200000).
//       A relayed byte costs a proxy at least 3 system calls per direction,
//       so this figure moves every proxy-versus-direct ratio between
//       machines (1.1 us in the PVM guests of bench/RESULTS.md).
//
// Loopback or bench-created namespaces only: run.sh decides the addresses.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "connload: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

struct Target {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
};

Target parse_addr(const std::string& text) {
  Target t;
  std::string host;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  auto* s4 = reinterpret_cast<sockaddr_in*>(&t.ss);
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&t.ss);
  if (inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
    t.len = sizeof *s4;
  } else if (inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(static_cast<uint16_t>(std::stoi(port)));
    t.len = sizeof *s6;
    t.family = AF_INET6;
  } else {
    errno = EINVAL;
    die("bad address " + text);
  }
  return t;
}

bool read_full(int fd, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool write_full(int fd, const void* buf, size_t n) {
  const auto* p = static_cast<const char*>(buf);
  while (n) {
    ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void linger0(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

int connect_to(const Target& t) {
  int fd = socket(t.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  while (connect(fd, reinterpret_cast<const sockaddr*>(&t.ss), t.len) != 0) {
    if (errno == EINTR) continue;
    close(fd);
    return -1;
  }
  return fd;
}

struct Args {
  std::map<std::string, std::vector<std::string>> opt;
  std::string get(const std::string& k, const std::string& dflt = "") const {
    auto it = opt.find(k);
    return it == opt.end() || it->second.empty() ? dflt : it->second.back();
  }
  double num(const std::string& k, double dflt) const {
    auto v = get(k);
    return v.empty() ? dflt : std::stod(v);
  }
};

double pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<long>(i), v.end());
  return v[i];
}

// ---- server ---------------------------------------------------------------

void serve_bulk(int fd, char mode) {
  std::vector<char> buf(256 * 1024, 'x');
  if (mode == 'U') {
    uint64_t total = 0;
    for (;;) {
      ssize_t r = read(fd, buf.data(), buf.size());
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      total += static_cast<uint64_t>(r);
    }
    write_full(fd, &total, sizeof total);
  } else {
    uint64_t want = 0;
    if (read_full(fd, &want, sizeof want)) {
      while (want) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(want, buf.size()));
        if (!write_full(fd, buf.data(), n)) break;
        want -= n;
      }
      shutdown(fd, SHUT_WR);
      while (read(fd, buf.data(), buf.size()) > 0) {
      }
    }
  }
  close(fd);
}

int run_server(const Args& a) {
  signal(SIGPIPE, SIG_IGN);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<int> listeners;
  auto it = a.opt.find("listen");
  if (it == a.opt.end()) {
    std::fprintf(stderr, "connload server: --listen ADDR:PORT required\n");
    return 2;
  }
  for (const auto& l : it->second) {
    Target t = parse_addr(l);
    int fd = socket(t.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, reinterpret_cast<sockaddr*>(&t.ss), t.len) != 0) die("bind " + l);
    if (listen(fd, 4096) != 0) die("listen");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = (1ull << 32) | static_cast<uint32_t>(fd);
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    listeners.push_back(fd);
  }
  std::printf("ready\n");
  std::fflush(stdout);
  std::vector<uint8_t> mode(1 << 20, 0);  // per fd: 0 new, 'E' echo
  std::vector<epoll_event> evs(512);
  std::vector<char> buf(64 * 1024);
  for (;;) {
    int n = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("epoll_wait");
    for (int i = 0; i < n; ++i) {
      int fd = static_cast<int>(evs[i].data.u64 & 0xffffffffu);
      if (evs[i].data.u64 >> 32) {
        for (;;) {
          int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (c < 0) break;
          int one = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          if (static_cast<size_t>(c) >= mode.size()) {
            close(c);
            continue;
          }
          mode[c] = 0;
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLRDHUP;
          ev.data.u64 = static_cast<uint32_t>(c);
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
        }
        continue;
      }
      if (mode[fd] == 0) {
        char m = 0;
        ssize_t r = recv(fd, &m, 1, MSG_PEEK);
        if (r == 1 && (m == 'U' || m == 'D')) {
          epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
          (void)!read(fd, &m, 1);
          std::thread(serve_bulk, fd, m).detach();
          continue;
        }
        if (r == 1) mode[fd] = 'E';
      }
      ssize_t r = read(fd, buf.data(), buf.size());
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        close(fd);
        continue;
      }
      if (!write_full(fd, buf.data(), static_cast<size_t>(r))) {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        close(fd);
      }
    }
  }
}

// ---- clients --------------------------------------------------------------

int run_connect(const Args& a) {
  Target t = parse_addr(a.get("to"));
  double seconds = a.num("seconds", 0);
  long count = static_cast<long>(a.num("count", 0));
  double warmup = a.num("warmup", 0.2);
  std::vector<double> lat;
  lat.reserve(200000);
  long errors = 0;
  auto run_one = [&](bool record) {
    auto t0 = Clock::now();
    int fd = connect_to(t);
    if (fd < 0) {
      ++errors;
      return;
    }
    char c = 'E';
    bool ok = write_full(fd, &c, 1) && read_full(fd, &c, 1);
    auto t1 = Clock::now();
    linger0(fd);
    close(fd);
    if (!ok) ++errors;
    if (record && ok) lat.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  };
  auto w_end = Clock::now() + std::chrono::duration<double>(warmup);
  while (Clock::now() < w_end) run_one(false);
  auto start = Clock::now();
  if (count > 0) {
    for (long i = 0; i < count; ++i) run_one(true);
  } else {
    auto end = start + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) run_one(true);
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  size_t n = lat.size();
  std::printf(
      "{\"mode\":\"connect\",\"conns\":%zu,\"errors\":%ld,\"seconds\":%.3f,\"rate\":%.1f,"
      "\"p50_us\":%.2f,\"p99_us\":%.2f}\n",
      n, errors, secs, static_cast<double>(n) / secs, pct(lat, 0.5), pct(lat, 0.99));
  return errors > static_cast<long>(n / 100) ? 1 : 0;
}

int run_rr(const Args& a) {
  Target t = parse_addr(a.get("to"));
  double seconds = a.num("seconds", 1);
  size_t size = static_cast<size_t>(a.num("size", 64));
  int fd = connect_to(t);
  if (fd < 0) die("connect");
  char c = 'E';
  if (!write_full(fd, &c, 1) || !read_full(fd, &c, 1)) die("echo handshake");
  std::vector<char> buf(size, 'r');
  std::vector<double> lat;
  lat.reserve(1 << 20);
  for (int i = 0; i < 1000; ++i)
    if (!write_full(fd, buf.data(), size) || !read_full(fd, buf.data(), size)) die("rr warmup");
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  auto now = start;
  while (now < end) {
    auto t0 = now;
    if (!write_full(fd, buf.data(), size) || !read_full(fd, buf.data(), size)) die("rr");
    now = Clock::now();
    lat.push_back(std::chrono::duration<double, std::micro>(now - t0).count());
  }
  double secs = std::chrono::duration<double>(now - start).count();
  size_t n = lat.size();
  close(fd);
  std::printf(
      "{\"mode\":\"rr\",\"size\":%zu,\"exchanges\":%zu,\"seconds\":%.3f,\"rate\":%.1f,"
      "\"p50_us\":%.2f,\"p99_us\":%.2f}\n",
      size, n, secs, static_cast<double>(n) / secs, pct(lat, 0.5), pct(lat, 0.99));
  return 0;
}

int run_bulk(const Args& a) {
  Target t = parse_addr(a.get("to"));
  uint64_t bytes = static_cast<uint64_t>(a.num("bytes", 1 << 30));
  std::vector<char> buf(256 * 1024, 'b');
  // Upload.
  int fd = connect_to(t);
  if (fd < 0) die("connect");
  auto t0 = Clock::now();
  char m = 'U';
  write_full(fd, &m, 1);
  for (uint64_t left = bytes; left;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
    if (!write_full(fd, buf.data(), n)) die("upload");
    left -= n;
  }
  shutdown(fd, SHUT_WR);
  uint64_t got = 0;
  if (!read_full(fd, &got, sizeof got) || got != bytes) die("upload count");
  double up = std::chrono::duration<double>(Clock::now() - t0).count();
  close(fd);
  // Download.
  fd = connect_to(t);
  if (fd < 0) die("connect");
  t0 = Clock::now();
  m = 'D';
  write_full(fd, &m, 1);
  write_full(fd, &bytes, sizeof bytes);
  uint64_t total = 0;
  for (;;) {
    ssize_t r = read(fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    total += static_cast<uint64_t>(r);
  }
  double down = std::chrono::duration<double>(Clock::now() - t0).count();
  close(fd);
  if (total != bytes) die("download short");
  std::printf(
      "{\"mode\":\"bulk\",\"bytes\":%llu,\"up_gbps\":%.3f,\"down_gbps\":%.3f,"
      "\"rate\":%.3f}\n",
      static_cast<unsigned long long>(bytes), static_cast<double>(bytes) / up / 1e9,
      static_cast<double>(bytes) / down / 1e9,
      2.0 * static_cast<double>(bytes) / (up + down) / 1e9);
  return 0;
}

long rss_kib(long pid) {
  if (pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return 0;
}

// Total bytes of slab objects in use (root only; 0 otherwise).
long long slab_bytes() {
  std::ifstream in("/proc/slabinfo");
  std::string line;
  long long total = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line.rfind("slabinfo", 0) == 0) continue;
    std::istringstream s(line);
    std::string name;
    long long active = 0, num = 0, size = 0;
    s >> name >> active >> num >> size;
    total += active * size;
  }
  return total;
}

int open_echo(const Target& t) {
  int fd = connect_to(t);
  if (fd < 0) return -1;
  char c = 'E';
  if (!write_full(fd, &c, 1) || !read_full(fd, &c, 1)) {
    close(fd);
    return -1;
  }
  return fd;
}

int run_hold(const Args& a) {
  Target t = parse_addr(a.get("to"));
  size_t conns = static_cast<size_t>(a.num("conns", 10000));
  double seconds = a.num("seconds", 60);
  double churn = a.num("churn-per-s", 200);
  long pid = static_cast<long>(a.num("watch-pid", 0));
  std::string dump = a.get("slab-dump");
  auto snapshot = [&](const char* when) {
    if (dump.empty()) return;
    std::ifstream in("/proc/slabinfo");
    std::ofstream out(dump + "-" + when + ".txt");
    out << in.rdbuf();
  };
  snapshot("before");
  long rss0 = rss_kib(pid);
  long long slab0 = slab_bytes();
  std::vector<int> fds;
  fds.reserve(conns);
  for (size_t i = 0; i < conns; ++i) {
    int fd = open_echo(t);
    if (fd < 0) die("open connection " + std::to_string(i));
    fds.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  long rss1 = rss_kib(pid);
  long long slab1 = slab_bytes();
  snapshot("open");
  std::string samples;
  std::mt19937 rng(42);
  auto start = Clock::now();
  long churned = 0;
  long errors = 0;
  int next_sample = 1;
  long rss_max = rss1;
  for (;;) {
    double el = std::chrono::duration<double>(Clock::now() - start).count();
    if (el >= seconds) break;
    long due = static_cast<long>(el * churn);
    while (churned < due) {
      size_t i = rng() % fds.size();
      close(fds[i]);
      int fd = open_echo(t);
      if (fd < 0) {
        ++errors;
        fd = open_echo(t);
        if (fd < 0) die("reopen");
      }
      fds[i] = fd;
      ++churned;
    }
    if (el >= next_sample) {
      long r = rss_kib(pid);
      rss_max = std::max(rss_max, r);
      // Two appends: GCC 12 -O3 flags `(cond ? "" : ",") + str` with a bogus -Wrestrict.
      if (!samples.empty()) samples += ',';
      samples += std::to_string(r);
      ++next_sample;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  long rss2 = rss_kib(pid);
  long long slab2 = slab_bytes();
  snapshot("after-churn");
  for (int fd : fds) close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  long rss3 = rss_kib(pid);
  long long slab3 = slab_bytes();
  std::printf(
      "{\"mode\":\"hold\",\"conns\":%zu,\"churned\":%ld,\"reopen_errors\":%ld,"
      "\"rss_kib_before\":%ld,\"rss_kib_open\":%ld,\"rss_kib_after_churn\":%ld,"
      "\"rss_kib_max\":%ld,\"rss_kib_closed\":%ld,\"rss_samples_kib\":[%s],"
      "\"slab_before\":%lld,\"slab_open\":%lld,\"slab_after_churn\":%lld,\"slab_closed\":%lld}\n",
      conns, churned, errors, rss0, rss1, rss2, rss_max, rss3, samples.c_str(), slab0, slab1, slab2,
      slab3);
  return 0;
}

// ---- UDP --------------------------------------------------------------------

int run_udp_server(const Args& a) {
  auto it = a.opt.find("listen");
  if (it == a.opt.end()) {
    std::fprintf(stderr, "connload udp-server: --listen ADDR:PORT required\n");
    return 2;
  }
  std::vector<std::thread> threads;
  for (const auto& l : it->second) {
    Target t = parse_addr(l);
    int fd = socket(t.family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (bind(fd, reinterpret_cast<sockaddr*>(&t.ss), t.len) != 0) die("bind " + l);
    threads.emplace_back([fd] {
      std::vector<char> buf(65536);
      for (;;) {
        sockaddr_storage from{};
        socklen_t flen = sizeof from;
        ssize_t n =
            recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &flen);
        if (n < 0) continue;
        sendto(fd, buf.data(), static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), flen);
      }
    });
  }
  std::printf("ready\n");
  std::fflush(stdout);
  for (auto& t : threads) t.join();
  return 0;
}

bool same_sockaddr(const sockaddr_storage& a, const Target& t) {
  if (a.ss_family == AF_INET && t.family == AF_INET) {
    const auto* x = reinterpret_cast<const sockaddr_in*>(&a);
    const auto* y = reinterpret_cast<const sockaddr_in*>(&t.ss);
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6 && t.family == AF_INET6) {
    const auto* x = reinterpret_cast<const sockaddr_in6*>(&a);
    const auto* y = reinterpret_cast<const sockaddr_in6*>(&t.ss);
    return x->sin6_port == y->sin6_port &&
           std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
  }
  return false;
}

// One UDP socket for `t`, connected if asked, with a 100 ms receive timeout.
int udp_socket(const Target& t, bool connected) {
  int fd = socket(t.family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  timeval tv{0, 100 * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connected && connect(fd, reinterpret_cast<const sockaddr*>(&t.ss), t.len) != 0)
    die("connect");
  return fd;
}

// Sends request `seq` and waits for its reply. Returns 1 for a reply from
// `t` with that sequence number, 0 for a lost one (timeout), -1 for a reply
// from elsewhere or with another number (stale: read on).
int udp_exchange(int fd, const Target& t, bool connected, std::vector<char>& buf, uint64_t seq,
                 long& foreign) {
  std::memcpy(buf.data(), &seq, sizeof seq);
  ssize_t s = connected ? send(fd, buf.data(), buf.size(), 0)
                        : sendto(fd, buf.data(), buf.size(), 0,
                                 reinterpret_cast<const sockaddr*>(&t.ss), t.len);
  if (s < 0) die("send");
  std::vector<char> in(buf.size() + 64);
  for (;;) {
    sockaddr_storage from{};
    socklen_t flen = sizeof from;
    ssize_t n = recvfrom(fd, in.data(), in.size(), 0, reinterpret_cast<sockaddr*>(&from), &flen);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      if (errno == ECONNREFUSED) return 0;  // an ICMP error: counted as lost
      die("recvfrom");
    }
    uint64_t got = 0;
    if (static_cast<size_t>(n) >= sizeof got) std::memcpy(&got, in.data(), sizeof got);
    if (!same_sockaddr(from, t)) {
      ++foreign;  // a reply whose source is not the destination: transparency broken
      continue;
    }
    if (got == seq) return 1;
  }
}

int run_udp_rr(const Args& a) {
  Target t = parse_addr(a.get("to"));
  double seconds = a.num("seconds", 1);
  size_t size = std::max<size_t>(static_cast<size_t>(a.num("size", 64)), 8);
  bool connected = a.num("connected", 0) != 0;
  int fd = udp_socket(t, connected);
  std::vector<char> buf(size, 'r');
  long lost = 0, foreign = 0;
  uint64_t seq = 0;
  for (int i = 0; i < 1000; ++i) udp_exchange(fd, t, connected, buf, ++seq, foreign);
  std::vector<double> lat;
  lat.reserve(1 << 20);
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  auto now = start;
  while (now < end) {
    auto t0 = now;
    int r = udp_exchange(fd, t, connected, buf, ++seq, foreign);
    now = Clock::now();
    if (r == 1)
      lat.push_back(std::chrono::duration<double, std::micro>(now - t0).count());
    else
      ++lost;
  }
  double secs = std::chrono::duration<double>(now - start).count();
  size_t n = lat.size();
  close(fd);
  std::printf(
      "{\"mode\":\"udp-rr\",\"connected\":%s,\"size\":%zu,\"exchanges\":%zu,"
      "\"lost\":%ld,\"foreign_source\":%ld,\"seconds\":%.3f,\"rate\":%.1f,"
      "\"p50_us\":%.2f,\"p99_us\":%.2f}\n",
      connected ? "true" : "false", size, n, lost, foreign, secs, static_cast<double>(n) / secs,
      pct(lat, 0.5), pct(lat, 0.99));
  return foreign || n == 0 ? 1 : 0;
}

int run_udp_flows(const Args& a) {
  Target t = parse_addr(a.get("to"));
  double seconds = a.num("seconds", 1);
  bool connected = a.num("connected", 0) != 0;
  std::vector<char> buf(64, 'f');
  long lost = 0, foreign = 0;
  std::vector<double> lat;
  lat.reserve(1 << 20);
  uint64_t seq = 0;
  auto start = Clock::now();
  auto end = start + std::chrono::duration<double>(seconds);
  auto now = start;
  while (now < end) {
    auto t0 = now;
    int fd = udp_socket(t, connected);
    int r = 0;
    // A lost datagram is resent on the same socket (a resolver's retry).
    for (int tries = 0; tries < 3 && r != 1; ++tries) {
      r = udp_exchange(fd, t, connected, buf, ++seq, foreign);
      if (r != 1) ++lost;
    }
    close(fd);
    now = Clock::now();
    if (r == 1) lat.push_back(std::chrono::duration<double, std::micro>(now - t0).count());
  }
  double secs = std::chrono::duration<double>(now - start).count();
  size_t n = lat.size();
  std::printf(
      "{\"mode\":\"udp-flows\",\"connected\":%s,\"flows\":%zu,\"lost\":%ld,"
      "\"foreign_source\":%ld,\"seconds\":%.3f,\"rate\":%.1f,\"p50_us\":%.2f,"
      "\"p99_us\":%.2f}\n",
      connected ? "true" : "false", n, lost, foreign, secs, static_cast<double>(n) / secs,
      pct(lat, 0.5), pct(lat, 0.99));
  return foreign || n == 0 ? 1 : 0;
}

int run_syscall(const Args& a) {
  const long n = static_cast<long>(a.num("count", 200000));
  if (n <= 0) {
    std::fprintf(stderr, "connload syscall: --count must be positive\n");
    return 2;
  }
  std::vector<double> ns;
  for (int batch = 0; batch < 5; ++batch) {
    auto t0 = Clock::now();
    for (long i = 0; i < n; ++i) (void)getppid();  // glibc never caches it
    ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() /
                 static_cast<double>(n));
  }
  std::sort(ns.begin(), ns.end());
  std::printf(
      "{\"mode\":\"syscall\",\"calls\":%ld,\"ns_per_syscall\":%.1f,\"min\":%.1f,"
      "\"max\":%.1f}\n",
      5 * n, ns[2], ns[0], ns[4]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: connload server|connect|rr|bulk|hold|udp-server|udp-rr|udp-flows|syscall\n"
                 "                [--OPTION VALUE ...]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  Args a;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) {
      std::fprintf(stderr, "connload: expected --OPTION VALUE, got %s\n", argv[i]);
      return 2;
    }
    a.opt[k.substr(2)].push_back(argv[++i]);
  }
  std::string mode = argv[1];
  if (mode == "server") return run_server(a);
  if (mode == "connect") return run_connect(a);
  if (mode == "rr") return run_rr(a);
  if (mode == "bulk") return run_bulk(a);
  if (mode == "hold") return run_hold(a);
  if (mode == "udp-server") return run_udp_server(a);
  if (mode == "udp-rr") return run_udp_rr(a);
  if (mode == "udp-flows") return run_udp_flows(a);
  if (mode == "syscall") return run_syscall(a);
  std::fprintf(stderr, "connload: unknown mode %s\n", mode.c_str());
  return 2;
}
