#include "harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "connredir/address.hpp"

namespace connredir::test {
namespace {

using Clock = std::chrono::steady_clock;

int64_t ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

bool write_file(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = ::write(fd, text.data(), text.size());
  ::close(fd);
  return n == static_cast<ssize_t>(text.size());
}

// In a forked child: join the cgroup, then drop privileges. _exit on failure
// so a misconfigured actor can never run in the wrong place.
void enter(const std::string& cgroup, int uid) {
  if (!cgroup.empty() && !write_file(cgroup + "/cgroup.procs", std::to_string(getpid()))) {
    dprintf(2, "harness: cannot join cgroup %s: %s\n", cgroup.c_str(), strerror(errno));
    _exit(120);
  }
  if (uid >= 0) {
    if (setgroups(0, nullptr) != 0 || setgid(static_cast<gid_t>(uid)) != 0 ||
        setuid(static_cast<uid_t>(uid)) != 0) {
      dprintf(2, "harness: cannot drop to uid %d: %s\n", uid, strerror(errno));
      _exit(121);
    }
  }
}

bool wait_pid(pid_t pid, int timeout_ms, int* status) {
  auto t0 = Clock::now();
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid) return true;
    if (r < 0) return false;
    if (ms_since(t0) > timeout_ms) return false;
    usleep(2000);
  }
}

// Kill every process in a cgroup (and its children) and wait until empty.
void empty_cgroup(const std::string& cg) {
  if (::access((cg + "/cgroup.kill").c_str(), F_OK) == 0) write_file(cg + "/cgroup.kill", "1");
  for (int i = 0; i < 500; i++) {
    std::string procs = read_file(cg + "/cgroup.procs");
    if (procs.find_first_not_of(" \n") == std::string::npos) return;
    std::istringstream ss(procs);
    pid_t p;
    while (ss >> p) ::kill(p, SIGKILL);
    usleep(10000);
  }
}

}  // namespace

std::map<std::string, double> metric_samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

