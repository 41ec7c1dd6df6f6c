// Per-callout counters (map callout_stats): each decision of the classifier
// and each refused records blob is counted against the callout it concerns,
// with exact numbers, the same in `callout list --json`, `status --json` and
// `metrics`, and per-callout sums equal to the host-wide counters.
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "harness.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;

using Counters = std::map<std::string, uint64_t>;

class CalloutStats : public KernelTest {
 protected:
  // Callout `name`'s counters from `callout list --json` (every counter
  // present, so a missing one fails here rather than reading as 0).
  Counters counters(const std::string& name) {
    Counters out;
    for (auto& c : cli_json({"callout", "list"})) {
      if (c.value("name", "") != name) continue;
      EXPECT_TRUE(c.contains("counters")) << c.dump();
      if (!c.contains("counters")) return out;
      for (auto& [k, v] : c["counters"].items()) out[k] = v.get<uint64_t>();
      EXPECT_EQ(out.size(), static_cast<size_t>(CONNREDIR_CSTAT_MAX)) << c.dump();
      return out;
    }
    ADD_FAILURE() << "no callout " << name;
    return out;
  }

  // Expects exactly `want` for the named counters and 0 for every other one.
  void expect_counters(const std::string& name, const Counters& want) {
    auto got = counters(name);
    for (const auto& [k, v] : got) {
      auto it = want.find(k);
      EXPECT_EQ(v, it == want.end() ? 0u : it->second) << name << " " << k;
    }
    for (const auto& [k, _] : want) EXPECT_TRUE(got.count(k)) << name << " has no " << k;
  }

  // Each host-wide counter the per-callout ones refine equals their sum
  // over the callouts (records_rejected only when every sender was a
  // callout's principal).
  void expect_sums_match_host(bool with_records) {
    auto st = cli_json({"status"});
    ASSERT_TRUE(st.contains("callout_stats")) << st.dump();
    Counters sum;
    for (auto& [_, c] : st["callout_stats"].items())
      for (auto& [k, v] : c.items()) sum[k] += v.get<uint64_t>();
    for (const char* k :
         {"redirected", "self_skip", "prev_skip", "hop_cap", "no_proxy_family", "storage_fail",
          "down_bypass", "not_owner", "down_refused", "failure_refused"})
      EXPECT_EQ(sum[k], st["stats"].value(k, 0ull)) << k << " " << st.dump();
    if (with_records) {
      EXPECT_EQ(sum["records_rejected"], st["stats"].value("records_rejected", 0ull));
    }
  }

  // "name{labels}" -> value of an exposition.
  std::map<std::string, uint64_t> metrics() {
    auto text = cli({"metrics", "--once"}).out;
    auto r = promtool_check(text, dir_ + "/metrics.txt");
    EXPECT_EQ(r.status, 0) << "promtool (Debian's prometheus package): " << r.out;
    EXPECT_EQ(r.out, "") << "promtool lint";
    std::map<std::string, uint64_t> out;
    for (const auto& [k, v] : metric_samples(text)) out[k] = static_cast<uint64_t>(v);
    return out;
  }
};

// Two vendors on one destination, N round trips: vendor-a redirects the app's
// connect, skips its own proxy's onward connect (self) and vendor-b's
// (previously redirected); vendor-b redirects vendor-a's and skips its own.
TEST_F(CalloutStats, ChainCountsEachDecisionAgainstItsVendor) {
  constexpr int kTrips = 5;
  EchoServer dst("127.0.0.1:0");
  add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", dst.port(), 200);
  add_vendor("vendor-b", 15002, 4002, "127.0.0.1/32", dst.port(), 100);
  start_proxy("vendor-a", 4001, "127.0.0.1:15001");
  start_proxy("vendor-b", 4002, "127.0.0.1:15002");
  expect_counters("vendor-a", {});
  std::string payload = make_payload(3000, 31), addr = dst.addr();
  for (int i = 0; i < kTrips; i++) ASSERT_EQ(app_roundtrip(addr, payload, kAppUid), payload) << i;
  EXPECT_EQ(dst.peers().size(), static_cast<size_t>(kTrips));
  expect_counters("vendor-a",
                  {{"redirected", kTrips}, {"self_skip", kTrips}, {"prev_skip", kTrips}});
  expect_counters("vendor-b", {{"redirected", kTrips}, {"self_skip", kTrips}});
  expect_sums_match_host(true);

  // The same numbers in `status` (JSON and text) and `metrics`.
  auto st = cli_json({"status"});
  EXPECT_EQ(st["callout_stats"]["vendor-b"].value("redirected", 0ull), 5u) << st.dump();
  auto text = cli({"status"}).out;
  EXPECT_NE(text.find("vendor-a"), std::string::npos) << text;
  EXPECT_NE(text.find("redirected=5 self_skip=5 prev_skip=5"), std::string::npos) << text;
  EXPECT_NE(cli({"callout", "list"}).out.find("redirected=5 self_skip=5 prev_skip=0"),
            std::string::npos);
  auto m = metrics();
  EXPECT_EQ(m["connredir_redirected_total{callout=\"vendor-a\"}"], 5u);
  EXPECT_EQ(m["connredir_redirected_total{callout=\"vendor-b\"}"], 5u);
  EXPECT_EQ(m["connredir_skipped_total{callout=\"vendor-a\",reason=\"self_skip\"}"], 5u);
  EXPECT_EQ(m["connredir_skipped_total{callout=\"vendor-a\",reason=\"prev_skip\"}"], 5u);
  EXPECT_EQ(m["connredir_skipped_total{callout=\"vendor-b\",reason=\"prev_skip\"}"], 0u);
  EXPECT_EQ(m.count("connredir_skipped_total{callout=\"vendor-b\",reason=\"down_bypass\"}"), 1u);
  EXPECT_EQ(m.count("connredir_refused_total{callout=\"vendor-b\",reason=\"down_refused\"}"), 1u);
  EXPECT_EQ(m["connredir_records_rejected_total{callout=\"vendor-a\"}"], 0u);

  // A deleted callout's id, reused, starts from zero.
  uint32_t id = callout_id("vendor-a");
  cli({"callout", "del", "vendor-a", "--force"});
  cli({"callout", "add", "vendor-c", "--proxy", "127.0.0.1:15003"});
  EXPECT_EQ(callout_id("vendor-c"), id);
  expect_counters("vendor-c", {});
}

