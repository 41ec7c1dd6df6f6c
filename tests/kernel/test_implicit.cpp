// Implicit records (issue 16): proxies that never set records (here the
// reference proxy with --no-propagate, which behaves like squid or mitmproxy:
// it reads the original destination and connects onward on a fresh socket)
// still chain, each vendor exactly once, because connredir carries the
// records of the flow a proxy accepted over to its record-less onward
// connect; ambiguous cases attach nothing; with implicit records off the loop
// breaker ends the loop two such proxies would otherwise make.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <atomic>
#include <thread>
#include <set>
#include <string>
#include <vector>

#include "connredir/address.hpp"
#include "harness.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
constexpr int kOtherAppUid = 1001;
constexpr int kPortA = 15061, kPortB = 15062;
constexpr int kUidA = 4061, kUidB = 4062;

class Implicit : public KernelTest {
 protected:
  // vendor-a (weight 200) then vendor-b (weight 100) on dst's port, each a
  // reference proxy started with `a_flags` / `b_flags`.
  void two_vendors(const EchoServer& dst, const std::vector<std::string>& a_flags,
                   const std::vector<std::string>& b_flags,
                   const std::vector<std::string>& callout_extra = {}) {
    add_vendor("vendor-a", kPortA, kUidA, "127.0.0.1/32", dst.port(), 200, callout_extra);
    add_vendor("vendor-b", kPortB, kUidB, "127.0.0.1/32", dst.port(), 100, callout_extra);
    start_proxy("vendor-a", kUidA, "127.0.0.1:" + std::to_string(kPortA), a_flags);
    start_proxy("vendor-b", kUidB, "127.0.0.1:" + std::to_string(kPortB), b_flags);
  }

  // Each line of a vendor's flow log: its chain as callout names.
  std::vector<std::vector<uint32_t>> chains(const std::vector<nlohmann::json>& lines) {
    std::vector<std::vector<uint32_t>> out;
    for (const auto& l : lines) {
      std::vector<uint32_t> c;
      for (const auto& h : l["chain"]) c.push_back(h.value("callout_id", 0u));
      out.push_back(c);
    }
    return out;
  }
};

// Two proxies that set no records: the second sees the first's flow (same
// flow id, the app as origin, both hops) and the destination one connection.
TEST_F(Implicit, TwoProxiesThatSetNoRecordsChainOnce) {
  EchoServer dst("127.0.0.1:0");
  two_vendors(dst, {"--no-propagate"}, {"--no-propagate"});
  std::string payload = make_payload(200000, 61);
  EXPECT_EQ(app_roundtrip(dst.addr(), payload, kAppUid), payload);
  auto a = read_json_lines(proxy_log("vendor-a"), 1);
  auto b = read_json_lines(proxy_log("vendor-b"), 1);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  const uint32_t ia = callout_id("vendor-a"), ib = callout_id("vendor-b");
  EXPECT_EQ(chains(a)[0], (std::vector<uint32_t>{ia}));
  EXPECT_EQ(chains(b)[0], (std::vector<uint32_t>{ia, ib})) << b[0].dump();
  EXPECT_EQ(b[0].value("flow_id", 0ull), a[0].value("flow_id", 1ull));
  EXPECT_EQ(b[0].value("uid", 0u), static_cast<uint32_t>(kAppUid)) << b[0].dump();
  EXPECT_EQ(b[0].value("orig_dst", ""), dst.addr());
  EXPECT_EQ(b[0].value("bytes_up", 0ull), payload.size());
  EXPECT_EQ(dst.peers().size(), 1u);
  auto st = stats();
  EXPECT_EQ(st["redirected"], 2u);
  EXPECT_EQ(st["implicit"], 2u);  // a's onward connect, and b's (which goes direct)
  EXPECT_EQ(st["implicit_ambiguous"], 0u);
  EXPECT_EQ(st["loop_broken"], 0u);
  // Counted against the callout whose principal connected.
  auto list = cli_json({"callout", "list", "--json"});
  for (const auto& c : list) {
    SCOPED_TRACE(c.dump());
    EXPECT_EQ(c["counters"].value("implicit", 9ull), 1u);
  }
}

