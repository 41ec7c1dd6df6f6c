// UDP redirection: a filter with `--proto udp` sends an application's
// connected UDP flow, and its unconnected sends, through each vendor's proxy in weight
// order, each exactly once, IPv4, IPv6 and v4-mapped; the application sees
// replies come from its original destination; a proxy learns the flow with
// udp_flow() (setsockopt CONNREDIR_UDP_FLOW, then the TCP queries) under the
// same rules as TCP; DNS (`dig` against `dnsmasq`) through two vendors.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "connredir/client.hpp"
#include "connredir/records.hpp"
#include "harness.hpp"

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
constexpr int kUidA = 4001;
constexpr int kUidB = 4002;

std::string addr_of(const sockaddr_storage& ss, socklen_t len) {
  auto a = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  return a ? a->to_string() : "?";
}

// One datagram to `dst` from a connected UDP socket (a v6 socket if
// `family` is AF_INET6, so an IPv4 `dst` is v4-mapped): "echo|source|peer",
// the reply's source as recvfrom() reports it and getpeername().
std::string connected_exchange(const std::string& dst, const std::string& payload, int family) {
  auto a = Address::parse(dst);
  if (!a) return "ERR:address";
  sockaddr_storage ss{};
  socklen_t len = family == AF_INET6 ? a->to_sockaddr6(ss) : a->to_sockaddr(ss);
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "ERR:socket";
  timeval tv{3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    out = std::string("ERR:connect ") + strerror(errno);
  } else if (send(fd, payload.data(), payload.size(), 0) < 0) {
    out = std::string("ERR:send ") + strerror(errno);
  } else {
    std::vector<char> buf(65536);
    sockaddr_storage from{};
    socklen_t flen = sizeof from;
    ssize_t n = recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &flen);
    if (n < 0) {
      out = std::string("ERR:recv ") + strerror(errno);
    } else {
      sockaddr_storage peer{};
      socklen_t plen = sizeof peer;
      getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen);
      out = std::string(buf.data(), static_cast<size_t>(n)) + "|" + addr_of(from, flen) + "|" +
            addr_of(peer, plen);
    }
  }
  close(fd);
  return out;
}

class Udp : public KernelTest {
 protected:
  // Two vendors, each with a v4 and a v6 proxy address, filters for UDP to
  // `cidr4` and `cidr6` port `port`: vendor-a (weight 200) first.
  void two_vendors(uint16_t port, const std::vector<std::string>& proxy_extra = {}) {
    for (auto [name, p, uid, weight] :
         {std::tuple{"vendor-a", 15001, kUidA, 200}, std::tuple{"vendor-b", 15002, kUidB, 100}}) {
      cli({"callout", "add", name, "--proxy", fmt::format("127.0.0.1:{}", p), "--proxy",
           fmt::format("[::1]:{}", p), "--proxy-uid", std::to_string(uid)});
      for (const char* cidr : {"127.0.0.0/8", "::1/128"})
        cli({"filter", "add", "--callout", name, "--proto", "udp", "--dst", cidr, "--port",
             std::to_string(port), "--weight", std::to_string(weight)});
      std::vector<std::string> extra{"--listen", fmt::format("[::1]:{}", p), "--udp",
                                     "--udp-idle-timeout-ms", "300"};
      extra.insert(extra.end(), proxy_extra.begin(), proxy_extra.end());
      start_proxy(name, uid, fmt::format("127.0.0.1:{}", p), extra);
    }
  }
};

