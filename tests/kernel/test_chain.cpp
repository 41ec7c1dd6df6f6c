// End-to-end chains through real connredir-proxy processes: each vendor's
// proxy handles a flow exactly once, in weight order, and the bytes arrive.
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <fmt/format.h>
#include <map>
#include <vector>
#include <set>

#include "connredir/address.hpp"
#include "harness_load.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;

class Chain : public KernelTest {
 protected:
  // Registers vendor i (0-based) with a proxy on 127.0.0.1:15001+i (and [::1]
  // on the same port if v6), as uid 4001+i, and a filter on the destination.
  void add_vendor(int i, const EchoServer& dst, int weight, const std::string& dst_cidr,
                  bool v6 = false, const std::vector<std::string>& proxy_flags = {}) {
    std::string name = "vendor-" + std::string(1, static_cast<char>('a' + i));
    std::string port = std::to_string(15001 + i);
    std::string listen = v6 ? "[::1]:" + port : "127.0.0.1:" + port;
    cli({"callout", "add", name, "--proxy", listen, "--proxy-uid", std::to_string(4001 + i)});
    cli({"filter", "add", "--callout", name, "--dst", dst_cidr, "--port",
         std::to_string(dst.port()), "--weight", std::to_string(weight), "--context",
         "ctx-" + name});
    start_proxy(name, 4001 + i, listen, proxy_flags);
  }

  // One echo round trip from the app cgroup; returns true if bytes match.
  bool roundtrip(const EchoServer& dst, size_t n, uint32_t seed, int family_override = 0) {
    std::string payload = make_payload(n, seed);
    std::string addr = dst.addr();
    std::string got =
        run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, payload, family_override); });
    EXPECT_EQ(got.size(), payload.size()) << got.substr(0, 200);
    return got == payload;
  }

  // Vendor B registered first, A with the higher weight; one round trip of
  // n bytes must pass A, then B, each logging the chain so far.
  void two_vendors_in_weight_order(const EchoServer& dst, size_t n, uint32_t seed) {
    add_vendor(1, dst, 100, "127.0.0.0/8");
    add_vendor(0, dst, 200, "127.0.0.1/32");
    EXPECT_TRUE(roundtrip(dst, n, seed));
    expect_chain(0, {"vendor-a"}, dst.addr(), n);
    expect_chain(1, {"vendor-a", "vendor-b"}, dst.addr(), n);
  }

  void flows_lists_live_chains(bool v6);

  // Asserts that vendor i's proxy logged exactly one ok flow whose chain is
  // `expect` (callout names, in order).
  void expect_chain(int i, const std::vector<std::string>& expect, const std::string& orig_dst,
                    size_t bytes) {
    std::string name = "vendor-" + std::string(1, static_cast<char>('a' + i));
    auto lines = read_json_lines(proxy_log(name), 1);
    ASSERT_EQ(lines.size(), 1u) << name << " log has " << lines.size() << " flows";
    auto& l = lines[0];
    EXPECT_EQ(l.value("result", ""), "ok") << l.dump();
    ASSERT_TRUE(l.contains("chain")) << l.dump();
    ASSERT_EQ(l["chain"].size(), expect.size()) << l.dump();
    for (size_t k = 0; k < expect.size(); k++)
      EXPECT_EQ(l["chain"][k].value("callout_id", 0u), callout_id(expect[k])) << l.dump();
    EXPECT_EQ(l.value("orig_dst", ""), orig_dst) << l.dump();
    EXPECT_EQ(l.value("bytes_up", 0ull), bytes) << l.dump();
    EXPECT_EQ(l.value("bytes_down", 0ull), bytes) << l.dump();
  }
};

TEST_F(Chain, OneProxyRelaysTheFlowOnce) {
  EchoServer dst("127.0.0.1:0");
  add_vendor(0, dst, 100, "127.0.0.1/32");
  EXPECT_TRUE(roundtrip(dst, 1 << 20, 1));
  expect_chain(0, {"vendor-a"}, dst.addr(), 1 << 20);
  // The destination saw exactly one connection (the proxy's), not a loop.
  EXPECT_EQ(dst.peers().size(), 1u);
}

