// `connredir metrics`: the exposition agrees with `status`, passes Debian's
// `promtool check metrics`, and a real Prometheus server (Debian's
// `prometheus`, on loopback in the test's namespace) scrapes it.
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "harness.hpp"

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;

class Metrics : public KernelTest {
 protected:
  // One vendor's chain and `n` echo round trips through it.
  void traffic(EchoServer& dst, int n, const std::vector<std::string>& proxy_args = {}) {
    cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--proxy-uid", "4001"});
    cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port",
         std::to_string(dst.port())});
    start_proxy("vendor-a", 4001, "127.0.0.1:15001", proxy_args);
    std::string addr = dst.addr(), payload = make_payload(1000, 3);
    std::string bad = run_in(cg("app"), kAppUid, [&] {
      int b = 0;
      for (int i = 0; i < n; i++) b += echo_roundtrip(addr, payload) != payload;
      return std::to_string(b);
    });
    EXPECT_EQ(bad, "0");
  }

  // promtool's verdict on a text; "" when it has nothing to say.
  std::string promtool(const std::string& text) {
    auto r = promtool_check(text, dir_ + "/metrics.txt");
    EXPECT_EQ(r.status, 0) << "promtool (Debian's prometheus package; scripts/install-deps.sh): "
                           << r.out;
    return r.out;
  }
};

TEST_F(Metrics, AgreeWithStatusAndPassPromtool) {
  EchoServer dst("127.0.0.1:0");
  traffic(dst, 20);
  auto text = cli({"metrics", "--once"}).out;
  EXPECT_EQ(promtool(text), "");
  auto m = metric_samples(text);
  auto st = stats();
  EXPECT_EQ(m["connredir_up"], 1u);
  EXPECT_EQ(st["redirected"], 20u);
  for (const auto& [name, value] : st)
    EXPECT_EQ(m[fmt::format("connredir_host_{}_total", name)], value) << name;
  EXPECT_EQ(m["connredir_callouts"], 1u);
  EXPECT_EQ(m["connredir_filters"], 1u);
  EXPECT_EQ(m["connredir_callout_filters{callout=\"vendor-a\"}"], 1u);
  EXPECT_EQ(m["connredir_handoff_entries"], 0u) << "every hand-off was taken over";
  EXPECT_GT(m["connredir_handoff_capacity"], 0u);
  // Down: the exporter says so rather than failing.
  auto down = metric_samples(
      run({CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_ + "-none", "metrics", "--once"}).out);
  EXPECT_EQ(down.count("connredir_up"), 1u);
  EXPECT_EQ(down["connredir_up"], 0u);
}

TEST_F(Metrics, RefusesANonLoopbackListenerUnlessAllowed) {
  auto r = cli({"metrics", "--listen", "0.0.0.0:19475"}, 2);
  EXPECT_NE(r.out.find("--allow-remote"), std::string::npos) << r.out;
}

// A real Prometheus scrapes the exporter every 200 ms; its query API must
// return the redirect count the kernel has.
TEST_F(Metrics, PrometheusScrapesIt) {
  EchoServer dst("127.0.0.1:0");
  traffic(dst, 7, {"--metrics", "127.0.0.1:19471"});
  procs_.push_back(spawn_in(
      cg("exporter"), -1,
      {CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_, "metrics", "--listen", "127.0.0.1:19475"},
      dir_ + "/exporter.out"));
  ASSERT_TRUE(wait_listening(19475)) << read_file(dir_ + "/exporter.out");
  std::string config = dir_ + "/prometheus.yml";
  std::ofstream(config) << "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n"
                           "scrape_configs:\n  - job_name: connredir\n    static_configs:\n"
                           "      - targets: ['127.0.0.1:19475']\n"
                           "  - job_name: connredir-proxy\n    static_configs:\n"
                           "      - targets: ['127.0.0.1:19471']\n";
  procs_.push_back(spawn_in(
      cg("prometheus"), -1,
      {"/usr/bin/prometheus", "--config.file=" + config, "--storage.tsdb.path=" + dir_ + "/tsdb",
       "--web.listen-address=127.0.0.1:19090", "--log.level=warn"},
      dir_ + "/prometheus.out"));
  ASSERT_TRUE(wait_listening(19090, 20000)) << read_file(dir_ + "/prometheus.out");
  // The value Prometheus has for a query, once it has scraped it.
  auto query = [&](const std::string& q) {
    nlohmann::json result;
    bool scraped = eventually(
        [&] {
          auto r = run({"/usr/bin/curl", "-sS", "--max-time", "2",
                        "http://127.0.0.1:19090/api/v1/query?query=" + q});
          auto j = nlohmann::json::parse(r.out, nullptr, false);
          if (j.is_discarded() || j.value("status", "") != "success") return false;
          result = j["data"]["result"];
          return result.is_array() && !result.empty();
        },
        30000, 200);
    EXPECT_TRUE(scraped) << q << "\n" << read_file(dir_ + "/prometheus.out");
    return result;
  };
  auto result = query("connredir_host_redirected_total");
  ASSERT_FALSE(result.empty());
  EXPECT_EQ(result[0]["metric"].value("job", ""), "connredir") << result.dump();
  EXPECT_EQ(result[0]["value"][1].get<std::string>(), "7") << result.dump();
  // The proxy's own metrics, scraped by the same server.
  auto proxy = query("connredir_proxy_flows_total");
  ASSERT_FALSE(proxy.empty());
  EXPECT_EQ(proxy[0]["metric"].value("job", ""), "connredir-proxy") << proxy.dump();
  EXPECT_EQ(proxy[0]["value"][1].get<std::string>(), "7") << proxy.dump();
  auto up = run(
      {"/usr/bin/curl", "-sS", "--max-time", "2", "http://127.0.0.1:19090/api/v1/query?query=up"});
  EXPECT_NE(up.out.find("\"value\":["), std::string::npos) << up.out;
  EXPECT_EQ(up.out.find(",\"0\"]"), std::string::npos) << "every target is up: " << up.out;
  EXPECT_NE(up.out.find(",\"1\"]"), std::string::npos) << up.out;
}

}  // namespace
}  // namespace connredir::test
