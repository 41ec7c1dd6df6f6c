#include "harness_load.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <unordered_map>

#include "connredir/address.hpp"

namespace connredir::test {
namespace {

using Clock = std::chrono::steady_clock;

int64_t ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

long sys_bpf(int cmd, bpf_attr& attr) { return syscall(__NR_bpf, cmd, &attr, sizeof attr); }

// Opens a pinned map; returns its fd and key/value sizes.
int open_map(const std::string& pin_dir, const std::string& name, bpf_map_info* info) {
  std::string path = pin_dir + "/maps/" + name;
  bpf_attr a{};
  a.pathname = reinterpret_cast<uint64_t>(path.c_str());
  int fd = static_cast<int>(sys_bpf(BPF_OBJ_GET, a));
  if (fd < 0) return -1;
  bpf_attr ia{};
  *info = bpf_map_info{};
  ia.info.bpf_fd = static_cast<uint32_t>(fd);
  ia.info.info_len = sizeof *info;
  ia.info.info = reinterpret_cast<uint64_t>(info);
  if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, ia) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// Every key of a map (BPF_MAP_GET_NEXT_KEY walk).
std::vector<std::vector<uint8_t>> map_keys(int fd, uint32_t key_size) {
  std::vector<std::vector<uint8_t>> keys;
  std::vector<uint8_t> cur(key_size), next(key_size);
  bool first = true;
  for (;;) {
    bpf_attr a{};
    a.map_fd = static_cast<uint32_t>(fd);
    a.key = first ? 0 : reinterpret_cast<uint64_t>(cur.data());
    a.next_key = reinterpret_cast<uint64_t>(next.data());
    if (sys_bpf(BPF_MAP_GET_NEXT_KEY, a) != 0) break;
    keys.push_back(next);
    cur = next;
    first = false;
  }
  return keys;
}

}  // namespace

bool raise_nofile(uint64_t n) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return false;
  if (rl.rlim_cur >= n) return true;
  // The hard limit can only be raised with CAP_SYS_RESOURCE; without it
  // (some sandboxes) settle for the hard limit if that is enough.
  rlimit want{std::max<rlim_t>(rl.rlim_cur, n), std::max<rlim_t>(rl.rlim_max, n)};
  if (setrlimit(RLIMIT_NOFILE, &want) == 0) return true;
  if (rl.rlim_max < n) return false;
  want = {n, rl.rlim_max};
  return setrlimit(RLIMIT_NOFILE, &want) == 0;
}

long map_count(const std::string& pin_dir, const std::string& name) {
  bpf_map_info info{};
  int fd = open_map(pin_dir, name, &info);
  if (fd < 0) return -1;
  long n = static_cast<long>(map_keys(fd, info.key_size).size());
  close(fd);
  return n;
}

uint32_t map_capacity(const std::string& pin_dir, const std::string& name) {
  bpf_map_info info{};
  int fd = open_map(pin_dir, name, &info);
  if (fd < 0) return 0;
  close(fd);
  return info.max_entries;
}

bool map_zero_value(const std::string& pin_dir, const std::string& name, uint32_t key) {
  bpf_map_info info{};
  int fd = open_map(pin_dir, name, &info);
  if (fd < 0) return false;
  if (info.key_size != sizeof key) {
    close(fd);
    errno = EINVAL;
    return false;
  }
  std::vector<uint8_t> value(info.value_size);
  bpf_attr a{};
  a.map_fd = static_cast<uint32_t>(fd);
  a.key = reinterpret_cast<uint64_t>(&key);
  a.value = reinterpret_cast<uint64_t>(value.data());
  a.flags = BPF_ANY;
  bool ok = sys_bpf(BPF_MAP_UPDATE_ELEM, a) == 0;
  int e = errno;
  close(fd);
  errno = e;
  return ok;
}