TEST_F(Chain, TwoVendorsInWeightOrderEachOnce) {
  EchoServer dst("127.0.0.1:0");
  two_vendors_in_weight_order(dst, 300000, 2);
  EXPECT_EQ(dst.peers().size(), 1u);
}

TEST_F(Chain, EqualWeightsOlderFilterFirst) {
  EchoServer dst("127.0.0.1:0");
  add_vendor(1, dst, 100, "127.0.0.1/32");  // older
  add_vendor(0, dst, 100, "127.0.0.1/32");
  EXPECT_TRUE(roundtrip(dst, 1000, 3));
  expect_chain(1, {"vendor-b"}, dst.addr(), 1000);
  expect_chain(0, {"vendor-b", "vendor-a"}, dst.addr(), 1000);
}

TEST_F(Chain, ThreeVendorsSameDestinationChainOfThree) {
  EchoServer dst("127.0.0.1:0");
  add_vendor(0, dst, 300, "127.0.0.1/32");
  add_vendor(1, dst, 200, "127.0.0.1/32");
  add_vendor(2, dst, 100, "127.0.0.1/32");
  EXPECT_TRUE(roundtrip(dst, 100000, 4));
  expect_chain(0, {"vendor-a"}, dst.addr(), 100000);
  expect_chain(1, {"vendor-a", "vendor-b"}, dst.addr(), 100000);
  expect_chain(2, {"vendor-a", "vendor-b", "vendor-c"}, dst.addr(), 100000);
  EXPECT_EQ(dst.peers().size(), 1u);
  auto s = stats();
  EXPECT_EQ(s["redirected"], 3u);
}

TEST_F(Chain, ProxyThatDoesNotPropagateRecordsCannotLoopOntoItself) {
  EchoServer dst("127.0.0.1:0");
  add_vendor(0, dst, 100, "127.0.0.1/32", false, {"--no-propagate"});
  EXPECT_TRUE(roundtrip(dst, 50000, 5));
  expect_chain(0, {"vendor-a"}, dst.addr(), 50000);
  EXPECT_EQ(dst.peers().size(), 1u);
  EXPECT_GE(stats()["self_skip"], 1u);
}

TEST_F(Chain, IPv6Chain) {
  EchoServer dst("[::1]:0");
  add_vendor(0, dst, 200, "::1/128", true);
  add_vendor(1, dst, 100, "::/0", true);
  EXPECT_TRUE(roundtrip(dst, 200000, 6));
  expect_chain(0, {"vendor-a"}, dst.addr(), 200000);
  expect_chain(1, {"vendor-a", "vendor-b"}, dst.addr(), 200000);
}

TEST_F(Chain, IPv4MappedOnDualStackSocket) {
  EchoServer dst("127.0.0.1:0");
  add_vendor(0, dst, 100, "127.0.0.1/32");
  // AF_INET6 socket connecting to ::ffff:127.0.0.1 runs connect6 with an
  // IPv4 flow: it must be classified by the IPv4 filter and still relay.
  EXPECT_TRUE(roundtrip(dst, 70000, 7, AF_INET6));
  expect_chain(0, {"vendor-a"}, dst.addr(), 70000);
}

TEST_F(Chain, GetpeernameReportsOriginalDestination) {
  EchoServer dst("127.0.0.1:0");
  add_vendor(0, dst, 100, "127.0.0.1/32");
  std::string addr = dst.addr();
  for (int family : {AF_INET, AF_INET6}) {
    std::string peer = run_in(cg("app"), kAppUid, [&]() -> std::string {
      auto a = Address::parse(addr);
      sockaddr_storage ss{};
      socklen_t len = family == AF_INET6 ? a->to_sockaddr6(ss) : a->to_sockaddr(ss);
      int fd = socket(family, SOCK_STREAM, 0);
      if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0)
        return std::string("connect: ") + strerror(errno);
      sockaddr_storage p{};
      socklen_t pl = sizeof p;
      if (getpeername(fd, reinterpret_cast<sockaddr*>(&p), &pl) != 0)
        return std::string("getpeername: ") + strerror(errno);
      close(fd);
      auto got = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&p), pl);
      return got ? got->to_string() : got.error().message;
    });
    EXPECT_EQ(peer, addr) << "family " << family;
  }
}