// Many concurrent flows to one destination: every flow passes each vendor
// once, byte-exact, and the destination sees one connection per flow.
TEST_F(Implicit, ConcurrentFlowsToOneDestinationEachPassEveryVendorOnce) {
  EchoServer dst("127.0.0.1:0");
  two_vendors(dst, {"--no-propagate"}, {"--no-propagate"});
  constexpr int kFlows = 40;
  // One application process with a thread per flow, not a process per flow:
  // forking 40 times while this process's echo server thread is busy can
  // leave a child blocked on an allocator lock inherited mid-operation (seen
  // under ASan: children that never connected).
  std::string addr = dst.addr();
  std::string ok = run_in(
      cg("app"), kAppUid,
      [addr]() -> std::string {
        std::vector<std::thread> flows;
        std::atomic<int> ok{0};
        for (int i = 0; i < kFlows; ++i)
          flows.emplace_back([&, i] {
            std::string payload = make_payload(20000 + i, 100 + i);
            if (echo_roundtrip(addr, payload) == payload) ++ok;
          });
        for (auto& t : flows) t.join();
        return std::to_string(ok.load());
      },
      60000);
  EXPECT_EQ(ok, std::to_string(kFlows)) << fmt::format("{}", fmt::join(stats(), " "));
  auto a = read_json_lines(proxy_log("vendor-a"), kFlows);
  auto b = read_json_lines(proxy_log("vendor-b"), kFlows);
  ASSERT_EQ(a.size(), static_cast<size_t>(kFlows));
  ASSERT_EQ(b.size(), static_cast<size_t>(kFlows));
  const uint32_t ia = callout_id("vendor-a"), ib = callout_id("vendor-b");
  std::set<uint64_t> fa, fb;
  for (const auto& l : a) fa.insert(l.value("flow_id", 0ull));
  for (const auto& c : chains(b)) EXPECT_EQ(c, (std::vector<uint32_t>{ia, ib}));
  for (const auto& l : b) fb.insert(l.value("flow_id", 0ull));
  // Concurrent flows to one destination with one chain are interchangeable
  // to the kernel: an onward connect gets the records of one pending
  // one (docs/ABI.md, "Implicit records"), so b's flow ids are some of a's,
  // never one that did not pass vendor-a.
  EXPECT_EQ(fa.size(), static_cast<size_t>(kFlows));
  for (uint64_t id : fb) EXPECT_TRUE(fa.count(id)) << id;
  EXPECT_EQ(dst.peers().size(), static_cast<size_t>(kFlows));
  auto st = stats();
  EXPECT_EQ(st["redirected"], 2u * kFlows);
  EXPECT_EQ(st["implicit"], 2u * kFlows);
  EXPECT_EQ(st["loop_broken"], 0u);
}

// A proxy that sets records keeps full control: vendor-a propagates them
// explicitly, only vendor-b's onward connect takes implicit ones.
TEST_F(Implicit, ExplicitRecordsWin) {
  EchoServer dst("127.0.0.1:0");
  two_vendors(dst, {}, {"--no-propagate"});
  std::string payload = make_payload(5000, 62);
  EXPECT_EQ(app_roundtrip(dst.addr(), payload, kAppUid), payload);
  auto b = read_json_lines(proxy_log("vendor-b"), 1);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(chains(b)[0], (std::vector<uint32_t>{callout_id("vendor-a"), callout_id("vendor-b")}));
  auto st = stats();
  EXPECT_EQ(st["records_set"], 1u);
  EXPECT_EQ(st["implicit"], 1u);
  EXPECT_EQ(dst.peers().size(), 1u);
}