// The chain, both families and v4-mapped: the app's datagram reaches the
// destination from vendor-b's onward socket (vendor-a, then vendor-b, each
// once), the reply comes back to the app from the original destination, and
// each proxy logs the flow with the chain so far.
TEST_F(Udp, ConnectedFlowsPassEachVendorOnceInOrder) {
  EchoServer echo4("127.0.0.1:0", SOCK_DGRAM);
  EchoServer echo6("[::1]:0", SOCK_DGRAM);
  ASSERT_EQ(echo4.port() == echo6.port(), false);
  // One filter port for both servers: the v6 server gets its own filters.
  two_vendors(static_cast<uint16_t>(echo4.port()));
  for (auto [name, weight] : {std::pair{"vendor-a", 200}, std::pair{"vendor-b", 100}})
    cli({"filter", "add", "--callout", name, "--proto", "udp", "--dst", "::1/128", "--port",
         std::to_string(echo6.port()), "--weight", std::to_string(weight)});
  auto base = stats();

  struct Case {
    std::string dst;
    int family;
    std::string label;
  };
  const std::vector<Case> cases = {{echo4.addr(), AF_INET, "ipv4"},
                                   {echo6.addr(), AF_INET6, "ipv6"},
                                   {echo4.addr(), AF_INET6, "v4-mapped"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    std::string got = run_in(cg("app"), kAppUid, [&] {
      return connected_exchange(c.dst, "dgram-" + c.label, c.family);
    });
    EXPECT_EQ(got, "dgram-" + c.label + "|" + c.dst + "|" + c.dst);
  }
  auto s = stats();
  EXPECT_EQ(s["redirected"] - base["redirected"], 6u) << "3 flows x 2 vendors";
  EXPECT_GE(s["published"] - base["published"], 6u);
  // The destinations saw vendor-b's onward sockets, never the app.
  for (EchoServer* e : {&echo4, &echo6})
    for (const auto& p : e->peers()) EXPECT_EQ(p.find(":15001"), std::string::npos) << p;

  auto a = read_json_lines(proxy_log("vendor-a"), 3);
  auto b = read_json_lines(proxy_log("vendor-b"), 3);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (const auto& line : a) {
    EXPECT_EQ(line["proto"], "udp") << line.dump();
    EXPECT_EQ(line["result"], "ok") << line.dump();
    EXPECT_EQ(line["chain"].size(), 1u) << line.dump();
    EXPECT_EQ(line["hop"], 1) << line.dump();
    EXPECT_EQ(line["propagated"], true) << line.dump();
    EXPECT_EQ(line["uid"], kAppUid) << line.dump();
  }
  for (const auto& line : b) {
    EXPECT_EQ(line["result"], "ok") << line.dump();
    ASSERT_EQ(line["chain"].size(), 2u) << line.dump();
    EXPECT_EQ(line["chain"][0]["callout_id"], callout_id("vendor-a"));
    EXPECT_EQ(line["chain"][1]["callout_id"], callout_id("vendor-b"));
    EXPECT_EQ(line["hop"], 2) << line.dump();
    EXPECT_EQ(line["uid"], kAppUid) << "the application, not vendor-a: " << line.dump();
    EXPECT_GT(line["bytes_down"].get<uint64_t>(), 0u);
  }
  // Per-flow state went with the sockets: no hand-off left behind.
  EXPECT_TRUE(eventually(
      [&] {
        return metric_samples(cli({"metrics", "--once"}).out)["connredir_handoff_entries"] == 0;
      },
      3000))
      << cli({"metrics", "--once"}).out;
}

// A `proto any` redirect filter (written for TCP) leaves UDP alone: the
// datagram reaches the destination directly.
TEST_F(Udp, OnlyUdpFiltersRedirectUdp) {
  EchoServer echo("127.0.0.1:0", SOCK_DGRAM);
  EchoServer other("127.0.0.1:0", SOCK_DGRAM);
  two_vendors(static_cast<uint16_t>(echo.port()));
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port",
       std::to_string(other.port())});
  auto base = stats();
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return udp_roundtrip(other.addr(), "any", true); }),
            "any");
  EXPECT_EQ(
      run_in(cg("app"), kAppUid, [&] { return udp_roundtrip(other.addr(), "unconnected", false); }),
      "unconnected");
  EXPECT_EQ(stats()["redirected"] - base["redirected"], 0u);
}

// Datagrams from one unconnected socket (AF_INET6 if `family` says so, an
// IPv4 destination then v4-mapped) to each of `dsts`, in turn, `repeat`
// times; then every reply as "payload|source" (recvfrom()'s), sorted and
// joined by ",".
std::string unconnected_exchange(const std::vector<std::string>& dsts, int family, int repeat) {
  int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "ERR:socket";
  timeval tv{3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::vector<std::string> got;
  for (int r = 0; r < repeat; ++r) {
    for (const auto& d : dsts) {
      auto a = Address::parse(d);
      sockaddr_storage ss{};
      const socklen_t len = family == AF_INET6 ? a->to_sockaddr6(ss) : a->to_sockaddr(ss);
      const std::string payload = fmt::format("{}#{}", d, r);
      if (sendto(fd, payload.data(), payload.size(), 0, reinterpret_cast<sockaddr*>(&ss), len) < 0)
        got.push_back(std::string("ERR:sendto ") + strerror(errno));
    }
  }
  for (size_t i = 0; i < dsts.size() * static_cast<size_t>(repeat); ++i) {
    std::vector<char> buf(2048);
    sockaddr_storage from{};
    socklen_t flen = sizeof from;
    ssize_t n = recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &flen);
    if (n < 0) {
      got.push_back(std::string("ERR:recvfrom ") + strerror(errno));
      break;
    }
    got.push_back(std::string(buf.data(), static_cast<size_t>(n)) + "|" + addr_of(from, flen));
  }
  close(fd);
  std::sort(got.begin(), got.end());
  return fmt::format("{}", fmt::join(got, ","));
}