TEST_F(Chain, UnmatchedConnectIsUntouched) {
  EchoServer dst("127.0.0.1:0");
  EchoServer other("127.0.0.1:0");
  add_vendor(0, dst, 100, "127.0.0.1/32");
  std::string payload = make_payload(4096, 8);
  std::string addr = other.addr();
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, payload); }), payload);
  // The other server saw the app directly (no proxy in between).
  ASSERT_EQ(other.peers().size(), 1u);
  EXPECT_EQ(read_json_lines(proxy_log("vendor-a"), 1, 300).size(), 0u);
}

TEST_F(Chain, FiltersChangeWhileConnectionsFlow) {
  EchoServer dst("127.0.0.1:0");
  add_vendor(0, dst, 100, "127.0.0.1/32");
  std::string addr = dst.addr();
  std::string payload = make_payload(2000, 9);
  // A client loops while filters are added and removed under it: every
  // round trip must succeed whichever policy it met.
  auto client = fork_in(cg("app"), kAppUid, [&] {
    int bad = 0;
    for (int k = 0; k < 200; k++)
      if (echo_roundtrip(addr, payload) != payload) bad++;
    return std::to_string(bad);
  });
  for (int k = 0; k < 10; k++) {
    auto r = cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.0/8", "--weight",
                  std::to_string(50 + k)});
    (void)r;
  }
  auto list = cli_json({"filter", "list"});
  for (auto& f : list)
    if (f.value("weight", 0) < 100) cli({"filter", "del", std::to_string(f.value("id", 0))});
  EXPECT_EQ(client->wait(60000), "0");
}

