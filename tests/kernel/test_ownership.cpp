// Listener ownership (issue 15): a redirected flow goes only to a listener
// that the callout's own principal bound inside the attached cgroup, or to
// nothing (the callout's --on-proxy-down policy). Impostors: a process
// outside the attached cgroup, one in a sibling cgroup (next to the attached
// one, so no connredir hook runs for it), one on the wildcard address of the
// proxy port, and the principal of another vendor; each for IPv4 and IPv6,
// with the proxy down and while the real proxy restarts under load. The
// impostor must never accept a connection nor receive a byte.
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "connredir/address.hpp"
#include "harness.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
constexpr int kProxyUid = 4001;    // vendor-a's principal
constexpr int kVendorBUid = 4002;  // vendor-b's principal
constexpr int kNobody = 65534;
constexpr int kPort = 15991;
constexpr int kPortB = 15992;

enum class Kind { Outside, Sibling, Wildcard, OtherVendor };

using Clock = std::chrono::steady_clock;

int ms_since(Clock::time_point t0) {
  return static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count());
}

// A listening socket at ADDR:PORT; IPv6 wildcard dual-stack (it then takes
// IPv4 connects too, the widest squat), other IPv6 addresses v6-only.
int squat(const std::string& where) {
  auto a = Address::parse(where);
  if (!a) return -1;
  sockaddr_storage ss{};
  socklen_t len = a->to_sockaddr(ss);
  int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int one = 1, zero = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // earlier tests' TIME_WAIT
  if (a->family == AF_INET6) {
    bool any = where.rfind("[::]", 0) == 0;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, any ? &zero : &one, sizeof one);
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 64) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// Accepts whatever arrives on `l` for up to `ms`, reading every byte sent.
void drain(int l, int ms, int& accepted, size_t& bytes) {
  auto t0 = Clock::now();
  while (ms_since(t0) < ms) {
    pollfd p{l, POLLIN, 0};
    if (poll(&p, 1, 10) <= 0) continue;
    int c = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    ++accepted;
    timeval tv{0, 300000};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    for (ssize_t n; (n = read(c, buf, sizeof buf)) > 0;) bytes += static_cast<size_t>(n);
    close(c);
  }
}

std::string impostor_report(int listened, int accepted, size_t bytes) {
  return "listened=" + std::to_string(listened) + " accepted=" + std::to_string(accepted) +
         " bytes=" + std::to_string(bytes);
}

// Drains listener `l` until the test writes to `go_fd`.
void drain_until_go(int l, int go_fd, int& accepted, size_t& bytes) {
  char b;
  for (;;) {
    drain(l, 50, accepted, bytes);
    pollfd p{go_fd, POLLIN, 0};
    if (poll(&p, 1, 0) > 0 && read(go_fd, &b, 1) >= 0) break;
  }
}

// An impostor's life: listens at `where`, drains whatever arrives until the
// test writes to `go_fd` (its "app is done"), then reports.
std::string squat_until_go(const std::string& where, int go_fd) {
  int l = squat(where);
  if (l < 0) return std::string("squat: ") + strerror(errno);
  int accepted = 0;
  size_t bytes = 0;
  drain_until_go(l, go_fd, accepted, bytes);
  close(l);
  return impostor_report(1, accepted, bytes);
}

class Ownership : public KernelTest {
 protected:
  void SetUp() override {
    // An impostor that failed early has closed its end of the "app is done"
    // pipe: the write must fail with EPIPE, not kill the test binary.
    signal(SIGPIPE, SIG_IGN);
    KernelTest::SetUp();
  }
  void TearDown() override {
    KernelTest::TearDown();
    if (!sibling_.empty()) {
      // Its processes were waited for; the directory must go.
      bool gone = eventually([&] { return rmdir(sibling_.c_str()) == 0 || errno == ENOENT; }, 3000);
      EXPECT_TRUE(gone) << sibling_ << ": " << strerror(errno);
    }
  }

