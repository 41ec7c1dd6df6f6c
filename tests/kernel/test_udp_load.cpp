// UDP load through a two-vendor chain (app -> vendor-a -> vendor-b ->
// destination), every datagram verified byte by byte: 10 000 UDP flows held
// open at once, half IPv4 and half IPv6, half connected and half unconnected
// (through pool addresses, each echo's source checked), and 60 seconds of
// flow churn. Afterwards the hand-off map and the namespace's UDP sockets are
// back to their baseline.
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <fstream>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sstream>

#include "connredir/address.hpp"
#include "harness_load.hpp"

namespace connredir::test {
namespace {

using Clock = std::chrono::steady_clock;

long ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

std::vector<uint8_t> datagram(uint32_t seed, size_t len) {
  std::vector<uint8_t> d(len);
  for (size_t j = 0; j < len; ++j) d[j] = load_byte(seed, j);
  return d;
}

// UDP sockets in this netns (/proc/net/udp{,6}), bound or connected.
long udp_socket_count() {
  long n = 0;
  for (const char* f : {"/proc/net/udp", "/proc/net/udp6"}) {
    std::istringstream ss(read_file(f));
    std::string line;
    std::getline(ss, line);
    while (std::getline(ss, line)) n++;
  }
  return n;
}

// Widens the ephemeral port range of the test's own network namespace
// (kernel_main.cpp creates it) while it lives: a UDP flow through two vendors
// takes three local ports on one host (the app's, vendor-a's and vendor-b's
// onward sockets), and 10 000 of them are more than the default 28 232.
class WidePortRange {
 public:
  WidePortRange() : old_(read_file(kPath)) { ok_ = write("1024 65535"); }
  ~WidePortRange() {
    if (ok_) write(old_);
  }
  bool ok() const { return ok_; }

 private:
  static constexpr const char* kPath = "/proc/sys/net/ipv4/ip_local_port_range";
  static bool write(const std::string& v) {
    std::ofstream f(kPath);
    f << v;
    return static_cast<bool>(f.flush());
  }
  std::string old_;
  bool ok_ = false;
};

struct Flow {
  int fd = -1;
  bool unconnected = false;  // sendto() / recvfrom(), the source checked
  sockaddr_storage dst{};
  socklen_t dst_len = 0;
  long sent_ms = 0;
  int tries = 0;
  bool done = false;
};

// Opens `n` UDP sockets to `dsts` in turn (every other pair unconnected:
// sendto(), and the echo's source must be the destination), each sending one
// `len`-byte datagram (its own seed) and checking the echo, at most `window`
// awaiting their echo at once (a datagram with no echo after 1 s is sent
// again, counted in `resent`). Every socket stays open until the last was
// verified. Returns "opened= verified= held= corrupt= errors= resent=".
std::string hold_udp(const std::vector<std::string>& dsts, int n, size_t len, int window,
                     int timeout_ms) {
  std::vector<Flow> flows(static_cast<size_t>(n));
  std::deque<int> waiting;
  long opened = 0, verified = 0, corrupt = 0, errors = 0, resent = 0;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  const auto t0 = Clock::now();
  std::vector<uint8_t> buf(len + 64);
  int next = 0;
  auto send_one = [&](int i) {
    auto d = datagram(static_cast<uint32_t>(i), len);
    const Flow& f = flows[i];
    const ssize_t s = f.unconnected ? sendto(f.fd, d.data(), d.size(), 0,
                                             reinterpret_cast<const sockaddr*>(&f.dst), f.dst_len)
                                    : send(f.fd, d.data(), d.size(), 0);
    if (s != static_cast<ssize_t>(d.size())) errors++;
    flows[i].sent_ms = ms_since(t0);
    flows[i].tries++;
  };
  while (verified + corrupt + errors < n && ms_since(t0) < timeout_ms) {
    while (static_cast<int>(waiting.size()) < window && next < n) {
      const int i = next++;
      auto a = *Address::parse(dsts[static_cast<size_t>(i) % dsts.size()]);
      sockaddr_storage ss{};
      socklen_t sl = a.to_sockaddr(ss);
      flows[i].unconnected = (i / 2) % 2 == 1;  // both families get both kinds
      flows[i].dst = ss;
      flows[i].dst_len = sl;
      int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0 ||
          (!flows[i].unconnected && connect(fd, reinterpret_cast<sockaddr*>(&ss), sl) != 0)) {
        errors++;
        if (fd >= 0) close(fd);
        continue;
      }
      opened++;
      flows[i].fd = fd;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u32 = static_cast<uint32_t>(i);
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      send_one(i);
      waiting.push_back(i);
    }
    epoll_event evs[256];
    int k = epoll_wait(ep, evs, 256, 50);
    for (int e = 0; e < k; ++e) {
      const int i = static_cast<int>(evs[e].data.u32);
      sockaddr_storage from{};
      socklen_t flen = sizeof from;
      ssize_t r = recvfrom(flows[i].fd, buf.data(), buf.size(), 0,
                           reinterpret_cast<sockaddr*>(&from), &flen);
      if (r < 0) {
        if (errno != EAGAIN) errors++;
        continue;
      }
      // The echo comes from the destination the app sent to (recvmsg4/6
      // maps the proxy's or the pool address back).
      auto src = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&from), flen);
      auto want_src =
          Address::from_sockaddr(reinterpret_cast<sockaddr*>(&flows[i].dst), flows[i].dst_len);
      if (!src || !want_src || !(*src == *want_src)) r = -2;  // counted corrupt below
      epoll_ctl(ep, EPOLL_CTL_DEL, flows[i].fd, nullptr);
      if (flows[i].done) continue;
      flows[i].done = true;
      auto want = datagram(static_cast<uint32_t>(i), len);
      if (static_cast<size_t>(r) == len && std::equal(want.begin(), want.end(), buf.begin()))
        verified++;
      else
        corrupt++;
    }
    while (!waiting.empty() && flows[waiting.front()].done) waiting.pop_front();
    for (int i : waiting)
      if (!flows[i].done && ms_since(t0) - flows[i].sent_ms > 1000) {
        send_one(i);
        resent++;
      }
  }
  long held = 0;
  for (auto& f : flows) held += f.fd >= 0 ? 1 : 0;
  for (auto& f : flows)
    if (f.fd >= 0) close(f.fd);
  close(ep);
  return fmt::format("opened={} verified={} held={} corrupt={} errors={} resent={}", opened,
                     verified, held, corrupt, errors, resent);
}