// `connredir flows` (sock_diag) lists the five sockets of one two-vendor
// flow with their roles, chain, TCP state and owner, then nothing once the
// app closed.
void Chain::flows_lists_live_chains(bool v6) {
  EchoServer dst(v6 ? "[::1]:0" : "127.0.0.1:0");
  add_vendor(0, dst, 200, v6 ? "::1/128" : "127.0.0.1/32", v6);
  add_vendor(1, dst, 100, v6 ? "::1/128" : "127.0.0.1/32", v6);
  std::string addr = dst.addr();
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  // The app holds one connection open until told to close it.
  auto app = fork_in(cg("app"), kAppUid, [&]() -> std::string {
    close(go[1]);
    int fd = connect_to(addr);
    if (fd < 0) return "connect failed";
    char buf[5];
    if (write(fd, "hello", 5) != 5 || read(fd, buf, 5) != 5) return "echo failed";
    char b;
    (void)!read(go[0], &b, 1);
    close(fd);
    return "ok";
  });
  close(go[0]);
  // sock_diag's sk_storage dump is optional (inet_diag/tcp_diag): where the
  // kernel lacks it, status says so and `flows` fails saying what to load.
  bool have_diag = false;
  auto status = cli_json({"status"});
  for (auto& f : status["features"])
    if (f.value("name", "") == "sock_diag_bpf_storage") have_diag = f.value("present", false);
  if (!have_diag) {
    auto r = cli({"flows"}, 1);
    EXPECT_NE(r.out.find("sock_diag"), std::string::npos) << r.out;
    ASSERT_EQ(write(go[1], "x", 1), 1);
    close(go[1]);
    EXPECT_EQ(app->wait(), "ok");
    return;
  }
  nlohmann::json flows;
  for (int i = 0; i < 200; i++) {
    flows = cli_json({"flows"});
    // Both proxies accepted and vendor-b connected onward (listing may start
    // before the app's echo has gone through the chain).
    size_t accepted = 0, set = 0;
    for (auto& f : flows) {
      accepted += f.value("role", "") == "proxy-accepted";
      set += f.value("role", "") == "records-set";
    }
    if (accepted == 2 && set == 1) break;
    usleep(10000);
  }
  std::map<std::string, int> roles;
  std::set<uint64_t> flow_ids;
  for (auto& f : flows) {
    roles[f.value("role", "")]++;
    flow_ids.insert(f.value("flow_id", 0ull));
    if (f.value("role", "") == "proxy-accepted") {
      EXPECT_EQ(f.value("orig_dst", ""), addr) << f.dump();
      size_t hop = f.value("hop", 0u);
      ASSERT_EQ(f["chain"].size(), hop) << f.dump();
      EXPECT_EQ(f["chain"][hop - 1].value("callout", ""), hop == 1 ? "vendor-a" : "vendor-b");
      EXPECT_EQ(f["app"].value("uid", 0u), static_cast<unsigned>(kAppUid));
      EXPECT_EQ(f.value("uid", 0u), static_cast<unsigned>(hop == 1 ? 4001 : 4002)) << f.dump();
    }
    if (f.value("role", "") == "redirected" && f.value("uid", 0u) == kAppUid) {
      EXPECT_NE(f.value("inode", 0ull), 0ull) << "the app's socket has a file" << f.dump();
      // Established: it kept only its brief, and its one hop comes from the
      // flow's accepted sockets.
      EXPECT_EQ(f.value("kept", ""), "brief") << f.dump();
      EXPECT_EQ(f.value("orig_dst", ""), addr) << f.dump();
      ASSERT_EQ(f["chain"].size(), 1u) << f.dump();
      EXPECT_EQ(f["chain"][0].value("callout", ""), "vendor-a") << f.dump();
      EXPECT_EQ(f["app"].value("uid", 0u), static_cast<unsigned>(kAppUid)) << f.dump();
    }
    // Client and onward sockets are established, so all kept a brief; the
    // proxies' accepted sockets keep everything for their queries.
    EXPECT_EQ(f.value("kept", ""), f.value("role", "") == "proxy-accepted" ? "full" : "brief")
        << f.dump();
    EXPECT_EQ(f.value("state", ""), "ESTAB") << f.dump();
    EXPECT_EQ(f.value("protocol", ""), "tcp") << f.dump();
    EXPECT_EQ(f["local"].get<std::string>().front() == '[', v6) << f.dump();
  }
  // app socket + vendor-a's outgoing (both redirected), two accepted, and
  // vendor-b's outgoing socket carrying the records it set.
  EXPECT_EQ(roles["redirected"], 2) << flows.dump();
  EXPECT_EQ(roles["proxy-accepted"], 2) << flows.dump();
  EXPECT_EQ(roles["records-set"], 1) << flows.dump();
  EXPECT_EQ(flow_ids.size(), 1u) << flows.dump();
  // The same sockets when every namespace of the host is walked, and when
  // this namespace is named by path.
  uint64_t our_netns = flows[0].value("netns", 0ull);
  size_t ours = 0;
  for (auto& f : cli_json({"flows", "--all-netns"})) ours += f.value("netns", 0ull) == our_netns;
  EXPECT_EQ(ours, flows.size());
  EXPECT_EQ(cli_json({"flows", "--netns", fmt::format("/proc/{}/ns/net", getpid())}).size(),
            flows.size());
  // The picture: application -> vendor-a -> vendor-b -> destination, one
  // flow on each edge, and Graphviz renders it.
  std::string dot = cli({"flows", "--dot"}).out;
  EXPECT_NE(dot.find("\"callout:vendor-a\" -> \"callout:vendor-b\" [label=\"1 flow\"]"),
            std::string::npos)
      << dot;
  EXPECT_NE(dot.find(fmt::format("\"callout:vendor-b\" -> \"dst:{}\" [label=\"1 flow\"]", addr)),
            std::string::npos)
      << dot;
  EXPECT_NE(dot.find(fmt::format(":{}\" -> \"callout:vendor-a\"", kAppUid)), std::string::npos)
      << dot;
  std::string dot_file = dir_ + "/chains.dot", svg_file = dir_ + "/chains.svg";
  {
    std::ofstream out(dot_file);
    out << dot;
  }
  auto render = run({"/usr/bin/dot", "-Tsvg", "-o", svg_file, dot_file});
  EXPECT_EQ(render.status, 0) << "Graphviz (scripts/install-deps.sh installs it): " << render.out;
  std::string svg = read_file(svg_file);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  // Graphviz writes '-' in text as "&#45;".
  EXPECT_TRUE(svg.find("vendor-b") != std::string::npos ||
              svg.find("vendor&#45;b") != std::string::npos)
      << svg.substr(0, 2000);
  ASSERT_EQ(write(go[1], "x", 1), 1);
  close(go[1]);
  EXPECT_EQ(app->wait(), "ok");
  size_t left = 99;
  for (int i = 0; i < 300 && left != 0; i++) {
    left = cli_json({"flows"}).size();
    if (left) usleep(10000);
  }
  EXPECT_EQ(left, 0u) << "per-socket state must die with the sockets";
}