  // A cgroup next to the attached one (not below it): no connredir hook runs
  // for its processes. Named like the test's cgroup, so a killed run's
  // leftover is swept by the harness.
  std::string sibling() {
    if (sibling_.empty()) {
      sibling_ = cgroup_ + "-sibling";
      EXPECT_EQ(mkdir(sibling_.c_str(), 0755), 0) << sibling_ << ": " << strerror(errno);
    }
    return sibling_;
  }

  std::string proxy_addr(bool v6) const {
    return v6 ? "[::1]:" + std::to_string(kPort) : "127.0.0.1:" + std::to_string(kPort);
  }

  // vendor-a: proxy 127.0.0.1:15991 and [::1]:15991, principal uid 4001, one
  // filter for the destination's address and port.
  void add_vendor_a(const EchoServer& dst, bool v6, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a{"callout",
                               "add",
                               "vendor-a",
                               "--proxy",
                               "127.0.0.1:" + std::to_string(kPort),
                               "--proxy",
                               "[::1]:" + std::to_string(kPort),
                               "--proxy-uid",
                               std::to_string(kProxyUid)};
    a.insert(a.end(), extra.begin(), extra.end());
    cli(a);
    cli({"filter", "add", "--callout", "vendor-a", "--dst", v6 ? "::1/128" : "127.0.0.1/32",
         "--port", std::to_string(dst.port())});
  }

  void add_vendor_b() {
    cli({"callout", "add", "vendor-b", "--proxy", "127.0.0.1:" + std::to_string(kPortB), "--proxy",
         "[::1]:" + std::to_string(kPortB), "--proxy-uid", std::to_string(kVendorBUid)});
  }

  // Where and as whom the impostor runs, and the address it squats.
  struct Squatter {
    std::string cgroup;
    int uid;
    std::string where;
  };
  Squatter squatter(Kind k, bool v6) {
    switch (k) {
      case Kind::Outside:
        return {"", kNobody, proxy_addr(v6)};
      case Kind::Sibling:
        return {sibling(), kNobody, proxy_addr(v6)};
      case Kind::Wildcard:
        return {"", kNobody,
                v6 ? "[::]:" + std::to_string(kPort) : "0.0.0.0:" + std::to_string(kPort)};
      case Kind::OtherVendor:
        // vendor-b's principal, inside the attached cgroup: the bind guard
        // refuses it at vendor-a's address.
        return {cg("vendor-b"), kVendorBUid, proxy_addr(v6)};
    }
    return {};
  }

  // The app's `n` connects to the destination, one outcome each.
  std::string app_connects(const EchoServer& dst, int n) {
    std::string addr = dst.addr();
    return run_in(
        cg("app"), kAppUid,
        [addr, n] {
          std::map<std::string, int> seen;
          for (int i = 0; i < n; ++i) {
            std::string got = echo_roundtrip(addr, "secret-" + std::to_string(i));
            seen[got == "secret-" + std::to_string(i) ? "echoed" : got]++;
          }
          std::string out;
          for (auto& [k, v] : seen) out += (out.empty() ? "" : ";") + k + "=" + std::to_string(v);
          return out;
        },
        30000);
  }

  // The proxy is down; the impostor listens (or, for another vendor's
  // principal, tries to) at vendor-a's proxy address while the app connects.
  void proxy_down(Kind k, bool v6) {
    EchoServer dst(v6 ? "[::1]:0" : "127.0.0.1:0");
    if (k == Kind::OtherVendor) add_vendor_b();
    add_vendor_a(dst, v6);
    auto s = squatter(k, v6);
    int go[2];
    ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
    auto imp = fork_in(s.cgroup, s.uid, [&]() -> std::string {
      close(go[1]);
      int l = squat(s.where);
      std::string bind_result = l >= 0 ? "OK" : strerrorname_np(errno);
      int accepted = 0;
      size_t bytes = 0;
      char b;
      // Serve until the test says the app is done.
      if (l >= 0) {
        drain_until_go(l, go[0], accepted, bytes);
        close(l);
      } else {
        (void)!read(go[0], &b, 1);  // the test writes once either way
      }
      return "bind=" + bind_result + " " + impostor_report(l >= 0, accepted, bytes);
    });
    close(go[0]);
    if (k != Kind::OtherVendor)
      ASSERT_TRUE(wait_listening(kPort));
    else
      usleep(200000);
    std::string app = app_connects(dst, 20);
    (void)!write(go[1], "x", 1);
    close(go[1]);
    std::string r = imp->wait(10000);
    if (k == Kind::OtherVendor)
      EXPECT_EQ(r, "bind=EACCES listened=0 accepted=0 bytes=0");
    else
      EXPECT_EQ(r, "bind=OK listened=1 accepted=0 bytes=0");
    // The default policy (refuse): the app meets ECONNREFUSED at once, as
    // if nothing listened; the destination never sees it either.
    EXPECT_EQ(app, "ERR:connect Connection refused=20");
    EXPECT_EQ(dst.peers().size(), 0u);
    auto st = stats();
    EXPECT_EQ(st["down_refused"], 20u);
    EXPECT_EQ(st["redirected"], 0u);
    // A listener was there (not ours) except for the other vendor, whose bind
    // was refused: then nothing listened.
    EXPECT_EQ(st["not_owner"], k == Kind::OtherVendor ? 0u : 20u);
  }

