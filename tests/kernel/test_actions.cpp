// Filter actions, as WFP has them: a permit filter exempts matching flows
// from every lower-weight filter (they go direct), a block filter fails the
// connect or the UDP send with EPERM. TCP and UDP (connected and unconnected
// sockets), IPv4, IPv6 and v4-mapped; and the case users ask for, blocking
// QUIC (UDP 443) for inspected applications so browsers fall back to TCP.
#include <sys/socket.h>

#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "harness.hpp"

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
constexpr int kOtherUid = 1001;
const std::string kEperm = strerror(EPERM);

class Actions : public KernelTest {
 protected:
  // One UDP echo of `payload` from the app cgroup as `uid`.
  std::string app_udp(const std::string& addr, const std::string& payload, bool connected,
                      int uid = kAppUid, int family_override = 0) {
    return run_in(cg("app"), uid,
                  [&] { return udp_roundtrip(addr, payload, connected, family_override); });
  }
};

// A vendor redirects 127.0.0.0/8 (weight 100); a permit filter for one
// destination at a higher weight exempts it, one at a lower weight does not.
TEST_F(Actions, PermitExemptsAFlowFromLowerWeightFiltersOnly) {
  for (const char* host : {"127.0.0.1", "[::1]"}) {
    SCOPED_TRACE(host);
    bool v6 = host[0] == '[';
    EchoServer exempt(std::string(host) + ":0");
    EchoServer inspected(std::string(host) + ":0");
    std::string net = v6 ? "::1/128" : "127.0.0.0/8";
    std::string one = v6 ? "::1/128" : "127.0.0.1/32";
    std::string listen = std::string(host) + ":15001";
    std::string vendor = v6 ? "vendor-six" : "vendor-four";
    cli({"callout", "add", vendor, "--proxy", listen, "--proxy-uid", "4001"});
    cli({"filter", "add", "--callout", vendor, "--dst", net, "--weight", "100"});
    cli({"filter", "add", "--action", "permit", "--dst", one, "--port",
         std::to_string(exempt.port()), "--weight", "200"});
    cli({"filter", "add", "--action", "permit", "--dst", one, "--port",
         std::to_string(inspected.port()), "--weight", "50"});
    start_proxy(vendor, 4001, listen);
    auto base = stats();

    EXPECT_EQ(app_roundtrip(exempt.addr(), "direct", kAppUid), "direct");
    auto s = stats();
    EXPECT_EQ(s["permitted"] - base["permitted"], 1u);
    EXPECT_EQ(s["redirected"] - base["redirected"], 0u);

    // The weight-50 permit is not met by the app's connect (vendor-a's
    // filter comes first) but by the proxy's onward connect, which skips
    // vendor-a (its own) and meets it.
    EXPECT_EQ(app_roundtrip(inspected.addr(), "via proxy", kAppUid), "via proxy");
    s = stats();
    EXPECT_EQ(s["redirected"] - base["redirected"], 1u);
    EXPECT_EQ(s["self_skip"] - base["self_skip"], 1u);
    EXPECT_EQ(s["permitted"] - base["permitted"], 2u);
    auto flows = read_json_lines(proxy_log(vendor), 1);
    ASSERT_EQ(flows.size(), 1u);
    EXPECT_EQ(flows[0].value("orig_dst", ""), inspected.addr()) << flows[0].dump();

    auto list = cli_json({"filter", "list"});
    size_t permits = 0;
    for (auto& f : list)
      permits += f.value("action", "") == "permit" && f.value("callout", "x") == "";
    EXPECT_EQ(permits, 2u) << list.dump();
    procs_.clear();
    cli({"callout", "del", vendor, "--force"});
    for (auto& f : cli_json({"filter", "list"}))
      cli({"filter", "del", std::to_string(f.value("id", 0u))});
  }
}