long map_fill(const std::string& pin_dir, const std::string& name, uint64_t tag, long n, int* err) {
  *err = 0;
  bpf_map_info info{};
  int fd = open_map(pin_dir, name, &info);
  if (fd < 0) {
    *err = errno;
    return 0;
  }
  std::vector<uint8_t> key(info.key_size), value(info.value_size);
  long done = 0;
  for (uint64_t i = 0; done < n; i++) {
    std::memcpy(key.data(), &tag, 8);
    std::memcpy(key.data() + 8, &i, 8);
    bpf_attr a{};
    a.map_fd = static_cast<uint32_t>(fd);
    a.key = reinterpret_cast<uint64_t>(key.data());
    a.value = reinterpret_cast<uint64_t>(value.data());
    a.flags = BPF_NOEXIST;
    if (sys_bpf(BPF_MAP_UPDATE_ELEM, a) != 0) {
      *err = errno;
      break;
    }
    done++;
  }
  close(fd);
  return done;
}

long map_unfill(const std::string& pin_dir, const std::string& name, uint64_t tag) {
  bpf_map_info info{};
  int fd = open_map(pin_dir, name, &info);
  if (fd < 0) return 0;
  long n = 0;
  for (auto& k : map_keys(fd, info.key_size)) {
    uint64_t t;
    std::memcpy(&t, k.data(), 8);
    if (t != tag) continue;
    bpf_attr a{};
    a.map_fd = static_cast<uint32_t>(fd);
    a.key = reinterpret_cast<uint64_t>(k.data());
    if (sys_bpf(BPF_MAP_DELETE_ELEM, a) == 0) n++;
  }
  close(fd);
  return n;
}

// ---- LoadEchoServer -----------------------------------------------------------

namespace {
struct EchoConn {
  int fd = -1;
  uint64_t in = 0;        // bytes read
  uint64_t out = 0;       // bytes written
  uint64_t close_at = 0;  // close after echoing this many (0: hold)
  std::string pending;    // read but not yet written back
  unsigned char hdr[sizeof(LoadHeader)];
  bool peer_eof = false;
};
}  // namespace

LoadEchoServer::LoadEchoServer(const std::string& host) {
  v6_ = host.find(':') != std::string::npos;
  sockaddr_storage ss{};
  socklen_t len;
  if (v6_) {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr);
    len = sizeof *s6;
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    inet_pton(AF_INET, host.c_str(), &s4->sin_addr);
    len = sizeof *s4;
  }
  fd_ = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (v6_) setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd_, 4096) != 0) return;
  socklen_t sl = sizeof ss;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &sl);
  port_ = ntohs(v6_ ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                    : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  epoll_ctl(ep_, EPOLL_CTL_ADD, fd_, &ev);
  ev.data.u64 = 1;
  epoll_ctl(ep_, EPOLL_CTL_ADD, stop_fd_, &ev);
  thread_ = std::thread([this] { loop(); });
}

LoadEchoServer::~LoadEchoServer() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!write(stop_fd_, &one, sizeof one);
    thread_.join();
  }
  for (int fd : {fd_, ep_, stop_fd_})
    if (fd >= 0) close(fd);
}

std::string LoadEchoServer::addr() const {
  return v6_ ? "[::1]:" + std::to_string(port_) : "127.0.0.1:" + std::to_string(port_);
}