// For `seconds`: one connected UDP socket at a time, one datagram of a
// length that varies, its echo verified, closed. Returns "flows= ok=
// corrupt= errors= resent=".
std::string churn_udp(const std::string& dst, int seconds) {
  auto a = *Address::parse(dst);
  sockaddr_storage ss{};
  socklen_t sl = a.to_sockaddr(ss);
  long flows = 0, ok = 0, corrupt = 0, errors = 0, resent = 0;
  std::vector<uint8_t> buf(2048);
  const auto t0 = Clock::now();
  for (uint32_t i = 0; ms_since(t0) < seconds * 1000L; ++i) {
    int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&ss), sl) != 0) {
      errors++;
      if (fd >= 0) close(fd);
      continue;
    }
    flows++;
    auto d = datagram(i, 16 + i % 1024);
    bool got = false;
    for (int attempt = 0; attempt < 3 && !got; ++attempt) {
      if (attempt) resent++;
      if (send(fd, d.data(), d.size(), 0) < 0) break;
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 1000) != 1) continue;
      ssize_t r = recv(fd, buf.data(), buf.size(), 0);
      got = r >= 0;
      if (got && static_cast<size_t>(r) == d.size() && std::equal(d.begin(), d.end(), buf.begin()))
        ok++;
      else if (got)
        corrupt++;
    }
    if (!got) errors++;
    close(fd);
  }
  return fmt::format("flows={} ok={} corrupt={} errors={} resent={}", flows, ok, corrupt, errors,
                     resent);
}

class UdpLoad : public ChainFixture {
 protected:
  // vendor-a (weight 200) and vendor-b (100), each with an IPv4 and an IPv6
  // proxy address served by its own proxy process (5 000 flows each: every
  // UDP flow costs a proxy an onward socket).
  void udp_chain(const std::vector<std::pair<std::string, int>>& dsts,
                 const std::vector<std::string>& proxy_flags) {
    for (char v : {'a', 'b'}) {
      std::string name = std::string("vendor-") + v;
      std::string port = std::to_string(v == 'a' ? kPortA : kPortB);
      int uid = v == 'a' ? kUidA : kUidB;
      cli({"callout", "add", name, "--proxy", "127.0.0.1:" + port, "--proxy", "[::1]:" + port,
           "--proxy-uid", std::to_string(uid)});
      for (const auto& [cidr, dport] : dsts)
        cli({"filter", "add", "--callout", name, "--proto", "udp", "--dst", cidr, "--port",
             std::to_string(dport), "--weight", v == 'a' ? "200" : "100"});
      std::vector<std::string> flags{"--udp"};
      flags.insert(flags.end(), proxy_flags.begin(), proxy_flags.end());
      start_proxy(name, uid, "127.0.0.1:" + port, flags);
      start_proxy(name + "6", uid, "[::1]:" + port, flags);
    }
  }
  long lines(const std::vector<std::string>& names) {
    long n = 0;
    for (const auto& x : names) n += count_log(proxy_log(x)).lines;
    return n;
  }
  long ok(const std::vector<std::string>& names) {
    long n = 0;
    for (const auto& x : names) n += count_log(proxy_log(x)).ok;
    return n;
  }
};