// With implicit records off for both callouts, two record-less proxies
// would pass a flow back and forth for ever; the hops carried over them
// count against the chain cap, so the loop ends after CONNREDIR_MAX_HOPS
// redirects and the flow goes on to its destination (on-failure bypass).
TEST_F(Implicit, OffLetsTheLoopBreakerEndTheLoop) {
  EchoServer dst("127.0.0.1:0");
  two_vendors(dst, {"--no-propagate"}, {"--no-propagate"}, {"--implicit-records", "off"});
  std::string payload = make_payload(3000, 63);
  EXPECT_EQ(app_roundtrip(dst.addr(), payload, kAppUid), payload);
  auto st = stats();
  EXPECT_EQ(st["redirected"], static_cast<uint64_t>(CONNREDIR_MAX_HOPS));
  EXPECT_EQ(st["loop_broken"], 1u);
  EXPECT_EQ(st["implicit"], 0u);
  EXPECT_EQ(dst.peers().size(), 1u);
  EXPECT_EQ(read_json_lines(proxy_log("vendor-a"), CONNREDIR_MAX_HOPS / 2).size(),
            static_cast<size_t>(CONNREDIR_MAX_HOPS / 2));
  // `status` shows it.
  auto status = cli({"status"}).out;
  EXPECT_NE(status.find("loop_broken"), std::string::npos) << status;
  // The same with on-failure refuse: the connect that would re-enter past
  // the budget fails instead of going on.
  cli({"callout", "del", "vendor-a", "--force"});
  cli({"callout", "del", "vendor-b", "--force"});
}

// Offers for one destination whose chains differ (vendor-a selects only one
// app): the onward connects of vendor-b get no records (either choice could
// skip a vendor or drop a hop), start new chains carrying the hops, and are
// counted as ambiguous.
TEST_F(Implicit, DifferentChainsToOneDestinationAttachNothing) {
  EchoServer dst("127.0.0.1:0");
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:" + std::to_string(kPortA),
       "--proxy-uid", std::to_string(kUidA)});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port",
       std::to_string(dst.port()), "--weight", "200", "--app-uid", std::to_string(kAppUid)});
  cli({"callout", "add", "vendor-b", "--proxy", "127.0.0.1:" + std::to_string(kPortB),
       "--proxy-uid", std::to_string(kUidB)});
  cli({"filter", "add", "--callout", "vendor-b", "--dst", "127.0.0.1/32", "--port",
       std::to_string(dst.port()), "--weight", "100"});
  start_proxy("vendor-a", kUidA, "127.0.0.1:" + std::to_string(kPortA), {"--no-propagate"});
  // vendor-b: holds both flows (one through vendor-a, one not) before it
  // connects onward for each, as a proxy reading requests would.
  std::string addr = dst.addr();
  auto b = fork_in(cg("vendor-b"), kUidB, [addr]() -> std::string {
    int l = listen_on("127.0.0.1:" + std::to_string(kPortB));
    if (l < 0) return std::string("listen: ") + strerror(errno);
    std::vector<int> held;
    while (held.size() < 2) {
      int c = accept(l, nullptr, nullptr);
      if (c < 0) return std::string("accept: ") + strerror(errno);
      held.push_back(c);
    }
    std::string r;
    for (int i = 0; i < 2; ++i) {
      int o = connect_to(addr);
      r += o >= 0 ? "connected " : std::string("connect: ") + strerror(errno) + " ";
      if (o >= 0) close(o);
    }
    for (int c : held) close(c);
    close(l);
    return r;
  });
  ASSERT_TRUE(wait_listening(kPortB));
  auto x = fork_in(cg("app"), kAppUid, [addr] { return echo_roundtrip(addr, "x"); });
  ASSERT_TRUE(eventually([&] { return stats()["accepted"] >= 2; }, 10000));
  auto y = fork_in(cg("app"), kOtherAppUid, [addr] { return echo_roundtrip(addr, "y"); });
  EXPECT_EQ(b->wait(20000), "connected connected ");
  x->wait(20000);
  y->wait(20000);
  auto st = stats();
  EXPECT_EQ(st["implicit_ambiguous"], 2u);
  EXPECT_EQ(st["implicit"], 1u);  // vendor-a's onward connect of app x's flow
  // Each ambiguous connect started a new chain with the hops carried: no
  // vendor took it again (vendor-a selects app uid 1000 only, vendor-b is
  // its own principal), so both reached the destination, uninspected again.
  EXPECT_EQ(st["redirected"], 3u);
  EXPECT_EQ(dst.peers().size(), 2u);
}

}  // namespace
}  // namespace connredir::test