TEST_F(Chain, FlowsListsLiveChainsAndForgetsClosedOnes) { flows_lists_live_chains(false); }
TEST_F(Chain, FlowsListsLiveIPv6Chains) { flows_lists_live_chains(true); }

TEST_F(Chain, ProxyDownBypassGoesToTheNextVendor) {
  EchoServer dst("127.0.0.1:0");
  // vendor-a (first by weight) is registered but its proxy is not running.
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--on-proxy-down", "bypass"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--weight", "200"});
  add_vendor(1, dst, 100, "127.0.0.1/32");
  EXPECT_TRUE(roundtrip(dst, 10000, 12));
  expect_chain(1, {"vendor-b"}, dst.addr(), 10000);
  // Bypassed twice: for the app's connect and for vendor-b's onward connect
  // (which vendor-a may still inspect, as REDIRECTED_BY_OTHER).
  EXPECT_EQ(stats()["down_bypass"], 2u);
  auto list = cli_json({"callout", "list"});
  EXPECT_EQ(list[0].value("on_proxy_down", ""), "bypass") << list.dump();
}

TEST_F(Chain, ProxyDownRefuseFailsTheConnectAtOnce) {
  EchoServer dst("127.0.0.1:0");
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--on-proxy-down", "refuse"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32"});
  std::string addr = dst.addr();
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, "x"); }),
            "ERR:connect Connection refused");
  EXPECT_EQ(stats()["down_refused"], 1u);
  EXPECT_EQ(dst.peers().size(), 0u);
  // Once the proxy is up, the same callout redirects normally.
  start_proxy("vendor-a", -1, "127.0.0.1:15001");
  EXPECT_TRUE(roundtrip(dst, 1000, 13));
  EXPECT_EQ(stats()["redirected"], 1u);
}

// --on-failure refuse: a connect that the callout's filters select but that
// cannot be redirected to it (here: no proxy for the family) fails instead of
// going on uninspected; bypass, the default, lets it go on, counted.
TEST_F(Chain, OnFailureRefuseNeverLetsASelectedFlowPassUninspected) {
  EchoServer dst("[::1]:0");
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--on-failure", "refuse"});
  auto added = cli({"filter", "add", "--callout", "vendor-a", "--dst", "::1/128"});
  EXPECT_NE(added.out.find("are refused (--on-failure refuse)"), std::string::npos) << added.out;
  std::string addr = dst.addr();
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, "x"); }),
            "ERR:connect Connection refused");
  auto s = stats();
  EXPECT_EQ(s["failure_refused"], 1u);
  EXPECT_EQ(s["no_proxy_family"], 1u);
  EXPECT_EQ(s["redirected"], 0u);
  EXPECT_EQ(dst.peers().size(), 0u);
  auto list = cli_json({"callout", "list"});
  EXPECT_EQ(list[0].value("on_failure", ""), "refuse") << list.dump();
  EXPECT_NE(cli({"callout", "list"}).out.find("refuse"), std::string::npos);

  // The same callout with the default policy: the connect reaches the
  // destination directly, and the skip is counted.
  cli({"callout", "del", "vendor-a", "--force"});
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "::1/128"});
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, "x"); }), "x");
  s = stats();
  EXPECT_EQ(s["failure_refused"], 1u);
  EXPECT_EQ(s["no_proxy_family"], 2u);
  EXPECT_EQ(cli_json({"callout", "list"})[0].value("on_failure", ""), "bypass");
}