// Half the flows connected, half unconnected (pool addresses), both families.
TEST_F(UdpLoad, TenThousandConcurrentFlowsThroughTwoVendors) {
  constexpr int kFlows = 10000;
  constexpr size_t kLen = 512;
  ASSERT_TRUE(raise_nofile(kFlows + 1000)) << "RLIMIT_NOFILE too low for the app";
  WidePortRange ports;
  ASSERT_TRUE(ports.ok()) << "cannot widen ip_local_port_range in the test's namespace";
  EchoServer dst4("127.0.0.1:0", SOCK_DGRAM), dst6("[::1]:0", SOCK_DGRAM);
  udp_chain({{"127.0.0.1/32", dst4.port()}, {"::1/128", dst6.port()}},
            {"--max-udp-flows", "6000", "--udp-idle-timeout-ms", "3000"});
  // Two servers and four proxies' UDP sockets: the baseline.
  ASSERT_TRUE(eventually([&] { return udp_socket_count() >= 6; }, 5000)) << udp_socket_count();
  const long handoff0 = map_count(pin_dir_, "handoff");
  const long udp0 = udp_socket_count();
  ASSERT_EQ(handoff0, 0);
  auto base = stats();

  std::vector<std::string> dsts{dst4.addr(), dst6.addr()};
  std::string r = run_in(
      cg("app"), kAppUid, [&] { return hold_udp(dsts, kFlows, kLen, 64, 180000); }, 200000);
  std::printf("[ load ] hold_udp: %s\n", r.c_str());
  EXPECT_EQ(kv(r, "opened"), kFlows) << r;
  EXPECT_EQ(kv(r, "verified"), kFlows) << r;
  EXPECT_EQ(kv(r, "held"), kFlows) << r;
  EXPECT_EQ(kv(r, "corrupt"), 0) << r;
  EXPECT_EQ(kv(r, "errors"), 0) << r;

  // Each proxy logs each of its flows once it has been idle; vendor-b's
  // lines carry the whole chain.
  const std::vector<std::string> as{"vendor-a", "vendor-a6"}, bs{"vendor-b", "vendor-b6"};
  EXPECT_TRUE(eventually([&] { return lines(as) >= kFlows && lines(bs) >= kFlows; }, 60000, 100))
      << lines(as) << " " << lines(bs);
  EXPECT_EQ(ok(as), kFlows);
  EXPECT_EQ(ok(bs), kFlows);
  EXPECT_EQ(two_hop_lines(proxy_log("vendor-b")) + two_hop_lines(proxy_log("vendor-b6")), kFlows);
  auto s = stats();
  EXPECT_EQ(s["redirected"] - base["redirected"], 2u * kFlows);
  EXPECT_EQ(s["published"] - base["published"], 2u * kFlows);
  EXPECT_EQ(s["publish_fail"], 0u);
  EXPECT_EQ(s["storage_fail"], 0u);
  // The app closed its sockets and the proxies their onward ones: nothing
  // left in the kernel.
  EXPECT_TRUE(eventually([&] { return map_count(pin_dir_, "handoff") == handoff0; }, 30000, 100))
      << map_count(pin_dir_, "handoff");
  EXPECT_TRUE(eventually([&] { return udp_socket_count() <= udp0; }, 30000, 100))
      << udp_socket_count() << " UDP sockets, baseline " << udp0;
}

TEST_F(UdpLoad, SixtySecondsOfFlowChurnThroughTwoVendors) {
  ASSERT_TRUE(raise_nofile(8192));
  EchoServer dst("127.0.0.1:0", SOCK_DGRAM);
  udp_chain({{"127.0.0.1/32", dst.port()}},
            {"--max-udp-flows", "100000", "--udp-idle-timeout-ms", "500"});
  // The server and four proxies' UDP sockets: the baseline.
  ASSERT_TRUE(eventually([&] { return udp_socket_count() >= 5; }, 5000)) << udp_socket_count();
  const long handoff0 = map_count(pin_dir_, "handoff");
  const long udp0 = udp_socket_count();
  auto base = stats();
  std::string addr = dst.addr();
  std::string r = run_in(
      cg("app"), kAppUid, [&] { return churn_udp(addr, 60); }, 120000);
  std::printf("[ load ] churn_udp 60 s: %s\n", r.c_str());
  const long flows = kv(r, "flows");
  EXPECT_GT(flows, 1000) << r;  // sanity: the loop really ran
  EXPECT_EQ(kv(r, "ok"), flows) << r;
  EXPECT_EQ(kv(r, "corrupt"), 0) << r;
  EXPECT_EQ(kv(r, "errors"), 0) << r;
  const std::vector<std::string> as{"vendor-a"}, bs{"vendor-b"};
  EXPECT_TRUE(eventually([&] { return lines(as) >= flows && lines(bs) >= flows; }, 30000, 100))
      << lines(as) << " " << lines(bs);
  EXPECT_EQ(ok(as), flows);
  EXPECT_EQ(ok(bs), flows);
  EXPECT_EQ(two_hop_lines(proxy_log("vendor-b")), flows);
  auto s = stats();
  EXPECT_EQ(s["redirected"] - base["redirected"], 2u * static_cast<uint64_t>(flows));
  EXPECT_EQ(s["publish_fail"], 0u);
  EXPECT_TRUE(eventually([&] { return map_count(pin_dir_, "handoff") == handoff0; }, 30000, 100))
      << map_count(pin_dir_, "handoff");
  EXPECT_TRUE(eventually([&] { return udp_socket_count() <= udp0; }, 30000, 100))
      << udp_socket_count() << " UDP sockets, baseline " << udp0;
}

}  // namespace
}  // namespace connredir::test