void LoadEchoServer::loop() {
  std::unordered_map<int, EchoConn> conns;
  auto drop = [&](EchoConn& c) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    open_--;
    conns.erase(c.fd);
  };
  auto flush = [&](EchoConn& c) -> bool {  // false: connection gone
    while (!c.pending.empty()) {
      ssize_t w = send(c.fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN) return true;
        if (errno == ECONNRESET || errno == EPIPE) resets_++;
        drop(c);
        return false;
      }
      c.out += static_cast<uint64_t>(w);
      c.pending.erase(0, static_cast<size_t>(w));
    }
    if ((c.close_at && c.out >= c.close_at) || c.peer_eof) {
      drop(c);
      return false;
    }
    return true;
  };
  std::vector<epoll_event> evs(512);
  char buf[65536];
  for (;;) {
    int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 1000);
    for (int i = 0; i < n; i++) {
      uint64_t tag = evs[i].data.u64;
      if (tag == 1) {
        for (auto& [fd, c] : conns) close(fd);
        return;
      }
      if (tag == 0) {
        for (;;) {
          int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
          if (c < 0) break;
          accepted_++;
          long now = ++open_;
          long p = peak_;
          while (now > p && !peak_.compare_exchange_weak(p, now)) {
          }
          EchoConn& ec = conns[c];
          ec.fd = c;
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
          ev.data.u64 = static_cast<uint64_t>(c) + 2;
          epoll_ctl(ep_, EPOLL_CTL_ADD, c, &ev);
        }
        continue;
      }
      int fd = static_cast<int>(tag - 2);
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      EchoConn& c = it->second;
      if (!flush(c)) continue;
      bool gone = false;
      for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0) {
          if (errno == EAGAIN) break;
          if (errno == ECONNRESET) resets_++;
          drop(c);
          gone = true;
          break;
        }
        if (r == 0) {
          c.peer_eof = true;
          break;
        }
        for (ssize_t k = 0; k < r; k++) {
          if (c.in + static_cast<uint64_t>(k) < sizeof(LoadHeader))
            c.hdr[c.in + static_cast<uint64_t>(k)] = static_cast<unsigned char>(buf[k]);
        }
        c.in += static_cast<uint64_t>(r);
        bytes_ += static_cast<uint64_t>(r);
        if (c.close_at == 0 && c.in >= sizeof(LoadHeader)) {
          LoadHeader h;
          std::memcpy(&h, c.hdr, sizeof h);
          if (h.magic == kLoadMagic && (h.flags & kCloseAfterEcho))
            c.close_at = sizeof(LoadHeader) + h.len;
        }
        c.pending.append(buf, static_cast<size_t>(r));
        if (!flush(c)) {
          gone = true;
          break;
        }
      }
      if (!gone) flush(c);
    }
  }
}

// ---- Clients -----------------------------------------------------------------------

namespace {

struct Stats {
  long conns = 0, ok = 0, corrupt = 0, resets = 0, errors = 0;
  uint64_t bytes = 0;
  std::string first_error;
  void error(int e, const std::string& what) {
    if (e == ECONNRESET || e == EPIPE)
      resets++;
    else
      errors++;
    if (first_error.empty()) first_error = what + ":" + strerrorname_np(e);
  }
};

bool parse_dst(const std::string& dst, sockaddr_storage& ss, socklen_t& len) {
  auto a = Address::parse(dst);
  if (!a) return false;
  len = a->to_sockaddr(ss);
  return true;
}

std::string header_and_payload(uint32_t seed, uint32_t len, uint32_t flags) {
  LoadHeader h{kLoadMagic, len, flags, seed};
  std::string s(reinterpret_cast<const char*>(&h), sizeof h);
  s.reserve(sizeof h + len);
  for (uint32_t j = 0; j < len; j++) s.push_back(static_cast<char>(load_byte(seed, j)));
  return s;
}

}  // namespace