std::string expected_replies(const std::vector<std::string>& dsts, int repeat) {
  std::vector<std::string> want;
  for (int r = 0; r < repeat; ++r)
    for (const auto& d : dsts) want.push_back(fmt::format("{}#{}|{}", d, r, d));
  std::sort(want.begin(), want.end());
  return fmt::format("{}", fmt::join(want, ","));
}

// Unconnected sends, both families and v4-mapped: one socket sending to
// two destinations gets each reply from the destination it sent to
// (recvfrom()), through vendor-a (by pool address) and vendor-b (vendor-a's
// connected onward socket), each once, one flow per destination however
// many datagrams; nobody else may bind a pool address at a proxy's port.
TEST_F(Udp, UnconnectedSendsPassEachVendorOnceAndRepliesComeFromEachDestination) {
  // `connredir up` added the IPv6 pool's local route in the test's namespace.
  auto route = run({ip_tool(), "-6", "route", "show", "table", "local", "fdcc:7264::/64"});
  ASSERT_NE(route.out.find("local fdcc:7264::/64 dev lo"), std::string::npos) << route.out;
  EchoServer echo4("127.0.0.1:0", SOCK_DGRAM);
  const int port = echo4.port();
  EchoServer echo4b(fmt::format("127.0.0.2:{}", port), SOCK_DGRAM);
  EchoServer echo6(fmt::format("[::1]:{}", port), SOCK_DGRAM);
  two_vendors(static_cast<uint16_t>(port));
  auto base = stats();

  const std::vector<std::string> v4{echo4.addr(), echo4b.addr()};
  const std::vector<std::string> v6{echo6.addr()};
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return unconnected_exchange(v4, AF_INET, 2); }),
            expected_replies(v4, 2));
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return unconnected_exchange(v6, AF_INET6, 2); }),
            expected_replies(v6, 2));
  EXPECT_EQ(
      run_in(cg("app"), kAppUid, [&] { return unconnected_exchange({echo4.addr()}, AF_INET6, 1); }),
      expected_replies({echo4.addr()}, 1))
      << "v4-mapped";
  auto s = stats();
  // 4 flows (one per socket and destination) x 2 vendors.
  EXPECT_EQ(s["redirected"] - base["redirected"], 8u);
  for (EchoServer* e : {&echo4, &echo4b, &echo6})
    EXPECT_FALSE(e->peers().empty()) << "the datagrams reached every destination";

  auto a = read_json_lines(proxy_log("vendor-a"), 4);
  auto b = read_json_lines(proxy_log("vendor-b"), 4);
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  std::vector<std::string> dsts;
  for (const auto& line : a) {
    EXPECT_EQ(line["proto"], "udp") << line.dump();
    EXPECT_EQ(line["result"], "ok") << line.dump();
    EXPECT_EQ(line["chain"].size(), 1u) << line.dump();
    EXPECT_EQ(line["uid"], kAppUid) << line.dump();
    dsts.push_back(line["orig_dst"].get<std::string>());
  }
  std::sort(dsts.begin(), dsts.end());
  std::vector<std::string> want{echo4.addr(), echo4.addr(), echo4b.addr(), echo6.addr()};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(dsts, want);
  for (const auto& line : b) {
    EXPECT_EQ(line["result"], "ok") << line.dump();
    ASSERT_EQ(line["chain"].size(), 2u) << line.dump();
    EXPECT_EQ(line["hop"], 2) << line.dump();
  }

  // A pool address at a callout's port belongs to its principal.
  for (const char* pool : {"127.77.0.9:15001", "[fdcc:7264::9]:15002"}) {
    auto r = run_in(cg("app"), kAppUid, [&] {
      auto a = Address::parse(pool);
      sockaddr_storage ss{};
      const socklen_t len = a->to_sockaddr(ss);
      int fd = socket(a->family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      const int rc = bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
      const int e = errno;
      close(fd);
      return rc == 0 ? std::string("bound") : std::string(strerror(e));
    });
    EXPECT_EQ(r, strerror(EACCES)) << pool;
  }
}