// A block filter fails the app's TCP connect with EPERM, over both families
// and a v6 socket's v4-mapped connect; other ports and other apps go on.
TEST_F(Actions, BlockFailsTcpConnectsWithEperm) {
  EchoServer v4("127.0.0.1:0");
  EchoServer v6("[::1]:0");
  EchoServer open4("127.0.0.1:0");
  for (const auto* s : {&v4, &v6})
    cli({"filter", "add", "--action", "block", "--proto", "tcp", "--port",
         std::to_string(s->port()), "--app-uid", std::to_string(kAppUid)});
  auto base = stats();
  EXPECT_EQ(app_roundtrip(v4.addr(), "x", kAppUid), "ERR:connect " + kEperm);
  EXPECT_EQ(app_roundtrip(v6.addr(), "x", kAppUid), "ERR:connect " + kEperm);
  std::string mapped = v4.addr();
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(mapped, "x", AF_INET6); }),
            "ERR:connect " + kEperm);
  EXPECT_EQ(app_roundtrip(open4.addr(), "open", kAppUid), "open");
  EXPECT_EQ(app_roundtrip(v4.addr(), "other app", kOtherUid), "other app");
  auto s = stats();
  EXPECT_EQ(s["blocked"] - base["blocked"], 3u);
  EXPECT_EQ(v4.peers().size(), 1u) << "only the other app's connect reaches it";
  EXPECT_TRUE(v6.peers().empty());
}

// The QUIC case: UDP port 443 blocked for the app, connected and unconnected
// sockets, IPv4, IPv6 and v4-mapped; TCP 443 (where a proxy can inspect),
// other UDP ports, other apps and processes outside the policed cgroup go
// on, every datagram echoed.
TEST_F(Actions, BlockingQuicLeavesTcpAndOtherUdpAlone) {
  EchoServer quic4("127.0.0.1:443", SOCK_DGRAM);
  EchoServer quic6("[::1]:443", SOCK_DGRAM);
  EchoServer tls("127.0.0.1:443");
  EchoServer dns4("127.0.0.1:0", SOCK_DGRAM);
  EchoServer dns6("[::1]:0", SOCK_DGRAM);
  cli({"filter", "add", "--action", "block", "--proto", "udp", "--port", "443", "--app-uid",
       std::to_string(kAppUid), "--weight", "1000"});
  auto base = stats();
  const std::string send_fail = "ERR:send " + kEperm;
  const std::string connect_fail = "ERR:connect " + kEperm;
  for (bool connected : {true, false}) {
    SCOPED_TRACE(connected ? "connected" : "unconnected");
    const std::string& fail = connected ? connect_fail : send_fail;
    EXPECT_EQ(app_udp(quic4.addr(), "q", connected), fail);
    EXPECT_EQ(app_udp(quic6.addr(), "q", connected), fail);
    EXPECT_EQ(app_udp(quic4.addr(), "q", connected, kAppUid, AF_INET6), fail) << "v4-mapped";
    EXPECT_EQ(app_udp(dns4.addr(), "d4", connected), "d4");
    EXPECT_EQ(app_udp(dns6.addr(), "d6", connected), "d6");
    EXPECT_EQ(app_udp(dns4.addr(), "m", connected, kAppUid, AF_INET6), "m") << "v4-mapped";
    EXPECT_EQ(app_udp(quic4.addr(), "other app", connected, kOtherUid), "other app");
    // This process is outside the policed cgroup: never classified.
    EXPECT_EQ(udp_roundtrip(quic6.addr(), "outside", connected), "outside");
  }
  EXPECT_EQ(app_roundtrip(tls.addr(), "tcp 443", kAppUid), "tcp 443");
  auto s = stats();
  EXPECT_EQ(s["blocked"] - base["blocked"], 6u);
  for (const auto& p : quic4.peers()) EXPECT_EQ(p.find("127.0.0.1:"), 0u) << p;
  EXPECT_EQ(quic4.peers().size(), 2u) << "only the other app's two datagrams reach it";
}

// A permit filter above a block filter carves an exception out of it, for
// UDP as for TCP; below it, it is never met.
TEST_F(Actions, PermitAboveABlockIsAnException) {
  EchoServer allowed("127.0.0.2:443", SOCK_DGRAM);
  EchoServer blocked("127.0.0.3:443", SOCK_DGRAM);
  cli({"filter", "add", "--action", "block", "--proto", "udp", "--port", "443", "--weight", "100"});
  cli({"filter", "add", "--action", "permit", "--proto", "udp", "--dst", "127.0.0.2", "--weight",
       "200"});
  cli({"filter", "add", "--action", "permit", "--proto", "udp", "--dst", "127.0.0.3", "--weight",
       "50"});
  for (bool connected : {true, false}) {
    EXPECT_EQ(app_udp(allowed.addr(), "ok", connected), "ok");
    EXPECT_EQ(app_udp(blocked.addr(), "no", connected).rfind("ERR:", 0), 0u);
  }
  auto s = stats();
  EXPECT_EQ(s["permitted"], 2u);
  EXPECT_EQ(s["blocked"], 2u);
}

}  // namespace
}  // namespace connredir::test