CmdResult promtool_check(const std::string& text, const std::string& file) {
  {
    std::ofstream out(file);
    out << text;
  }
  return run({"/bin/sh", "-c", "/usr/bin/promtool check metrics < " + file}, 120000);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool lo_up() {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  bool ok = ioctl(fd, SIOCGIFFLAGS, &ifr) == 0;
  ifr.ifr_flags |= IFF_UP;
  ok = ok && ioctl(fd, SIOCSIFFLAGS, &ifr) == 0;
  ::close(fd);
  return ok;
}

std::string cgroup2_root() {
  std::ifstream in("/proc/mounts");
  std::string dev, dir, type, rest;
  while (in >> dev >> dir >> type) {
    std::getline(in, rest);
    if (type == "cgroup2") return dir;
  }
  return "";
}

CmdResult run(const std::vector<std::string>& argv, int timeout_ms) {
  CmdResult res;
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return res;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    dup2(p[1], 2);
    std::vector<char*> av;
    for (auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
    av.push_back(nullptr);
    execv(av[0], av.data());
    dprintf(2, "exec %s: %s\n", av[0], strerror(errno));
    _exit(127);
  }
  ::close(p[1]);
  auto t0 = Clock::now();
  char buf[4096];
  for (;;) {
    pollfd pfd{p[0], POLLIN, 0};
    int left = timeout_ms - static_cast<int>(ms_since(t0));
    if (left <= 0) {
      ::kill(pid, SIGKILL);
      res.out += "\n[harness: timed out]";
      break;
    }
    if (poll(&pfd, 1, left) <= 0) continue;
    ssize_t n = read(p[0], buf, sizeof buf);
    if (n <= 0) break;
    res.out.append(buf, static_cast<size_t>(n));
  }
  ::close(p[0]);
  int st = 0;
  if (wait_pid(pid, 5000, &st) && WIFEXITED(st)) res.status = WEXITSTATUS(st);
  return res;
}

std::string Child::wait(int timeout_ms) {
  std::string out;
  if (pid < 0) return out;
  auto t0 = Clock::now();
  char buf[4096];
  for (;;) {
    int left = timeout_ms - static_cast<int>(ms_since(t0));
    if (left <= 0) {
      ADD_FAILURE() << "child " << pid << " timed out";
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd pfd{result_fd, POLLIN, 0};
    if (poll(&pfd, 1, left) <= 0) continue;
    ssize_t n = read(result_fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  int st = 0;
  wait_pid(pid, 5000, &st);
  pid = -1;
  return out;
}

Child::~Child() {
  if (pid > 0) {
    ::kill(pid, SIGKILL);
    int st;
    wait_pid(pid, 5000, &st);
  }
  if (result_fd >= 0) ::close(result_fd);
}

std::unique_ptr<Child> fork_in(const std::string& cgroup, int uid,
                               const std::function<std::string()>& fn) {
  auto c = std::make_unique<Child>();
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return c;
  pid_t pid = fork();
  if (pid == 0) {
    ::close(p[0]);
    enter(cgroup, uid);
    std::string r = fn();
    size_t off = 0;
    while (off < r.size()) {
      ssize_t n = write(p[1], r.data() + off, r.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    _exit(0);
  }
  ::close(p[1]);
  c->pid = pid;
  c->result_fd = p[0];
  return c;
}

std::string run_in(const std::string& cgroup, int uid, const std::function<std::string()>& fn,
                   int timeout_ms) {
  return fork_in(cgroup, uid, fn)->wait(timeout_ms);
}

void Process::stop() {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  int st;
  if (!wait_pid(pid, 3000, &st)) {
    ::kill(pid, SIGKILL);
    wait_pid(pid, 3000, &st);
  }
  pid = -1;
}

std::unique_ptr<Process> spawn_in(const std::string& cgroup, int uid,
                                  const std::vector<std::string>& argv,
                                  const std::string& output_file) {
  auto proc = std::make_unique<Process>();
  proc->log = output_file;
  pid_t pid = fork();
  if (pid == 0) {
    int fd = ::open(output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    enter(cgroup, uid);
    std::vector<char*> av;
    for (auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
    av.push_back(nullptr);
    execv(av[0], av.data());
    dprintf(2, "exec %s: %s\n", av[0], strerror(errno));
    _exit(127);
  }
  proc->pid = pid;
  return proc;
}

bool wait_listening(int port, int timeout_ms, int family, bool udp) {
  char want[16];
  snprintf(want, sizeof want, ":%04X", port);
  std::vector<const char*> files;
  if (family != AF_INET6) files.push_back(udp ? "/proc/net/udp" : "/proc/net/tcp");
  if (family != AF_INET) files.push_back(udp ? "/proc/net/udp6" : "/proc/net/tcp6");
  // A listener is LISTEN (0A); a bound, unconnected UDP socket is CLOSE (07).
  const char* bound = udp ? "07" : "0A";
  auto t0 = Clock::now();
  while (ms_since(t0) < timeout_ms) {
    for (const char* f : files) {
      std::istringstream ss(read_file(f));
      std::string line;
      std::getline(ss, line);
      while (std::getline(ss, line)) {
        std::istringstream ls(line);
        std::string sl, local, remote, state;
        ls >> sl >> local >> remote >> state;
        if (state == bound && local.size() > 5 && local.substr(local.size() - 5) == want)
          return true;
      }
    }
    usleep(5000);
  }
  return false;
}

std::vector<nlohmann::json> read_json_lines(const std::string& path, size_t n, int timeout_ms) {
  std::vector<nlohmann::json> out;
  auto t0 = Clock::now();
  for (;;) {
    out.clear();
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded()) out.push_back(j);
    }
    if (out.size() >= n || ms_since(t0) > timeout_ms) return out;
    usleep(10000);
  }
}

EchoServer::EchoServer(const std::string& addr_port, int type) : type_(type) {
  // "HOST:0" asks for an ephemeral port; Address::parse rightly refuses port
  // 0, so parse the host alone.
  std::string host = addr_port;
  bool ephemeral = host.size() > 2 && host.compare(host.size() - 2, 2, ":0") == 0;
  if (ephemeral) host.resize(host.size() - 2);
  if (ephemeral && !host.empty() && host.front() == '[') host = host.substr(1, host.size() - 2);
  auto a = Address::parse(host, ephemeral);
  if (!a) {
    ADD_FAILURE() << a.error().message;
    return;
  }
  sockaddr_storage ss{};
  socklen_t len = a->to_sockaddr(ss);
  family_ = a->family;
  host_ = a->ip_string();
  fd_ = socket(family_, type_ | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family_ == AF_INET6) setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
      (type_ == SOCK_STREAM && listen(fd_, 512) != 0)) {
    ADD_FAILURE() << "echo server bind/listen " << addr_port << ": " << strerror(errno);
    return;
  }
  socklen_t sl = sizeof ss;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &sl);
  auto bound = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sl);
  port_ = bound ? bound->port : 0;
  thread_ = std::thread([this] { type_ == SOCK_DGRAM ? datagram_loop() : loop(); });
}

void EchoServer::datagram_loop() {
  std::vector<char> buf(65536);
  while (!stop_) {
    pollfd pfd{fd_, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    ssize_t n =
        recvfrom(fd_, buf.data(), buf.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&ss), &sl);
    if (n < 0) continue;
    auto peer = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sl);
    {
      std::lock_guard<std::mutex> g(mu_);
      peers_.push_back(peer ? peer->to_string() : "?");
    }
    (void)sendto(fd_, buf.data(), static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&ss), sl);
  }
}

std::string udp_roundtrip(const std::string& addr_port, const std::string& payload, bool connected,
                          int family_override) {
  auto a = Address::parse(addr_port);
  if (!a) return "ERR:bad address";
  sockaddr_storage ss{};
  socklen_t len = family_override == AF_INET6 ? a->to_sockaddr6(ss) : a->to_sockaddr(ss);
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("ERR:socket ") + strerror(errno);
  timeval tv{3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string err;
  ssize_t sent = -1;
  if (connected && connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0)
    err = std::string("ERR:connect ") + strerror(errno);
  else if (connected)
    sent = send(fd, payload.data(), payload.size(), 0);
  else
    sent = sendto(fd, payload.data(), payload.size(), 0, reinterpret_cast<sockaddr*>(&ss), len);
  if (err.empty() && sent < 0) err = std::string("ERR:send ") + strerror(errno);
  std::string got;
  if (err.empty()) {
    std::vector<char> buf(65536);
    ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n < 0)
      err = std::string("ERR:recv ") + strerror(errno);
    else
      got.assign(buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  return err.empty() ? got : err;
}

EchoServer::~EchoServer() {
  stop_ = true;
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
}

std::string EchoServer::addr() const {
  return family_ == AF_INET6 ? "[" + host_ + "]:" + std::to_string(port_)
                             : host_ + ":" + std::to_string(port_);
}

std::vector<std::string> EchoServer::peers() {
  std::lock_guard<std::mutex> g(mu_);
  return peers_;
}

void EchoServer::loop() {
  std::vector<std::thread> workers;
  while (!stop_) {
    pollfd pfd{fd_, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    int c = accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_CLOEXEC);
    if (c < 0) continue;
    auto peer = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sl);
    {
      std::lock_guard<std::mutex> g(mu_);
      peers_.push_back(peer ? peer->to_string() : "?");
    }
    workers.emplace_back([c] {
      timeval tv{10, 0};
      setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char buf[65536];
      for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        ssize_t off = 0;
        while (off < n) {
          ssize_t w = write(c, buf + off, static_cast<size_t>(n - off));
          if (w <= 0) break;
          off += w;
        }
      }
      ::shutdown(c, SHUT_WR);
      ::close(c);
    });
  }
  for (auto& w : workers) w.join();
}

std::string echo_roundtrip(const std::string& addr_port, const std::string& payload,
                           int family_override) {
  auto a = Address::parse(addr_port);
  if (!a) return "ERR:bad address";
  sockaddr_storage ss{};
  socklen_t len = family_override == AF_INET6 ? a->to_sockaddr6(ss) : a->to_sockaddr(ss);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("ERR:socket ") + strerror(errno);
  timeval tv{8, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    std::string e = std::string("ERR:connect ") + strerror(errno);
    ::close(fd);
    return e;
  }
  std::string got;
  std::thread writer([&] {
    size_t off = 0;
    while (off < payload.size()) {
      ssize_t n = write(fd, payload.data() + off, std::min<size_t>(65536, payload.size() - off));
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::shutdown(fd, SHUT_WR);
  });
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      got = std::string("ERR:read ") + strerror(errno);
      break;
    }
    if (n == 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  writer.join();
  ::close(fd);
  return got;
}

std::string make_payload(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::vector<std::string> sweep_leftovers(bool stale_only) {
  std::vector<std::string> removed;
  const std::string prefix = "connredir-test-";
  auto owner_alive = [&](const std::string& name) {
    pid_t pid = static_cast<pid_t>(std::atoi(name.c_str() + prefix.size()));
    return pid > 0 && (pid == getpid() || ::kill(pid, 0) == 0);
  };
  auto wanted = [&](const std::string& name) {
    if (name.rfind(prefix, 0) != 0) return false;
    std::string mine = prefix + std::to_string(getpid()) + "-";
    return stale_only ? !owner_alive(name) : name.rfind(mine, 0) == 0;
  };
  auto list = [](const std::string& dir) {
    std::vector<std::string> names;
    auto r = run({"/bin/ls", "-1", dir});
    std::istringstream ss(r.out);
    std::string n;
    while (std::getline(ss, n))
      if (!n.empty()) names.push_back(n);
    return names;
  };
  std::string root = cgroup2_root();
  for (auto& n : list(root)) {
    if (!wanted(n)) continue;
    std::string cg = root + "/" + n;
    empty_cgroup(cg);
    for (auto& c : list(cg))
      if (::access((cg + "/" + c + "/cgroup.procs").c_str(), F_OK) == 0)
        rmdir((cg + "/" + c).c_str());
    rmdir(cg.c_str());
    removed.push_back(cg);
  }
  for (auto& n : list("/sys/fs/bpf")) {
    if (!wanted(n)) continue;
    std::string pin = "/sys/fs/bpf/" + n;
    run({CONNREDIR_CLI_PATH, "--pin-dir", pin, "down"});
    removed.push_back(pin);
  }
  return removed;
}

std::string ip_tool() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
    if (::access(p, X_OK) == 0) return p;
  return "ip";
}

LoAddress::LoAddress(const std::string& c) : cidr(c) {
  auto r = run({ip_tool(), "addr", "add", cidr, "dev", "lo"});
  ok = r.status == 0;
  EXPECT_TRUE(ok) << "ip addr add " << cidr << " dev lo: " << r.out;
}

LoAddress::~LoAddress() {
  if (ok) run({ip_tool(), "addr", "del", cidr, "dev", "lo"});
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

void touch(const std::string& path) { std::ofstream(path) << "1"; }

int listen_on(const std::string& addr_port) {
  auto a = Address::parse(addr_port);
  sockaddr_storage ss{};
  socklen_t len = a->to_sockaddr(ss);
  int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (a->family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 16) != 0) return -1;
  return fd;
}

int connect_to(const std::string& addr_port) {
  auto a = Address::parse(addr_port);
  sockaddr_storage ss{};
  socklen_t len = a->to_sockaddr(ss);
  int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// ---- KernelTest ----------------------------------------------------------

void KernelTest::SetUp() {
  if (geteuid() != 0) GTEST_SKIP() << "kernel tests need root";
  static int seq = 0;
  std::string tag = "connredir-test-" + std::to_string(getpid()) + "-" + std::to_string(++seq);
  std::string root = cgroup2_root();
  ASSERT_FALSE(root.empty()) << "no cgroup v2 mount in /proc/mounts";
  cgroup_ = root + "/" + tag;
  ASSERT_EQ(mkdir(cgroup_.c_str(), 0755), 0) << cgroup_ << ": " << strerror(errno);
  pin_dir_ = "/sys/fs/bpf/" + tag;
  char tmpl[] = "/tmp/connredir-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  dir_ = tmpl;
  chmod(dir_.c_str(), 0777);  // unprivileged proxies write their logs here
  cli({"up", "--cgroup", cgroup_});
}

void KernelTest::TearDown() {
  for (auto& p : procs_) p->stop();
  procs_.clear();
  if (!cgroup_.empty()) {
    for (auto& c : children_) empty_cgroup(c);
    empty_cgroup(cgroup_);
  }
  if (!pin_dir_.empty() && ::access(pin_dir_.c_str(), F_OK) == 0) {
    auto r = run({CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_, "down"});
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_NE(::access(pin_dir_.c_str(), F_OK), 0) << "down left " << pin_dir_;
  }
  for (auto it = children_.rbegin(); it != children_.rend(); ++it)
    EXPECT_EQ(rmdir(it->c_str()), 0) << *it << ": " << strerror(errno);
  if (!cgroup_.empty()) {
    EXPECT_EQ(rmdir(cgroup_.c_str()), 0) << cgroup_ << ": " << strerror(errno);
  }
  if (!dir_.empty()) run({"/bin/rm", "-rf", dir_});
}

CmdResult KernelTest::cli(const std::vector<std::string>& args, int expect_status) {
  std::vector<std::string> argv{CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run(argv);
  if (expect_status >= 0) {
    std::string cmd;
    for (auto& a : args) cmd += a + " ";
    EXPECT_EQ(r.status, expect_status) << "connredir " << cmd << "\n" << r.out;
  }
  return r;
}

nlohmann::json KernelTest::cli_json(const std::vector<std::string>& args) {
  std::vector<std::string> a{"--json"};
  a.insert(a.end(), args.begin(), args.end());
  auto r = cli(a);
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.out;
  return j;
}

std::string KernelTest::cg(const std::string& name) {
  std::string path = cgroup_ + "/" + name;
  for (auto& c : children_)
    if (c == path) return path;
  EXPECT_EQ(mkdir(path.c_str(), 0755), 0) << path << ": " << strerror(errno);
  children_.push_back(path);
  return path;
}

Process& KernelTest::start_proxy(const std::string& name, int uid, const std::string& listen,
                                 const std::vector<std::string>& extra) {
  std::vector<std::string> argv{CONNREDIR_PROXY_PATH, "--listen", listen, "--log",
                                proxy_log(name),      "--name",   name};
  argv.insert(argv.end(), extra.begin(), extra.end());
  procs_.push_back(spawn_in(cg(name), uid, argv, dir_ + "/" + name + ".out"));
  auto port = Address::parse(listen);
  EXPECT_TRUE(port.has_value());
  if (port) {
    // The family's own table: a proxy of the other family on the same port
    // must not count (vendor-a and vendor-a6 share a port).
    EXPECT_TRUE(wait_listening(port->port, 5000, port->family))
        << "proxy " << name << " not listening; output:\n"
        << read_file(dir_ + "/" + name + ".out");
    if (std::find(extra.begin(), extra.end(), "--udp") != extra.end()) {
      EXPECT_TRUE(wait_listening(port->port, 5000, port->family, true))
          << "proxy " << name << " has no UDP socket; output:\n"
          << read_file(dir_ + "/" + name + ".out");
    }
  }
  return *procs_.back();
}

uint32_t KernelTest::callout_id(const std::string& name) {
  auto j = cli_json({"callout", "list"});
  for (auto& c : j)
    if (c.value("name", "") == name) return c.value("id", 0u);
  ADD_FAILURE() << "no callout " << name << " in " << j.dump();
  return 0;
}

void KernelTest::add_redirect(const std::string& name, const std::string& proxy, int proxy_uid,
                              const std::string& cidr, uint16_t port,
                              const std::vector<std::string>& filter_extra) {
  cli({"callout", "add", name, "--proxy", proxy, "--proxy-uid", std::to_string(proxy_uid)});
  std::vector<std::string> f{"filter", "add", "--callout", name,
                             "--dst",  cidr,  "--port",    std::to_string(port)};
  f.insert(f.end(), filter_extra.begin(), filter_extra.end());
  cli(f);
}

void KernelTest::add_vendor(const std::string& name, int port, int uid, const std::string& cidr,
                            uint16_t dst_port, int weight, const std::vector<std::string>& extra) {
  std::vector<std::string> args{"callout",
                                "add",
                                name,
                                "--proxy",
                                "127.0.0.1:" + std::to_string(port),
                                "--proxy-uid",
                                std::to_string(uid)};
  args.insert(args.end(), extra.begin(), extra.end());
  cli(args);
  cli({"filter", "add", "--callout", name, "--dst", cidr, "--port", std::to_string(dst_port),
       "--weight", std::to_string(weight)});
}

std::string KernelTest::app_roundtrip(const std::string& addr, const std::string& payload,
                                      int uid) {
  return run_in(cg("app"), uid, [&] { return echo_roundtrip(addr, payload); });
}

std::map<std::string, uint64_t> KernelTest::stats() {
  std::map<std::string, uint64_t> out;
  auto j = cli_json({"status"});
  if (j.contains("stats"))
    for (auto& [k, v] : j["stats"].items()) out[k] = v.get<uint64_t>();
  return out;
}

std::string KernelTest::probe(const std::string& listen, int uid, const std::string& dst,
                              const std::function<std::string(int)>& fn) {
  auto prober = fork_in(cg("vendor-a"), uid, [&]() -> std::string {
    int l = listen_on(listen);
    if (l < 0) return std::string("listen: ") + strerror(errno);
    int c = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return std::string("accept: ") + strerror(errno);
    std::string r = fn(c);
    close(c);
    close(l);
    return r;
  });
  auto port = Address::parse(listen)->port;
  EXPECT_TRUE(wait_listening(port));
  auto app = fork_in(cg("app"), 1000, [&]() -> std::string {
    int fd = connect_to(dst);
    if (fd < 0) return std::string("connect: ") + strerror(errno);
    char b;
    (void)!read(fd, &b, 1);
    close(fd);
    return "done";
  });
  std::string r = prober->wait(20000);
  EXPECT_EQ(app->wait(20000), "done");
  return r;
}

}  // namespace connredir::test