  // The real proxy restarts three times while the app connects in a loop and
  // the impostor tries to take the port the moment it is free (holding it
  // for 300 ms whenever it gets it, then letting go).
  void restarts_under_load(Kind k, bool v6) {
    EchoServer dst(v6 ? "[::1]:0" : "127.0.0.1:0");
    if (k == Kind::OtherVendor) add_vendor_b();
    add_vendor_a(dst, v6);
    auto s = squatter(k, v6);
    std::string listen = proxy_addr(v6);
    auto spawn_proxy = [&] {
      procs_.push_back(spawn_in(cg("vendor-a"), kProxyUid,
                                {CONNREDIR_PROXY_PATH, "--listen", listen, "--log",
                                 proxy_log("vendor-a"), "--name", "vendor-a"},
                                dir_ + "/vendor-a.out"));
    };
    spawn_proxy();
    ASSERT_TRUE(wait_listening(kPort));
    constexpr int kMs = 2400;
    auto imp = fork_in(s.cgroup, s.uid, [&]() -> std::string {
      int listened = 0, accepted = 0, refused = 0;
      size_t bytes = 0;
      auto t0 = Clock::now();
      while (ms_since(t0) < kMs + 300) {
        int l = squat(s.where);
        if (l < 0) {
          refused += errno == EACCES;
          usleep(200);
          continue;
        }
        ++listened;
        drain(l, 300, accepted, bytes);
        close(l);
      }
      return impostor_report(listened, accepted, bytes) + " eacces=" + std::to_string(refused > 0);
    });
    std::string addr = dst.addr();
    auto app = fork_in(cg("app"), kAppUid, [addr]() -> std::string {
      int ok = 0, refused = 0, other = 0, i = 0;
      std::string first_other;
      auto t0 = Clock::now();
      while (ms_since(t0) < kMs) {
        std::string want = "payload-" + std::to_string(i++);
        std::string got = echo_roundtrip(addr, want);
        if (got == want)
          ++ok;
        else if (got == "ERR:connect Connection refused")
          ++refused;
        else if (++other == 1)
          first_other = got;
      }
      return "ok=" + std::to_string(ok) + " refused=" + std::to_string(refused) +
             " other=" + std::to_string(other) + " first_other=" + first_other;
    });
    for (int round = 0; round < 3; ++round) {
      usleep(500000);
      procs_.back()->stop();
      usleep(20000);
      spawn_proxy();  // may fail to bind while the impostor holds the port
    }
    std::string a = app->wait(20000);
    std::string r = imp->wait(20000);
    EXPECT_NE(r.find("accepted=0 bytes=0"), std::string::npos) << r << " | app: " << a;
    if (k == Kind::OtherVendor) {
      EXPECT_EQ(r, "listened=0 accepted=0 bytes=0 eacces=1");
    }
    // The app got the proxy while it ran and the policy (ECONNREFUSED)
    // otherwise. A connection in flight when the proxy is stopped may end
    // early ("other"): the proxy's own death, not an impostor.
    EXPECT_EQ(a.find("ok=0 "), std::string::npos) << a;
    auto st = stats();
    EXPECT_GT(st["redirected"], 0u);
    EXPECT_EQ(st["down_bypass"], 0u);
    RecordProperty("app", a);
    RecordProperty("impostor", r);
    std::printf("    %s v%d: app %s | impostor %s | not_owner=%lu down_refused=%lu\n",
                k == Kind::Outside    ? "outside"
                : k == Kind::Sibling  ? "sibling"
                : k == Kind::Wildcard ? "wildcard"
                                      : "other-vendor",
                v6 ? 6 : 4, a.c_str(), r.c_str(), static_cast<unsigned long>(st["not_owner"]),
                static_cast<unsigned long>(st["down_refused"]));
  }