// Proxy down (bypass, then refuse), an unowned listener at the proxy
// address, and a family without a proxy under --on-failure refuse.
TEST_F(CalloutStats, ProxyDownNotOwnerAndFailurePolicies) {
  EchoServer dst("127.0.0.1:0");
  std::string addr = dst.addr();
  // Neither proxy runs: vendor-a (first by weight) is bypassed, vendor-b
  // refuses the connect.
  add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", dst.port(), 200,
             {"--on-proxy-down", "bypass"});
  add_vendor("vendor-b", 15002, 4002, "127.0.0.1/32", dst.port(), 100);
  EXPECT_EQ(app_roundtrip(addr, "x", kAppUid), "ERR:connect Connection refused");
  EXPECT_EQ(app_roundtrip(addr, "x", kAppUid), "ERR:connect Connection refused");
  expect_counters("vendor-a", {{"down_bypass", 2}});
  expect_counters("vendor-b", {{"down_refused", 2}});

  // A listener bound outside the attached cgroups (this process) at
  // vendor-b's address: not its principal's, so still refused, and counted
  // as not_owner too.
  int l = listen_on("127.0.0.1:15002");
  ASSERT_GE(l, 0) << strerror(errno);
  EXPECT_EQ(app_roundtrip(addr, "x", kAppUid), "ERR:connect Connection refused");
  close(l);
  expect_counters("vendor-a", {{"down_bypass", 3}});
  expect_counters("vendor-b", {{"down_refused", 3}, {"not_owner", 1}});

  // IPv6 destination, vendor-c has no IPv6 proxy and --on-failure refuse.
  EchoServer dst6("[::1]:0");
  add_vendor("vendor-c", 15003, 4003, "::1/128", dst6.port(), 100, {"--on-failure", "refuse"});
  std::string addr6 = dst6.addr();
  EXPECT_EQ(app_roundtrip(addr6, "x", kAppUid), "ERR:connect Connection refused");
  expect_counters("vendor-c", {{"no_proxy_family", 1}, {"failure_refused", 1}});
  expect_counters("vendor-a", {{"down_bypass", 3}});
  expect_sums_match_host(true);

  auto m = metrics();
  EXPECT_EQ(m["connredir_skipped_total{callout=\"vendor-a\",reason=\"down_bypass\"}"], 3u);
  EXPECT_EQ(m["connredir_refused_total{callout=\"vendor-b\",reason=\"down_refused\"}"], 3u);
  EXPECT_EQ(m["connredir_not_owner_total{callout=\"vendor-b\"}"], 1u);
  EXPECT_EQ(m["connredir_skipped_total{callout=\"vendor-c\",reason=\"no_proxy_family\"}"], 1u);
  EXPECT_EQ(m["connredir_refused_total{callout=\"vendor-c\",reason=\"failure_refused\"}"], 1u);
  EXPECT_EQ(m["connredir_redirected_total{callout=\"vendor-a\"}"], 0u);
}

// A forged blob from a callout's proxy principal counts against that callout
// only; one from root (no callout in particular) only host-wide.
TEST_F(CalloutStats, RejectedRecordsBlameTheSendersCallout) {
  add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", 80, 100);
  add_vendor("vendor-b", 15002, 4002, "127.0.0.1/32", 81, 100);
  auto forge = [] {
    std::vector<uint8_t> blob(sizeof(connredir_records), 0xab);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int rc = setsockopt(s, SOL_CONNREDIR, CONNREDIR_RECORDS, blob.data(), blob.size());
    std::string r = rc == 0 ? "OK" : strerrorname_np(errno);
    close(s);
    return r;
  };
  EXPECT_EQ(run_in(cg("vendor-a"), 4001, forge), "EINVAL");
  EXPECT_EQ(run_in(cg("vendor-a"), 4001, forge), "EINVAL");
  EXPECT_EQ(run_in(cg("app"), 0, forge), "EINVAL");
  expect_counters("vendor-a", {{"records_rejected", 2}});
  expect_counters("vendor-b", {});
  EXPECT_EQ(stats()["records_rejected"], 3u);
  auto m = metrics();
  EXPECT_EQ(m["connredir_records_rejected_total{callout=\"vendor-a\"}"], 2u);
  EXPECT_EQ(m["connredir_records_rejected_total{callout=\"vendor-b\"}"], 0u);
}

}  // namespace
}  // namespace connredir::test