std::string hold_many(const std::vector<std::string>& dsts, int n, size_t payload, int connecting,
                      int timeout_ms) {
  std::vector<sockaddr_storage> sss(dsts.size());
  std::vector<socklen_t> sls(dsts.size());
  for (size_t i = 0; i < dsts.size(); i++)
    if (!parse_dst(dsts[i], sss[i], sls[i])) return "error=bad-address";
  struct C {
    int fd = -1;
    int state = 0;  // 0 connecting, 1 sending, 2 reading, 3 verified, 4 failed
    std::string out;
    size_t sent = 0;
    size_t got = 0;
  };
  std::vector<C> cs(static_cast<size_t>(n));
  Stats st;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int next = 0, in_flight = 0, verified = 0, failed = 0;
  auto t0 = Clock::now();
  auto fail = [&](C& c, int e, const char* what) {
    st.error(e, what);
    c.state = 4;
    failed++;
    if (c.fd >= 0) {
      epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
      close(c.fd);
      c.fd = -1;
    }
  };
  char buf[65536];
  std::vector<epoll_event> evs(1024);
  while (verified + failed < n && ms_since(t0) < timeout_ms) {
    while (next < n && in_flight < connecting) {
      C& c = cs[static_cast<size_t>(next)];
      c.out =
          header_and_payload(static_cast<uint32_t>(next) + 1, static_cast<uint32_t>(payload), 0);
      const sockaddr_storage& ss = sss[static_cast<size_t>(next) % sss.size()];
      const socklen_t sl = sls[static_cast<size_t>(next) % sss.size()];
      c.fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (c.fd < 0) {
        fail(c, errno, "socket");
        next++;
        continue;
      }
      st.conns++;
      if (connect(c.fd, reinterpret_cast<const sockaddr*>(&ss), sl) != 0 && errno != EINPROGRESS) {
        fail(c, errno, "connect");
        next++;
        continue;
      }
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
      ev.data.u64 = static_cast<uint64_t>(next);
      epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
      in_flight++;
      next++;
    }
    int k = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 200);
    for (int i = 0; i < k; i++) {
      size_t idx = evs[i].data.u64;
      C& c = cs[idx];
      if (c.state >= 3) continue;
      if (c.state == 0) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
          in_flight--;
          fail(c, err, "connect");
          continue;
        }
        if (!(evs[i].events & EPOLLOUT)) continue;
        c.state = 1;
        in_flight--;
      }
      while (c.state == 1 && c.sent < c.out.size()) {
        ssize_t w = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
        if (w < 0) {
          if (errno != EAGAIN) fail(c, errno, "send");
          break;
        }
        c.sent += static_cast<size_t>(w);
      }
      if (c.state == 1 && c.sent == c.out.size()) c.state = 2;
      while (c.state == 1 || c.state == 2) {
        ssize_t r = recv(c.fd, buf, sizeof buf, 0);
        if (r < 0) {
          if (errno != EAGAIN) fail(c, errno, "recv");
          break;
        }
        if (r == 0) {
          fail(c, EPIPE, "early-eof");
          st.resets--;  // an EOF is not a reset: count it as an error
          st.errors++;
          break;
        }
        for (ssize_t j = 0; j < r; j++) {
          if (c.got + static_cast<size_t>(j) >= c.out.size() ||
              buf[j] != c.out[c.got + static_cast<size_t>(j)]) {
            st.corrupt++;
            fail(c, EBADMSG, "corrupt");
            st.errors--;
            break;
          }
        }
        if (c.state == 4) break;
        c.got += static_cast<size_t>(r);
        st.bytes += static_cast<uint64_t>(r);
        if (c.got == c.out.size()) {
          c.state = 3;
          verified++;
          st.ok++;
          c.out.clear();
          c.out.shrink_to_fit();
        }
      }
    }
  }
  // Everything verified is still open here: that is the concurrency.
  long still_open = 0;
  for (auto& c : cs) {
    if (c.fd < 0) continue;
    if (c.state == 3) still_open++;
    close(c.fd);
  }
  close(ep);
  std::ostringstream o;
  o << "opened=" << st.conns << " verified=" << verified << " held=" << still_open
    << " corrupt=" << st.corrupt << " resets=" << st.resets << " errors=" << st.errors
    << " unfinished=" << (n - verified - failed) << " bytes=" << st.bytes
    << " first_error=" << (st.first_error.empty() ? "none" : st.first_error);
  return o.str();
}

