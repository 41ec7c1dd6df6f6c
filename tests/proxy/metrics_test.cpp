// The proxy's Prometheus exposition (metrics.hpp) and its HTTP server
// (metrics_server.hpp): names, types, HELP/TYPE lines, label escaping, the
// histogram's cumulative buckets and _count/_sum, and what --metrics refuses.
#include "metrics.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "metrics_server.hpp"
#include "unique_fd.hpp"

namespace connredir::proxy {
namespace {

struct Sample {
  std::string name;    // with its _bucket/_sum/_count suffix
  std::string labels;  // raw text between the braces
  std::string value;
};

struct Exposition {
  std::map<std::string, std::string> type;  // family -> type
  std::map<std::string, std::string> help;
  std::vector<Sample> samples;
  std::vector<std::string> problems;

  const Sample* find(const std::string& name, const std::string& labels = "") const {
    for (const auto& s : samples)
      if (s.name == name && s.labels == labels) return &s;
    return nullptr;
  }
};

// A strict reading of the text format as format_metrics writes it: every
// sample belongs to a family whose HELP and TYPE came before it.
Exposition parse(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line;
  if (text.empty() || text.back() != '\n') e.problems.push_back("text does not end in a newline");
  while (std::getline(in, line)) {
    if (line.empty()) {
      e.problems.push_back("empty line");
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      const auto sp = rest.find(' ');
      if (sp == std::string::npos) {
        e.problems.push_back("no text after the name: " + line);
        continue;
      }
      auto& m = line[2] == 'H' ? e.help : e.type;
      if (m.count(rest.substr(0, sp))) e.problems.push_back("repeated: " + line);
      m[rest.substr(0, sp)] = rest.substr(sp + 1);
      continue;
    }
    Sample s;
    const auto brace = line.find('{');
    const auto sp = line.rfind(' ');
    if (sp == std::string::npos) {
      e.problems.push_back("no value: " + line);
      continue;
    }
    if (brace != std::string::npos && brace < sp) {
      const auto close = line.rfind('}');
      s.name = line.substr(0, brace);
      s.labels = line.substr(brace + 1, close - brace - 1);
    } else {
      s.name = line.substr(0, sp);
    }
    s.value = line.substr(sp + 1);
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string suf = suffix;
      if (!e.type.count(family) && family.size() > suf.size() &&
          family.compare(family.size() - suf.size(), suf.size(), suf) == 0 &&
          e.type.count(family.substr(0, family.size() - suf.size())) &&
          e.type[family.substr(0, family.size() - suf.size())] == "histogram") {
        family = family.substr(0, family.size() - suf.size());
      }
    }
    if (!e.type.count(family) || !e.help.count(family))
      e.problems.push_back("sample without HELP/TYPE: " + line);
    e.samples.push_back(s);
  }
  return e;
}

uint64_t u64(const Sample* s) { return s ? std::stoull(s->value) : ~0ull; }

TEST(ProxyMetrics, ExpositionNamesTypesAndValues) {
  ProxyMetrics m;
  for (int i = 0; i < 5; ++i) m.flow_accepted();
  m.set_active(2);
  m.flow_error(ErrorKind::None);  // "ok" is not an error
  m.flow_error(ErrorKind::ConnectRefused);
  m.flow_error(ErrorKind::ConnectRefused);
  m.flow_error(ErrorKind::NotRedirected);
  m.bytes(1000, 0);
  m.bytes(234, 5678);
  const std::string text =
      format_metrics(m, MetricsLabels{"vendor-a", "1.2.3", {"127.0.0.1:15001", "[::1]:15001"}});
  const Exposition e = parse(text);
  EXPECT_TRUE(e.problems.empty()) << ::testing::PrintToString(e.problems) << "\n" << text;

  const std::map<std::string, std::string> want = {
      {"connredir_proxy_info", "gauge"},
      {"connredir_proxy_listen_info", "gauge"},
      {"connredir_proxy_flows_total", "counter"},
      {"connredir_proxy_flows_active", "gauge"},
      {"connredir_proxy_flow_errors_total", "counter"},
      {"connredir_proxy_relayed_bytes_total", "counter"},
      {"connredir_proxy_flow_setup_seconds", "histogram"},
  };
  EXPECT_EQ(e.type, want) << text;
  for (const auto& [name, type] : e.type) {
    EXPECT_EQ(name.rfind("connredir_proxy_", 0), 0u) << name;
    const bool total = name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0;
    EXPECT_EQ(total, type == "counter") << name << " is a " << type;
    EXPECT_FALSE(e.help.at(name).empty()) << name;
  }

  EXPECT_EQ(u64(e.find("connredir_proxy_info", "name=\"vendor-a\",version=\"1.2.3\"")), 1u);
  EXPECT_EQ(u64(e.find("connredir_proxy_listen_info", "address=\"127.0.0.1:15001\"")), 1u);
  EXPECT_EQ(u64(e.find("connredir_proxy_listen_info", "address=\"[::1]:15001\"")), 1u);
  EXPECT_EQ(u64(e.find("connredir_proxy_flows_total")), 5u);
  EXPECT_EQ(u64(e.find("connredir_proxy_flows_active")), 2u);
  EXPECT_EQ(u64(e.find("connredir_proxy_relayed_bytes_total", "direction=\"client_to_server\"")),
            1234u);
  EXPECT_EQ(u64(e.find("connredir_proxy_relayed_bytes_total", "direction=\"server_to_client\"")),
            5678u);
  // Every kind is exported (at 0 too), so rate() works from the first error.
  size_t kinds = 0;
  for (const auto& s : e.samples) {
    if (s.name != "connredir_proxy_flow_errors_total") continue;
    ++kinds;
    EXPECT_EQ(s.labels.rfind("kind=\"", 0), 0u) << s.labels;
  }
  EXPECT_EQ(kinds, kErrorKinds - 1);
  EXPECT_EQ(u64(e.find("connredir_proxy_flow_errors_total", "kind=\"connect_refused\"")), 2u);
  EXPECT_EQ(u64(e.find("connredir_proxy_flow_errors_total", "kind=\"not_redirected\"")), 1u);
  EXPECT_EQ(u64(e.find("connredir_proxy_flow_errors_total", "kind=\"shutdown\"")), 0u);
}

TEST(ProxyMetrics, KindNamesAreDistinctLabelValues) {
  std::map<std::string, int> seen;
  EXPECT_EQ(kind_name(ErrorKind::None), "");
  for (size_t k = 1; k < kErrorKinds; ++k) {
    const std::string n(kind_name(static_cast<ErrorKind>(k)));
    EXPECT_FALSE(n.empty()) << k;
    EXPECT_EQ(n.find_first_not_of("abcdefghijklmnopqrstuvwxyz_"), std::string::npos) << n;
    EXPECT_EQ(seen[n]++, 0) << n << " used twice";
  }
}

TEST(ProxyMetrics, HistogramBucketsAreCumulativeWithCountAndSum) {
  ProxyMetrics m;
  // On a bound (le is inclusive), just above it, below the first and above
  // the last bound.
  const std::vector<uint64_t> obs = {1'000,         50'000,     50'001,        999'999,
                                     1'000'000,     1'000'001,  4'999'999'999, 5'000'000'000,
                                     7'000'000'000, 123'456'789};
  uint64_t sum = 0;
  for (uint64_t ns : obs) {
    m.observe_setup(ns);
    sum += ns;
  }
  const std::string text = format_metrics(m, MetricsLabels{"p", "v", {}});
  const Exposition e = parse(text);
  ASSERT_TRUE(e.problems.empty()) << ::testing::PrintToString(e.problems);

  std::vector<std::pair<std::string, uint64_t>> buckets;
  for (const auto& s : e.samples)
    if (s.name == "connredir_proxy_flow_setup_seconds_bucket")
      buckets.emplace_back(s.labels, std::stoull(s.value));
  ASSERT_EQ(buckets.size(), kSetupBucketsNs.size() + 1);
  EXPECT_EQ(buckets.front().first, "le=\"0.00005\"");
  EXPECT_EQ(buckets.back().first, "le=\"+Inf\"");
  double prev_le = 0;
  uint64_t prev = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const auto& [labels, v] = buckets[i];
    ASSERT_EQ(labels.rfind("le=\"", 0), 0u);
    const std::string le = labels.substr(4, labels.size() - 5);
    if (i + 1 < buckets.size()) {
      const double b = std::stod(le);
      EXPECT_GT(b, prev_le) << le;
      EXPECT_DOUBLE_EQ(b, static_cast<double>(kSetupBucketsNs[i]) / 1e9) << le;
      prev_le = b;
      // Cumulative: everything at or below the bound.
      uint64_t want = 0;
      for (uint64_t ns : obs) want += ns <= kSetupBucketsNs[i] ? 1 : 0;
      EXPECT_EQ(v, want) << le;
    }
    EXPECT_GE(v, prev) << le;
    prev = v;
  }
  EXPECT_EQ(buckets.back().second, obs.size());
  EXPECT_EQ(u64(e.find("connredir_proxy_flow_setup_seconds_count")), obs.size());
  const Sample* s = e.find("connredir_proxy_flow_setup_seconds_sum");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->value, "17.126557789");  // exact: sum of obs in ns, in seconds
  EXPECT_EQ(sum, 17'126'557'789u);
}

TEST(ProxyMetrics, LabelValuesAreEscaped) {
  ProxyMetrics m;
  const std::string text = format_metrics(m, MetricsLabels{"a\"b\\c\nd", "1", {"127.0.0.1:1"}});
  EXPECT_NE(text.find("connredir_proxy_info{name=\"a\\\"b\\\\c\\nd\",version=\"1\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_TRUE(parse(text).problems.empty());
}

TEST(ProxyMetrics, LoopbackAddresses) {
  EXPECT_TRUE(is_loopback_ip("127.0.0.1"));
  EXPECT_TRUE(is_loopback_ip("127.1.2.3"));
  EXPECT_TRUE(is_loopback_ip("::1"));
  EXPECT_TRUE(is_loopback_ip("::ffff:127.0.0.1"));
  EXPECT_FALSE(is_loopback_ip("0.0.0.0"));
  EXPECT_FALSE(is_loopback_ip("::"));
  EXPECT_FALSE(is_loopback_ip("10.0.0.1"));
  EXPECT_FALSE(is_loopback_ip("::ffff:10.0.0.1"));
  EXPECT_FALSE(is_loopback_ip("localhost"));
  EXPECT_FALSE(is_loopback_ip(""));
}

// GET `path` from 127.0.0.1:port over a plain socket; the whole response.
std::string http_get(uint16_t port, const std::string& path) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return "ERR socket";
  timeval tv{5, 0};
  if (setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) return "ERR timeout";
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(port);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) return "ERR connect";
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  if (send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size()))
    return "ERR send";
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0) return "ERR recv";
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