  std::string sibling_;
};

TEST_F(Ownership, OutsideImpostorProxyDownIPv4) { proxy_down(Kind::Outside, false); }
TEST_F(Ownership, OutsideImpostorProxyDownIPv6) { proxy_down(Kind::Outside, true); }
TEST_F(Ownership, SiblingCgroupImpostorProxyDownIPv4) { proxy_down(Kind::Sibling, false); }
TEST_F(Ownership, SiblingCgroupImpostorProxyDownIPv6) { proxy_down(Kind::Sibling, true); }
TEST_F(Ownership, WildcardImpostorProxyDownIPv4) { proxy_down(Kind::Wildcard, false); }
TEST_F(Ownership, WildcardImpostorProxyDownIPv6) { proxy_down(Kind::Wildcard, true); }
TEST_F(Ownership, OtherVendorPrincipalProxyDownIPv4) { proxy_down(Kind::OtherVendor, false); }
TEST_F(Ownership, OtherVendorPrincipalProxyDownIPv6) { proxy_down(Kind::OtherVendor, true); }

TEST_F(Ownership, OutsideImpostorWhileProxyRestartsIPv4) {
  restarts_under_load(Kind::Outside, false);
}
TEST_F(Ownership, OutsideImpostorWhileProxyRestartsIPv6) {
  restarts_under_load(Kind::Outside, true);
}
TEST_F(Ownership, SiblingCgroupImpostorWhileProxyRestartsIPv4) {
  restarts_under_load(Kind::Sibling, false);
}
TEST_F(Ownership, SiblingCgroupImpostorWhileProxyRestartsIPv6) {
  restarts_under_load(Kind::Sibling, true);
}
TEST_F(Ownership, WildcardImpostorWhileProxyRestartsIPv4) {
  restarts_under_load(Kind::Wildcard, false);
}
TEST_F(Ownership, WildcardImpostorWhileProxyRestartsIPv6) {
  restarts_under_load(Kind::Wildcard, true);
}
TEST_F(Ownership, OtherVendorPrincipalWhileProxyRestartsIPv4) {
  restarts_under_load(Kind::OtherVendor, false);
}
TEST_F(Ownership, OtherVendorPrincipalWhileProxyRestartsIPv6) {
  restarts_under_load(Kind::OtherVendor, true);
}

// With --on-proxy-down bypass the impostor still gets nothing: the app's
// connect goes on to its destination uninspected by vendor-a, counted.
TEST_F(Ownership, BypassPolicySendsTheAppOnwardNotToTheImpostor) {
  for (bool v6 : {false, true}) {
    SCOPED_TRACE(v6 ? "IPv6" : "IPv4");
    EchoServer dst(v6 ? "[::1]:0" : "127.0.0.1:0");
    if (!v6)
      add_vendor_a(dst, v6, {"--on-proxy-down", "bypass"});
    else
      cli({"filter", "add", "--callout", "vendor-a", "--dst", "::1/128", "--port",
           std::to_string(dst.port())});
    std::string where = proxy_addr(v6);
    int go[2];
    ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
    auto imp = fork_in("", kNobody, [&]() -> std::string {
      close(go[1]);
      return squat_until_go(where, go[0]);
    });
    close(go[0]);
    ASSERT_TRUE(wait_listening(kPort));
    EXPECT_EQ(app_connects(dst, 5), "echoed=5");
    (void)!write(go[1], "x", 1);
    close(go[1]);
    EXPECT_EQ(imp->wait(10000), "listened=1 accepted=0 bytes=0");
    EXPECT_EQ(dst.peers().size(), 5u);
  }
  auto st = stats();
  EXPECT_EQ(st["down_bypass"], 10u);
  EXPECT_EQ(st["not_owner"], 10u);
  EXPECT_EQ(st["redirected"], 0u);
}