// Without a MAC key connredir cannot issue records, so it redirects nothing.
// A --on-failure refuse callout then fails the connects its filters select;
// a bypass one lets them go on. (`up` sets the key; zeroing it here stands in
// for the allocation failure that cannot be provoked in a test and takes the
// same path in the classifier.)
TEST_F(Chain, OnFailureRefuseWithoutAKey) {
  EchoServer dst("127.0.0.1:0");
  std::string addr = dst.addr(), port = std::to_string(dst.port());
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--on-failure", "refuse"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port", port});
  ASSERT_TRUE(map_zero_value(pin_dir_, "secret", 0)) << strerror(errno);
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, "x"); }),
            "ERR:connect Connection refused");
  auto s = stats();
  EXPECT_EQ(s["failure_refused"], 1u);
  EXPECT_EQ(s["redirected"], 0u);
  EXPECT_EQ(dst.peers().size(), 0u);

  cli({"callout", "del", "vendor-a", "--force"});
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port", port});
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, "x"); }), "x");
  s = stats();
  EXPECT_EQ(s["failure_refused"], 1u);
  EXPECT_EQ(s["redirected"], 0u);
  EXPECT_EQ(dst.peers().size(), 1u);
}

// A chain already CONNREDIR_MAX_HOPS long: a further callout that selects
// the flow cannot take it. With --on-failure refuse the last proxy's onward
// connect fails (so the flow fails end to end); with bypass it goes to the
// destination after the full chain.
TEST_F(Chain, OnFailureRefuseAtAFullChain) {
  EchoServer dst("127.0.0.1:0");
  for (int i = 0; i < CONNREDIR_MAX_HOPS; i++) add_vendor(i, dst, 900 - i, "127.0.0.1/32");
  std::string late = "vendor-" + std::string(1, static_cast<char>('a' + CONNREDIR_MAX_HOPS));
  auto add_late = [&](bool refuse) {
    std::vector<std::string> args{"callout", "add", late, "--proxy", "127.0.0.1:15099"};
    if (refuse) args.insert(args.end(), {"--on-failure", "refuse"});
    cli(args);
    cli({"filter", "add", "--callout", late, "--dst", "127.0.0.1/32", "--weight", "1"});
  };
  add_late(true);
  std::string addr = dst.addr(), payload = make_payload(1000, 21);
  std::string got = run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, payload); });
  EXPECT_NE(got, payload);
  auto s = stats();
  EXPECT_EQ(s["hop_cap"], 1u);
  EXPECT_EQ(s["failure_refused"], 1u);
  EXPECT_EQ(s["redirected"], static_cast<uint64_t>(CONNREDIR_MAX_HOPS));
  EXPECT_EQ(dst.peers().size(), 0u) << "nothing may reach the destination past the refusal";
  // Per callout: the late vendor met the cap and refused; each of the eight
  // redirected once.
  auto counters = [&](const std::string& name) {
    for (auto& c : cli_json({"callout", "list"}))
      if (c.value("name", "") == name) return c["counters"];
    return nlohmann::json();
  };
  auto late_c = counters(late);
  EXPECT_EQ(late_c.value("hop_cap", 99ull), 1u) << late_c.dump();
  EXPECT_EQ(late_c.value("failure_refused", 99ull), 1u) << late_c.dump();
  EXPECT_EQ(late_c.value("redirected", 99ull), 0u) << late_c.dump();
  for (int i = 0; i < CONNREDIR_MAX_HOPS; i++)
    EXPECT_EQ(
        counters("vendor-" + std::string(1, static_cast<char>('a' + i))).value("redirected", 99ull),
        1u)
        << i;

  cli({"callout", "del", late, "--force"});
  add_late(false);
  EXPECT_TRUE(roundtrip(dst, 1000, 22));
  s = stats();
  EXPECT_EQ(s["hop_cap"], 2u);
  EXPECT_EQ(s["failure_refused"], 1u);
  // Re-added under the same id: its counters started again from zero.
  late_c = counters(late);
  EXPECT_EQ(late_c.value("hop_cap", 99ull), 1u) << late_c.dump();
  EXPECT_EQ(late_c.value("failure_refused", 99ull), 0u) << late_c.dump();
}