TEST(MetricsServer, ServesMetricsAndRefusesWhatItShould) {
  ProxyMetrics m;
  m.flow_accepted();
  MetricsServer srv;
  const auto err = srv.start("127.0.0.1", 0, false, [&] {
    return format_metrics(m, MetricsLabels{"t", "v", {}});
  });
  ASSERT_EQ(err, "");
  ASSERT_NE(srv.port(), 0);
  const std::string r = http_get(srv.port(), "/metrics");
  EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
  EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << r;
  EXPECT_NE(r.find("\r\n\r\n# HELP connredir_proxy_info "), std::string::npos) << r;
  EXPECT_NE(r.find("\nconnredir_proxy_flows_total 1\n"), std::string::npos) << r;
  m.flow_accepted();  // read at scrape time, not at start
  EXPECT_NE(http_get(srv.port(), "/metrics").find("\nconnredir_proxy_flows_total 2\n"),
            std::string::npos);
  EXPECT_EQ(http_get(srv.port(), "/other").rfind("HTTP/1.1 404", 0), 0u);

  // The port is taken: the message says so and what to do.
  MetricsServer second;
  const auto busy = second.start("127.0.0.1", srv.port(), false, [] { return std::string(); });
  EXPECT_NE(busy.find("already listens on this port"), std::string::npos) << busy;
  EXPECT_NE(busy.find("another port"), std::string::npos) << busy;

  // Not loopback: refused before binding, naming the flag that allows it.
  MetricsServer remote;
  const auto refused = remote.start("0.0.0.0", 0, false, [] { return std::string(); });
  EXPECT_NE(refused.find("not a loopback address"), std::string::npos) << refused;
  EXPECT_NE(refused.find("--metrics-allow-remote"), std::string::npos) << refused;

  srv.stop();
  srv.stop();  // idempotent
  EXPECT_EQ(http_get(srv.port(), "/metrics"), "ERR connect");
}

}  // namespace
}  // namespace connredir::proxy