// Another vendor's principal that bound vendor-a's address before vendor-a
// existed (no guard applied then) inside the attached cgroup: its listener
// carries its own identity, not vendor-a's principal, so vendor-a's flows
// are refused rather than delivered to it; the real proxy, once it takes
// over, gets them.
TEST_F(Ownership, ListenerBoundBeforeTheCalloutByAnotherPrincipalGetsNothing) {
  EchoServer dst("127.0.0.1:0");
  add_vendor_b();
  int go[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  std::string where = proxy_addr(false);
  auto early = fork_in(cg("vendor-b"), kVendorBUid, [&]() -> std::string {
    close(go[1]);
    return squat_until_go(where, go[0]);
  });
  close(go[0]);
  ASSERT_TRUE(wait_listening(kPort));
  add_vendor_a(dst, false);
  EXPECT_EQ(app_connects(dst, 5), "ERR:connect Connection refused=5");
  (void)!write(go[1], "x", 1);
  close(go[1]);
  EXPECT_EQ(early->wait(10000), "listened=1 accepted=0 bytes=0");
  EXPECT_EQ(stats()["not_owner"], 5u);
  // Once vendor-a's own principal listens there, its flows are served.
  start_proxy("vendor-a", kProxyUid, where);
  EXPECT_EQ(app_connects(dst, 3), "echoed=3");
}

// The listener the connect hook checks is the one the SYN reaches: the
// kernel prefers a listener bound to the address over a wildcard one, in the
// lookup helper as for the SYN. Both listeners coexist here (SO_REUSEPORT,
// same uid: the proxy's uid, which a process outside the cgroup may have when
// the callout's principal is its cgroup only). Address-bound owned proxy +
// wildcard impostor: every flow reaches the proxy. Wildcard owned proxy +
// address-bound impostor: every connect is refused; neither gets a flow.
TEST_F(Ownership, AddressBoundListenerWinsOverWildcardAsForTheSyn) {
  for (bool v6 : {false, true}) {
    for (bool proxy_specific : {true, false}) {
      SCOPED_TRACE(std::string(v6 ? "IPv6" : "IPv4") +
                   (proxy_specific ? " proxy on the address" : " proxy on the wildcard"));
      EchoServer dst(v6 ? "[::1]:0" : "127.0.0.1:0");
      cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:" + std::to_string(kPort), "--proxy",
           "[::1]:" + std::to_string(kPort), "--proxy-cgroup", cg("vendor-a")});
      cli({"filter", "add", "--callout", "vendor-a", "--dst", v6 ? "::1/128" : "127.0.0.1/32",
           "--port", std::to_string(dst.port())});
      std::string specific = proxy_addr(v6);
      std::string wildcard =
          v6 ? "[::]:" + std::to_string(kPort) : "0.0.0.0:" + std::to_string(kPort);
      // Each listener reports on `ready_fd` once it listens: the app must not
      // connect before both exist (a fixed sleep was too short on a loaded CI host).
      auto listener = [](const std::string& where, int go_fd, int ready_fd) {
        auto a = Address::parse(where);
        sockaddr_storage ss{};
        socklen_t len = a->to_sockaddr(ss);
        int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        // The port's connections of the test before may still be in
        // TIME_WAIT (the proxy there set no SO_REUSEPORT): bind over them.
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (a->family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        // EADDRINUSE: the port may still be held for a moment by what the
        // test before left (a proxy exiting, TIME_WAIT): retry up to 3 s.
        int rc = -1;
        for (int i = 0; i < 60; ++i) {
          rc = bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
          if (rc == 0 || errno != EADDRINUSE) break;
          usleep(50000);
        }
        if (rc != 0 || listen(fd, 64) != 0) {
          std::string err = std::string("listen ") + where + ": " + strerror(errno);
          close(ready_fd);  // EOF: the test stops waiting and fails on the report
          return err;
        }
        (void)!write(ready_fd, "r", 1);
        close(ready_fd);
        int accepted = 0;
        size_t bytes = 0;
        drain_until_go(fd, go_fd, accepted, bytes);
        close(fd);
        return "accepted=" + std::to_string(accepted);
      };
      int go[2], ready[2];
      ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
      ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
      std::string proxy_at = proxy_specific ? specific : wildcard;
      std::string imp_at = proxy_specific ? wildcard : specific;
      auto proxy = fork_in(cg("vendor-a"), kProxyUid, [&] {
        close(go[1]);
        close(ready[0]);
        return listener(proxy_at, go[0], ready[1]);
      });
      auto imp = fork_in("", kProxyUid, [&] {
        close(go[1]);
        close(ready[0]);
        return listener(imp_at, go[0], ready[1]);
      });
      close(ready[1]);
      char r[2];
      size_t got = 0;
      pollfd pr{ready[0], POLLIN, 0};
      while (got < 2 && poll(&pr, 1, 10000) > 0) {
        ssize_t n = read(ready[0], r + got, 2 - got);
        if (n <= 0) break;
        got += static_cast<size_t>(n);
      }
      close(ready[0]);
      if (got != 2u) {
        (void)!write(go[1], "g", 1);
        close(go[1]);
        FAIL() << "a listener did not start within 10 s: proxy: " << proxy->wait()
               << "; other: " << imp->wait();
      }
      // The app's payload reaches the owned proxy, which reads it and closes:
      // the app sees EOF ("").
      std::string app = app_connects(dst, 10);
      (void)!write(go[1], "xx", 2);
      close(go[1]);
      close(go[0]);
      std::string p = proxy->wait(10000), i = imp->wait(10000);
      EXPECT_EQ(i, "accepted=0");
      cli({"callout", "del", "vendor-a", "--force"});
      if (proxy_specific) {
        EXPECT_EQ(p, "accepted=10");
        EXPECT_EQ(app, "=10");
      } else {
        EXPECT_EQ(p, "accepted=0");
        EXPECT_EQ(app, "ERR:connect Connection refused=10");
      }
    }
  }
}