// `up --proxies-in`: the socket-option programs attach only to the proxies'
// cgroups. Chains work unchanged; an application's get/setsockopt meets the
// kernel's own answer (no connredir program runs), and the layout is checked.
TEST_F(Chain, ProxiesInKeepsSocketOptionHooksOffApplications) {
  cli({"down"});
  const std::string pa = cg("vendor-a"), pb = cg("vendor-b");
  auto bad = cli({"up", "--cgroup", cgroup_, "--proxies-in", cgroup2_root()}, -1);
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("is not inside --cgroup"), std::string::npos) << bad.out;
  EXPECT_NE(::access(pin_dir_.c_str(), F_OK), 0) << "a refused up left " << pin_dir_;

  cli({"up", "--cgroup", cgroup_, "--proxies-in", pa, "--proxies-in", pb});
  auto again = cli({"up", "--cgroup", cgroup_, "--proxies-in", pa, "--proxies-in", pb});
  EXPECT_NE(again.out.find("already up"), std::string::npos) << again.out;
  auto other = cli({"up", "--cgroup", cgroup_}, -1);
  EXPECT_NE(other.status, 0);
  EXPECT_NE(other.out.find("another layout"), std::string::npos) << other.out;
  auto st = cli_json({"status"});
  EXPECT_TRUE(st.value("up", false)) << st.dump();
  ASSERT_EQ(st["proxies_in"].size(), 2u) << st.dump();
  size_t scoped = 0;
  for (auto& l : st["links"]) scoped += l.value("name", "").find('@') != std::string::npos;
  EXPECT_EQ(scoped, 4u) << st.dump();  // get/setsockopt x 2 proxy cgroups

  EchoServer dst("127.0.0.1:0");
  two_vendors_in_weight_order(dst, 100000, 7);

  // The application (root, so the principal check would pass) sets a forged
  // blob: with a hook that is EINVAL and counted; without one it is the
  // kernel's unknown-level answer and nothing is counted.
  auto before = stats();
  std::string got = run_in(cg("app"), 0, [] {
    std::vector<uint8_t> blob(sizeof(connredir_records), 0xab);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int rc = setsockopt(s, SOL_CONNREDIR, CONNREDIR_RECORDS, blob.data(), blob.size());
    std::string r = rc == 0 ? "OK" : strerrorname_np(errno);
    socklen_t len = blob.size();
    rc = getsockopt(s, SOL_CONNREDIR, CONNREDIR_RECORDS, blob.data(), &len);
    r += std::string(" ") + (rc == 0 ? "OK" : strerrorname_np(errno));
    close(s);
    return r;
  });
  EXPECT_EQ(got, "ENOPROTOOPT EOPNOTSUPP");
  auto after = stats();
  EXPECT_EQ(after["records_rejected"], before["records_rejected"]);
  EXPECT_EQ(after["denied"], before["denied"]);
}

}  // namespace
}  // namespace connredir::test