// The proxy's side of the contract, by hand: udp_flow() names a flow by its
// client address, with the same errors as TCP's queries.
TEST_F(Udp, ProxyContract) {
  EchoServer echo("127.0.0.1:0", SOCK_DGRAM);
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--proxy-uid",
       std::to_string(kUidA)});
  cli({"filter", "add", "--callout", "vendor-a", "--proto", "udp", "--dst", "127.0.0.1/32",
       "--port", std::to_string(echo.port()), "--context", "dns-tenant"});
  // A probe proxy in vendor-a's cgroup as its principal: receives one
  // datagram, answers for it, and reports what udp_flow() said.
  auto proxy = fork_in(cg("vendor-a"), kUidA, [&]() -> std::string {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    auto self = *Address::parse("127.0.0.1:15001");
    sockaddr_storage ss{};
    socklen_t len = self.to_sockaddr(ss);
    if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return "bind failed";
    int any = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    auto wild = *Address::parse("0.0.0.0:0");
    len = wild.to_sockaddr(ss);
    (void)bind(any, reinterpret_cast<sockaddr*>(&ss), len);
    int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    char buf[512];
    sockaddr_storage from{};
    socklen_t flen = sizeof from;
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen);
    if (n < 0) return "recv failed";
    auto client = *Address::from_sockaddr(reinterpret_cast<sockaddr*>(&from), flen);
    std::string out;
    auto f = udp_flow(fd, client);
    if (!f) return "udp_flow: " + f.error().message;
    auto info = decode_records(f->records);
    out += fmt::format("dst={} hop={} hops={} user={} src={}", f->context.orig_dst.to_string(),
                       f->context.hop, info ? info->hops.size() : 0,
                       std::string(f->context.user.begin(), f->context.user.end()),
                       f->context.orig_src == client ? "client" : f->context.orig_src.to_string());
    Address nobody = client;
    nobody.port = static_cast<uint16_t>(client.port + 1);
    auto e1 = udp_flow(fd, nobody);
    out += " unknown=" + (e1 ? std::string("OK") : std::to_string(e1.error().code));
    auto e2 = udp_flow(any, client);
    out += " wildcard=" + (e2 ? std::string("OK") : std::to_string(e2.error().code));
    auto e3 = udp_flow(tcp, client);
    out += " tcp=" + (e3 ? std::string("OK") : std::to_string(e3.error().code));
    // The per-datagram check: the same flow, another id, an unknown client.
    auto same = udp_flow_unchanged(fd, client, f->context.flow_id);
    auto other = udp_flow_unchanged(fd, client, f->context.flow_id + 1);
    auto none = udp_flow_unchanged(fd, nobody, f->context.flow_id);
    auto yn = [](const Result<bool>& r) {
      return r ? std::string(*r ? "yes" : "no") : "error " + r.error().message;
    };
    out += " unchanged=" + yn(same) + "," + yn(other) + "," + yn(none);
    // Malformed selections: a short argument, an unknown family, a local end
    // on another port.
    auto raw = [&](connredir_udp_flow sel, socklen_t len) {
      return setsockopt(fd, SOL_CONNREDIR, CONNREDIR_UDP_FLOW, &sel, len) == 0 ? 0 : errno;
    };
    connredir_udp_flow sel{};
    sel.client = client.to_abi();
    const int shortlen = raw(sel, 7);
    connredir_udp_flow fam = sel;
    fam.client.family = 99;
    const int badfam = raw(fam, sizeof fam);
    connredir_udp_flow port = sel;
    port.local = self.to_abi();
    port.local.port = htons(15009);
    const int badport = raw(port, sizeof port);
    out += fmt::format(" malformed={},{},{}", shortlen, badfam, badport);
    sockaddr_storage cs{};
    socklen_t clen = client.to_sockaddr(cs);
    (void)sendto(fd, buf, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&cs), clen);
    close(fd);
    close(any);
    close(tcp);
    return out;
  });
  ASSERT_TRUE(eventually(
      [&] { return read_file("/proc/net/udp").find(":3A99 ") != std::string::npos; }, 3000));
  std::string got =
      run_in(cg("app"), kAppUid, [&] { return connected_exchange(echo.addr(), "q", AF_INET); });
  EXPECT_EQ(got, "q|" + echo.addr() + "|" + echo.addr());
  EXPECT_EQ(proxy->wait(),
            fmt::format("dst={} hop=1 hops=1 user=dns-tenant src=client unknown={} wildcard={} "
                        "tcp={} unchanged=yes,no,no malformed={},{},{}",
                        echo.addr(), ENOENT, EADDRNOTAVAIL, EOPNOTSUPP, EINVAL, EINVAL, EINVAL));
  EXPECT_TRUE(echo.peers().empty()) << "the probe proxy answered; nothing went direct";
}

