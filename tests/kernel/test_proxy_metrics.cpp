// connredir-proxy --metrics: a real chain, round trips of known sizes and a
// flow whose destination refuses, then a scrape of /metrics with curl that
// must add up exactly and pass Debian's `promtool check metrics`.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "harness.hpp"

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
constexpr int kProxyUid = 4001;
constexpr const char* kCurl = "/usr/bin/curl";
constexpr const char* kPromtool = "/usr/bin/promtool";

// A loopback port nobody listens on (bound once, then closed).
uint16_t closed_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  uint16_t port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0)
    port = ntohs(sa.sin_port);
  close(fd);
  return port;
}

class ProxyMetricsScrape : public KernelTest {
 protected:
  // GET http://127.0.0.1:port/metrics with curl; the body ("" plus a failure).
  std::string scrape(int port) {
    const std::string body = dir_ + "/metrics.txt";
    auto r = run({kCurl, "-sS", "--fail", "--max-time", "5", "-o", body,
                  "http://127.0.0.1:" + std::to_string(port) + "/metrics"});
    EXPECT_EQ(r.status, 0) << r.out;
    return read_file(body);
  }
};

TEST_F(ProxyMetricsScrape, CountsFlowsBytesErrorsAndSetupTimeAndPassesPromtool) {
  ASSERT_EQ(access(kCurl, X_OK), 0) << "install curl (scripts/install-deps.sh)";
  ASSERT_EQ(access(kPromtool, X_OK), 0) << "install prometheus (scripts/install-deps.sh)";
  const int mport = 19464;
  EchoServer dst("127.0.0.1:0");
  const uint16_t refused = closed_port();
  ASSERT_NE(refused, 0);
  add_redirect("vendor-a", "127.0.0.1:15001", kProxyUid, "127.0.0.1/32", dst.port());
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port",
       std::to_string(refused)});
  start_proxy("vendor-a", kProxyUid, "127.0.0.1:15001",
              {"--metrics", "127.0.0.1:" + std::to_string(mport)});
  ASSERT_TRUE(wait_listening(mport)) << read_file(dir_ + "/vendor-a.out");

  // Before any flow: everything at zero, and already valid.
  auto m0 = metric_samples(scrape(mport));
  EXPECT_EQ(m0["connredir_proxy_flows_total"], 0);
  EXPECT_EQ(m0["connredir_proxy_flow_setup_seconds_count"], 0);

  // Small, odd, and past the relay's 64 KiB small-flow phase.
  const std::vector<size_t> sizes = {1, 1000, 70000, 3, 300000};
  uint64_t sent = 0;
  const std::string addr = dst.addr();
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string payload = make_payload(sizes[i], static_cast<uint32_t>(i + 1));
    const std::string got =
        run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, payload); });
    EXPECT_EQ(got.size(), payload.size()) << got.substr(0, 200);
    EXPECT_TRUE(got == payload);
    sent += sizes[i];
  }
  // Redirected to the proxy, whose onward connect is refused.
  const std::string bad = "127.0.0.1:" + std::to_string(refused);
  const std::string err = run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(bad, "x"); });
  // The proxy resets the application's connection: a read error, or EOF
  // when the writer thread's write consumed the reset first. Never the echo.
  EXPECT_NE(err, "x");

  const size_t n = sizes.size();
  auto lines = read_json_lines(proxy_log("vendor-a"), n + 1);
  ASSERT_EQ(lines.size(), n + 1);
  EXPECT_NE(lines.back().value("result", "").find("Connection refused"), std::string::npos)
      << lines.back().dump();

  std::string text;
  std::map<std::string, double> m;
  // The log line is written just before the flow leaves the active gauge
  // (same loop iteration, but the scrape runs in another thread): poll.
  ASSERT_TRUE(eventually(
      [&] {
        text = scrape(mport);
        m = metric_samples(text);
        return m["connredir_proxy_flows_total"] == static_cast<double>(n + 1) &&
               m["connredir_proxy_flows_active"] == 0;
      },
      5000))
      << text;
  EXPECT_EQ(m["connredir_proxy_flows_active"], 0) << text;
  EXPECT_EQ(m["connredir_proxy_relayed_bytes_total{direction=\"client_to_server\"}"],
            static_cast<double>(sent))
      << text;
  EXPECT_EQ(m["connredir_proxy_relayed_bytes_total{direction=\"server_to_client\"}"],
            static_cast<double>(sent))
      << text;
  // Only the refused flow failed, under its kind.
  for (const auto& [k, v] : m) {
    if (k.rfind("connredir_proxy_flow_errors_total{", 0) != 0) continue;
    EXPECT_EQ(v, k == "connredir_proxy_flow_errors_total{kind=\"connect_refused\"}" ? 1 : 0)
        << k << "\n"
        << text;
  }
  EXPECT_EQ(m.count("connredir_proxy_flow_errors_total{kind=\"connect_refused\"}"), 1u) << text;
  // The refused flow never got an onward connection: not in the histogram.
  EXPECT_EQ(m["connredir_proxy_flow_setup_seconds_count"], static_cast<double>(n)) << text;
  EXPECT_EQ(m["connredir_proxy_flow_setup_seconds_bucket{le=\"+Inf\"}"], static_cast<double>(n));
  EXPECT_GT(m["connredir_proxy_flow_setup_seconds_sum"], 0) << text;
  EXPECT_LT(m["connredir_proxy_flow_setup_seconds_sum"], 5.0 * static_cast<double>(n)) << text;
  EXPECT_EQ(m.count("connredir_proxy_info{name=\"vendor-a\",version=\"" CONNREDIR_VERSION "\"}"),
            1u)
      << text;
  EXPECT_EQ(m["connredir_proxy_listen_info{address=\"127.0.0.1:15001\"}"], 1) << text;

  // Debian's promtool: any complaint fails the test.
  auto check = promtool_check(text, dir_ + "/metrics-check.txt");
  EXPECT_EQ(check.status, 0) << check.out << "\n" << text;
  EXPECT_EQ(check.out, "") << text;
}

// What --metrics refuses, from the real binary: a non-loopback address
// without --metrics-allow-remote, and a port another process holds.
TEST_F(ProxyMetricsScrape, RefusesNonLoopbackAndABusyPort) {
  auto remote = run(
      {CONNREDIR_PROXY_PATH, "--listen", "127.0.0.1:15091", "--metrics", "0.0.0.0:19465"}, 10000);
  EXPECT_EQ(remote.status, 1) << remote.out;
  EXPECT_NE(remote.out.find("not a loopback address"), std::string::npos) << remote.out;
  EXPECT_NE(remote.out.find("--metrics-allow-remote"), std::string::npos) << remote.out;

  const int busy = listen_on("127.0.0.1:19466");
  ASSERT_GE(busy, 0);
  auto taken = run(
      {CONNREDIR_PROXY_PATH, "--listen", "127.0.0.1:15091", "--metrics", "127.0.0.1:19466"}, 10000);
  close(busy);
  EXPECT_EQ(taken.status, 1) << taken.out;
  EXPECT_NE(taken.out.find("already listens on this port"), std::string::npos) << taken.out;
}

}  // namespace
}  // namespace connredir::test