std::string churn(const std::string& dst, int workers, int seconds, size_t max_payload,
                  long count) {
  sockaddr_storage ss{};
  socklen_t sl = 0;
  if (!parse_dst(dst, ss, sl)) return "error=bad-address";
  std::mutex mu;
  Stats total;
  auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int w = 0; w < workers; w++) {
    ts.emplace_back([&, w] {
      Stats st;
      std::mt19937 rng(static_cast<uint32_t>(w) * 7919u + 1);
      std::vector<char> buf(65536);
      uint32_t seq = 0;
      while (count > 0 ? st.conns < count : ms_since(t0) < seconds * 1000L) {
        uint32_t seed = (static_cast<uint32_t>(w) << 24) ^ ++seq;
        uint32_t len = 1 + static_cast<uint32_t>(rng() % max_payload);
        std::string out = header_and_payload(seed, len, kCloseAfterEcho);
        st.conns++;
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
          st.error(errno, "socket");
          continue;
        }
        timeval tv{20, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, reinterpret_cast<sockaddr*>(&ss), sl) != 0) {
          st.error(errno, "connect");
          close(fd);
          continue;
        }
        // Payloads stay well under the socket buffers along the chain, so
        // writing everything before reading cannot deadlock.
        size_t off = 0;
        bool bad = false;
        while (off < out.size()) {
          ssize_t n = send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
          if (n <= 0) {
            st.error(n < 0 ? errno : EPIPE, "send");
            bad = true;
            break;
          }
          off += static_cast<size_t>(n);
        }
        size_t got = 0;
        while (!bad) {
          ssize_t n = recv(fd, buf.data(), buf.size(), 0);
          if (n < 0) {
            st.error(errno, "recv");
            bad = true;
            break;
          }
          if (n == 0) break;
          for (ssize_t j = 0; j < n && !bad; j++)
            if (got + static_cast<size_t>(j) >= out.size() ||
                buf[static_cast<size_t>(j)] != out[got + static_cast<size_t>(j)]) {
              st.corrupt++;
              bad = true;
              if (st.first_error.empty()) st.first_error = "corrupt";
            }
          got += static_cast<size_t>(n);
        }
        if (!bad && got != out.size()) {
          st.errors++;
          if (st.first_error.empty())
            st.first_error = "short:" + std::to_string(got) + "/" + std::to_string(out.size());
          bad = true;
        }
        close(fd);
        if (!bad) {
          st.ok++;
          st.bytes += got;
        }
      }
      std::lock_guard<std::mutex> g(mu);
      total.conns += st.conns;
      total.ok += st.ok;
      total.corrupt += st.corrupt;
      total.resets += st.resets;
      total.errors += st.errors;
      total.bytes += st.bytes;
      if (total.first_error.empty()) total.first_error = st.first_error;
    });
  }
  for (auto& t : ts) t.join();
  std::ostringstream o;
  o << "conns=" << total.conns << " ok=" << total.ok << " corrupt=" << total.corrupt
    << " resets=" << total.resets << " errors=" << total.errors << " bytes=" << total.bytes
    << " first_error=" << (total.first_error.empty() ? "none" : total.first_error);
  return o.str();
}

long kv(const std::string& text, const std::string& key) {
  std::istringstream ss(text);
  std::string tok;
  while (ss >> tok) {
    auto eq = tok.find('=');
    if (eq == std::string::npos || tok.substr(0, eq) != key) continue;
    try {
      return std::stol(tok.substr(eq + 1));
    } catch (...) {
      return -1;
    }
  }
  return -1;
}

LogCount count_log(const std::string& path) {
  LogCount c;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    c.lines++;
    if (line.find("\"result\":\"ok\"") != std::string::npos) c.ok++;
  }
  return c;
}

long tcp_socket_count() {
  long n = 0;
  for (const char* f : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream ss(read_file(f));
    std::string line;
    std::getline(ss, line);
    while (std::getline(ss, line)) {
      std::istringstream ls(line);
      std::string sl, local, remote, state;
      ls >> sl >> local >> remote >> state;
      if (state != "06" && state != "0A") n++;  // not TIME_WAIT, not LISTEN
    }
  }
  return n;
}

// ---- ChainFixture -------------------------------------------------------------------

long ChainFixture::two_hop_lines(const std::string& log) {
  uint32_t a = callout_id("vendor-a"), b = callout_id("vendor-b");
  std::ifstream in(log);
  std::string line;
  long n = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("chain") || j["chain"].size() != 2) continue;
    if (j["chain"][0].value("callout_id", 0u) == a && j["chain"][1].value("callout_id", 0u) == b)
      n++;
  }
  return n;
}

void ChainFixture::register_chain(const std::string& dst_ip, int dst_port,
                                  const std::vector<std::string>& callout_extra) {
  for (char v : {'a', 'b'}) {
    std::string name = std::string("vendor-") + v;
    int port = v == 'a' ? kPortA : kPortB;
    int uid = v == 'a' ? kUidA : kUidB;
    add_vendor(name, port, uid, dst_ip, static_cast<uint16_t>(dst_port), v == 'a' ? 200 : 100,
               callout_extra);
  }
}

Process& ChainFixture::start_vendor(char v, const std::vector<std::string>& extra) {
  std::string name = std::string("vendor-") + v;
  int port = v == 'a' ? kPortA : kPortB;
  int uid = v == 'a' ? kUidA : kUidB;
  return start_proxy(name, uid, "127.0.0.1:" + std::to_string(port), extra);
}

}  // namespace connredir::test