// Principals are per callout: vendor-b's principal holding a socket of a
// vendor-a flow (a root listener handed to it) cannot read its records or
// context; vendor-a's principal can.
TEST_F(Ownership, PrincipalOfAnotherVendorCannotQueryItsFlows) {
  EchoServer dst("127.0.0.1:0");
  add_vendor_b();
  add_vendor_a(dst, false);
  auto query_as = [&](int uid) {
    return probe(proxy_addr(false), -1, dst.addr(), [uid](int c) {
      if (setgroups(0, nullptr) != 0 || setgid(uid) != 0 || setuid(uid) != 0)
        return std::string("setuid");
      std::vector<uint8_t> out(CONNREDIR_RECORDS_MAX);
      socklen_t l = static_cast<socklen_t>(out.size());
      int rc = getsockopt(c, SOL_CONNREDIR, CONNREDIR_RECORDS, out.data(), &l);
      std::string a = rc == 0 ? "OK" : strerrorname_np(errno);
      l = CONNREDIR_CONTEXT_MAX;
      rc = getsockopt(c, SOL_CONNREDIR, CONNREDIR_CONTEXT, out.data(), &l);
      return a + " " + (rc == 0 ? "OK" : strerrorname_np(errno));
    });
  };
  uint64_t denied0 = stats()["denied"];
  EXPECT_EQ(query_as(kVendorBUid), "EACCES EACCES");
  EXPECT_EQ(stats()["denied"], denied0 + 2);
  EXPECT_EQ(query_as(kProxyUid), "OK OK");
}