// Another principal may not have the flow: vendor-b's principal, root-bound
// socket handed over, gets EACCES; an unauthorised process gets EACCES too.
TEST_F(Udp, OnlyTheCalloutsPrincipalMaySelectItsFlow) {
  EchoServer echo("127.0.0.1:0", SOCK_DGRAM);
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--proxy-uid",
       std::to_string(kUidA)});
  cli({"callout", "add", "vendor-b", "--proxy", "127.0.0.1:15002", "--proxy-uid",
       std::to_string(kUidB)});
  cli({"filter", "add", "--callout", "vendor-a", "--proto", "udp", "--dst", "127.0.0.1/32",
       "--port", std::to_string(echo.port())});
  // Root binds vendor-a's address and, after the datagram arrived, the
  // socket is used by vendor-b's principal.
  auto proxy = fork_in(cg("vendor-a"), -1, [&]() -> std::string {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    auto self = *Address::parse("127.0.0.1:15001");
    sockaddr_storage ss{};
    socklen_t len = self.to_sockaddr(ss);
    if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return "bind failed";
    char buf[64];
    sockaddr_storage from{};
    socklen_t flen = sizeof from;
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen) < 0)
      return "recv failed";
    auto client = *Address::from_sockaddr(reinterpret_cast<sockaddr*>(&from), flen);
    if (setresuid(kUidB, kUidB, kUidB) != 0) return "setresuid failed";
    auto f = udp_flow(fd, client);
    return f ? "OK" : std::to_string(f.error().code);
  });
  ASSERT_TRUE(eventually(
      [&] { return read_file("/proc/net/udp").find(":3A99 ") != std::string::npos; }, 3000));
  auto base = stats();
  (void)run_in(cg("app"), kAppUid, [&] {
    // No answer comes: the probe only checks the selection.
    timeval tv{0, 300000};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    auto d = *Address::parse(echo.addr());
    sockaddr_storage ss{};
    socklen_t len = d.to_sockaddr(ss);
    connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
    send(fd, "x", 1, 0);
    char b[8];
    (void)recv(fd, b, sizeof b, 0);
    close(fd);
    return std::string();
  });
  EXPECT_EQ(proxy->wait(), std::to_string(EACCES));
  EXPECT_GE(stats()["denied"] - base["denied"], 1u);
}

// DNS through two vendors, with the real programs: dig resolves a name
// served by dnsmasq (outside the policed cgroup), through vendor-a then
// vendor-b; each proxy logs the query's flow with its chain.
TEST_F(Udp, DigResolvesThroughTwoVendorsToDnsmasq) {
  const char* dig = "/usr/bin/dig";
  const char* dnsmasq = "/usr/sbin/dnsmasq";
  ASSERT_EQ(access(dig, X_OK), 0) << "install bind9-dnsutils (scripts/install-deps.sh)";
  ASSERT_EQ(access(dnsmasq, X_OK), 0) << "install dnsmasq-base (scripts/install-deps.sh)";
  const uint16_t port = 5353;
  auto server =
      spawn_in("", -1,
               {dnsmasq, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                "--conf-file=/dev/null", "--pid-file=", "--user=root", "--bind-interfaces",
                "--listen-address=127.0.0.1", fmt::format("--port={}", port),
                "--address=/inspected.test/192.0.2.77", "--log-queries", "--log-facility=-"},
               dir_ + "/dnsmasq.out");
  ASSERT_TRUE(eventually(
      [&] {
        return read_file("/proc/net/udp").find(fmt::format(":{:04X} ", port)) != std::string::npos;
      },
      5000))
      << read_file(dir_ + "/dnsmasq.out");
  two_vendors(port);
  auto r = run_in(cg("app"), kAppUid, [&] {
    auto res = run({dig, "@127.0.0.1", "-p", std::to_string(port), "+short", "+tries=1", "+time=3",
                    "+notcp", "inspected.test", "A"});
    return res.out;
  });
  EXPECT_EQ(r, "192.0.2.77\n") << read_file(dir_ + "/dnsmasq.out");
  auto a = read_json_lines(proxy_log("vendor-a"), 1);
  auto b = read_json_lines(proxy_log("vendor-b"), 1);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[0]["orig_dst"], fmt::format("127.0.0.1:{}", port));
  EXPECT_EQ(a[0]["uid"], kAppUid) << a[0].dump();
  EXPECT_EQ(a[0]["proto"], "udp") << a[0].dump();
  EXPECT_EQ(b[0]["chain"].size(), 2u) << b[0].dump();
  EXPECT_EQ(b[0]["result"], "ok") << b[0].dump();
  EXPECT_NE(read_file(dir_ + "/dnsmasq.out").find("query[A] inspected.test"), std::string::npos)
      << "dnsmasq answered the query itself";
}

}  // namespace
}  // namespace connredir::test