// Listeners that exist when connredir comes up (`down` dropped the owner
// records with the maps while the proxies kept running: `systemctl stop` +
// `start`, an upgrade) are adopted by `up` with their own identity: the
// socket's uid and the holding process's cgroup. So the real proxies serve
// again at once (vendor-a: uid principal; vendor-c: cgroup principal), while
// a listener of the wrong uid inside the attached cgroup stays a non-owner,
// and one outside the attached cgroup is not even looked at, although its
// uid is the callout's principal.
TEST_F(Ownership, ListenersBoundBeforeUpAreAdoptedWithTheirOwnIdentity) {
  constexpr int kPortC = 15993;
  cli({"down"});
  EchoServer dst_a("127.0.0.1:0"), dst_c("127.0.0.1:0"), dst_b4("127.0.0.1:0"), dst_b6("[::1]:0");
  start_proxy("vendor-a", kProxyUid, proxy_addr(false));
  start_proxy("vendor-c", kNobody, "127.0.0.1:" + std::to_string(kPortC));
  int go[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  auto squatter = [&](const std::string& where) {
    return [&go, where]() -> std::string {
      close(go[1]);
      return squat_until_go(where, go[0]);
    };
  };
  // In the attached cgroup with the wrong uid; outside it with vendor-b's.
  auto inside = fork_in(cg("squat"), kNobody, squatter("127.0.0.1:" + std::to_string(kPortB)));
  auto outside = fork_in("", kVendorBUid, squatter("[::1]:" + std::to_string(kPortB)));
  close(go[0]);
  ASSERT_TRUE(wait_listening(kPort));
  ASSERT_TRUE(wait_listening(kPortC));
  ASSERT_TRUE(wait_listening(kPortB));

  auto up = cli({"up", "--cgroup", cgroup_});
  auto adopted = [&](const std::string& addr) {
    return up.out.find("adopted the listener " + addr + " of pid") != std::string::npos;
  };
  EXPECT_TRUE(adopted(proxy_addr(false))) << up.out;
  EXPECT_TRUE(adopted("127.0.0.1:" + std::to_string(kPortC))) << up.out;
  EXPECT_TRUE(adopted("127.0.0.1:" + std::to_string(kPortB))) << up.out;  // as itself
  EXPECT_FALSE(adopted("[::1]:" + std::to_string(kPortB))) << up.out;     // outside
  EXPECT_EQ(up.out.find("warning"), std::string::npos) << up.out;

  add_vendor_a(dst_a, false);
  add_vendor_b();
  cli({"callout", "add", "vendor-c", "--proxy", "127.0.0.1:" + std::to_string(kPortC),
       "--proxy-cgroup", cg("vendor-c")});
  cli({"filter", "add", "--callout", "vendor-c", "--dst", "127.0.0.1/32", "--port",
       std::to_string(dst_c.port())});
  for (const auto* d : {&dst_b4, &dst_b6})
    cli({"filter", "add", "--callout", "vendor-b", "--dst",
         d == &dst_b4 ? "127.0.0.1/32" : "::1/128", "--port", std::to_string(d->port())});

  EXPECT_EQ(app_connects(dst_a, 3), "echoed=3");
  EXPECT_EQ(app_connects(dst_c, 3), "echoed=3");
  EXPECT_EQ(app_connects(dst_b4, 3), "ERR:connect Connection refused=3");
  EXPECT_EQ(app_connects(dst_b6, 3), "ERR:connect Connection refused=3");
  (void)!write(go[1], "x", 1);
  close(go[1]);
  EXPECT_EQ(inside->wait(10000), "listened=1 accepted=0 bytes=0");
  EXPECT_EQ(outside->wait(10000), "listened=1 accepted=0 bytes=0");
  auto st = stats();
  EXPECT_EQ(st["redirected"], 6u);
  EXPECT_EQ(st["not_owner"], 6u);
  EXPECT_EQ(dst_b4.peers().size() + dst_b6.peers().size(), 0u);
  // The proxies saw the flows with their records (one hop, their callout).
  for (const char* v : {"vendor-a", "vendor-c"}) {
    bool logged = eventually(
        [&] {
          std::ifstream in(proxy_log(v));
          std::string line;
          int n = 0;
          while (std::getline(in, line)) n += line.find("\"chain\"") != std::string::npos;
          return n == 3;
        },
        3000);
    EXPECT_TRUE(logged) << v;
  }
  // A second `up` finds connredir up and adopts nothing (every listener that
  // is still there has a record now).
  auto again = cli({"up", "--cgroup", cgroup_});
  EXPECT_NE(again.out.find("already up"), std::string::npos) << again.out;
}

// Without the capabilities adopting needs, `up` says which processes it
// could not look at and what to do; their listeners stay without an owner
// (the callout's policy applies) until an `up` with them adopts them.
TEST_F(Ownership, UpWithoutPtraceWarnsAndTheListenerMeetsThePolicy) {
  cli({"down"});
  EchoServer dst("127.0.0.1:0");
  start_proxy("vendor-a", kProxyUid, proxy_addr(false));
  ASSERT_TRUE(wait_listening(kPort));
  // The capabilities connredir.service has (packaging/systemd/connredir.service.in),
  // minus the two adopting needs.
  auto up = run(
      {"/usr/bin/setpriv", "--bounding-set=-all,+bpf,+perfmon,+net_admin,+sys_admin,+sys_resource",
       "--no-new-privs", CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_, "up", "--cgroup", cgroup_});
  ASSERT_EQ(up.status, 0) << up.out;
  EXPECT_NE(up.out.find("warning: cannot read the descriptors of"), std::string::npos) << up.out;
  EXPECT_NE(up.out.find("CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE"), std::string::npos) << up.out;
  EXPECT_EQ(up.out.find("adopted the listener"), std::string::npos) << up.out;
  add_vendor_a(dst, false);
  EXPECT_EQ(app_connects(dst, 2), "ERR:connect Connection refused=2");
  EXPECT_EQ(stats()["not_owner"], 2u);
  // down + up with exactly connredir.service's capabilities: adopted, served.
  cli({"down"});
  auto again =
      run({"/usr/bin/setpriv",
           "--bounding-set=-all,+bpf,+perfmon,+net_admin,+sys_admin,+sys_resource,+sys_"
           "ptrace,+dac_read_search",
           "--no-new-privs", CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_, "up", "--cgroup", cgroup_});
  ASSERT_EQ(again.status, 0) << again.out;
  EXPECT_EQ(again.out.find("warning"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("adopted the listener " + proxy_addr(false)), std::string::npos)
      << again.out;
  add_vendor_a(dst, false);
  EXPECT_EQ(app_connects(dst, 2), "echoed=2");
}

// Sharing a principal between callouts is explicit configuration.
TEST_F(Ownership, SharingAPrincipalNeedsSharedPrincipal) {
  add_vendor_b();
  auto r = cli({"callout", "add", "vendor-c", "--proxy", "127.0.0.1:15993", "--proxy-uid",
                std::to_string(kVendorBUid)},
               -1);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("already has the principal uid 4002"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--shared-principal"), std::string::npos) << r.out;
  // Nested cgroups overlap too.
  cli({"callout", "add", "vendor-d", "--proxy", "127.0.0.1:15994", "--proxy-cgroup", cg("vd")});
  std::string inner = cg("vd") + "/inner";
  ASSERT_EQ(mkdir(inner.c_str(), 0755), 0);
  auto n = cli(
      {"callout", "add", "vendor-e", "--proxy", "127.0.0.1:15995", "--proxy-cgroup", inner}, -1);
  EXPECT_NE(n.status, 0);
  EXPECT_NE(n.out.find("nested with"), std::string::npos) << n.out;
  rmdir(inner.c_str());
  cli({"callout", "add", "vendor-c", "--proxy", "127.0.0.1:15993", "--proxy-uid",
       std::to_string(kVendorBUid), "--shared-principal"});
  auto list = cli_json({"callout", "list"});
  std::map<std::string, bool> shared;
  for (auto& c : list) shared[c.value("name", "")] = c.value("shared_principal", false);
  EXPECT_EQ(shared["vendor-c"], true) << list.dump();
  EXPECT_EQ(shared["vendor-b"], false) << list.dump();
  EXPECT_NE(cli({"callout", "list"}).out.find("SHARED"), std::string::npos);
  // The default policy is refuse and is shown as such.
  EXPECT_EQ(list[0].value("on_proxy_down", ""), "refuse") << list.dump();
}

}  // namespace
}  // namespace connredir::test
