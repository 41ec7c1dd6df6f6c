// Off-the-shelf proxies as connredir vendors (issue 16): Debian's unmodified
// mitmproxy (mitmdump --mode transparent) and squid (an `intercept` port)
// find the original destination with SO_ORIGINAL_DST, which connredir's
// getsockopt hook emulates, and never set records. Each alone relays a real
// curl download byte-exact. Together with the reference proxy they must form
// one chain (implicit records: a proxy's record-less onward connect to the
// destination of a flow it accepted continues that flow's chain), each
// vendor visited once; with implicit records off the loop breaker must
// bound the ping-pong between the two. A loop of proxies spins fast, so every
// download here runs under a watchdog that kills the proxies once the
// redirect count passes what a correct chain can produce: a missing fix
// fails in seconds, never hangs.
#include <arpa/inet.h>
#include <glob.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <iostream>
#include <map>
#include <thread>

#include "harness.hpp"

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
// Each proxy is its own vendor principal (uid) in its own cgroup.
constexpr int kMitmUid = 4201;
constexpr int kSquidUid = 4202;
constexpr int kRefUid = 4203;
// Ports no other kernel test uses (16201-16204).
constexpr int kMitmPort = 16201;
constexpr int kSquidPort = 16202;  // squid's intercept port: the callout's proxy
constexpr int kRefPort = 16203;
constexpr int kSquidForwardPort = 16204;  // squid 5 refuses to start without one
constexpr const char* kMitmdump = "/usr/bin/mitmdump";
constexpr const char* kSquid = "/usr/sbin/squid";
constexpr const char* kCurl = "/usr/bin/curl";

size_t count_lines(const std::string& text, const std::string& needle) {
  std::istringstream in(text);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line))
    if (line.find(needle) != std::string::npos) n++;
  return n;
}

bool write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  return static_cast<bool>(out);
}

// The destination: a minimal HTTP/1.1 server on 127.0.0.1 (outside the
// policed cgroup) serving GET /blob, one response per connection
// ("Connection: close"), counting the connections it accepted.
class HttpServer {
 public:
  explicit HttpServer(std::string body) : body_(std::move(body)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(fd_, 1024) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &sl) != 0) {
      ADD_FAILURE() << "http server: " << strerror(errno);
      return;
    }
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~HttpServer() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
  }
  int port() const { return port_; }
  std::string addr() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string url() const { return "http://" + addr() + "/blob"; }
  size_t connections() const { return connections_; }
  const std::string& body() const { return body_; }

 private:
  void loop() {
    std::vector<std::thread> workers;
    while (!stop_) {
      pollfd pfd{fd_, POLLIN, 0};
      if (poll(&pfd, 1, 100) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      connections_++;
      workers.emplace_back([this, c] { serve(c); });
    }
    for (auto& w : workers) w.join();
  }
  void serve(int c) {
    timeval tv{15, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
      ssize_t n = recv(c, buf, sizeof buf, 0);
      if (n <= 0) {
        ::close(c);
        return;
      }
      req.append(buf, static_cast<size_t>(n));
    }
    const bool ok = req.rfind("GET /blob ", 0) == 0;
    std::string out =
        ok ? "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
             "Content-Length: " +
                 std::to_string(body_.size()) + "\r\nConnection: close\r\n\r\n"
           : "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    if (ok) out += body_;
    size_t off = 0;
    while (off < out.size() && !stop_) {
      ssize_t n =
          send(c, out.data() + off, std::min<size_t>(65536, out.size() - off), MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::shutdown(c, SHUT_WR);
    timeval drain{2, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &drain, sizeof drain);
    while (recv(c, buf, sizeof buf, 0) > 0) {
    }
    ::close(c);
  }

  std::string body_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> connections_{0};
  std::thread thread_;
};

struct Download {
  std::string url, file;
};

class OffShelf : public KernelTest {
 protected:
  // Fails (never skips) when a program is missing.
  void require_programs() {
    for (const char* p : {kMitmdump, kSquid, kCurl})
      ASSERT_EQ(access(p, X_OK), 0)
          << p << " is missing: run scripts/install-deps.sh (it installs mitmproxy, squid, curl)";
  }

  // Callout `name` (proxy 127.0.0.1:port, principal uid, plus `extra`
  // options) and a filter at `weight` for each destination port.
  void vendor(const std::string& name, int port, int uid, int weight,
              const std::vector<int>& dst_ports, const std::vector<std::string>& extra = {}) {
    ASSERT_FALSE(dst_ports.empty());
    add_vendor(name, port, uid, "127.0.0.1/32", static_cast<uint16_t>(dst_ports[0]), weight, extra);
    for (size_t k = 1; k < dst_ports.size(); ++k)
      cli({"filter", "add", "--callout", name, "--dst", "127.0.0.1/32", "--port",
           std::to_string(dst_ports[k]), "--weight", std::to_string(weight)});
  }

  std::string mitm_out() const { return dir_ + "/mitmproxy.out"; }
  std::string squid_dir() const { return dir_ + "/squid"; }
  std::string squid_access() const { return squid_dir() + "/access.log"; }

  // mitmdump in transparent mode as its own principal; its confdir (the CA
  // it generates on first start) in the test's directory. Flows are streamed
  // (stream_large_bodies), not buffered whole, like a production setup.
  void start_mitmproxy(const std::string& strategy = "eager") {
    const std::string conf = dir_ + "/mitmproxy-conf";
    ASSERT_EQ(mkdir(conf.c_str(), 0700), 0) << strerror(errno);
    ASSERT_EQ(chown(conf.c_str(), kMitmUid, kMitmUid), 0) << strerror(errno);
    procs_.push_back(spawn_in(
        cg("mitmproxy"), kMitmUid,
        {"/usr/bin/env", "PYTHONUNBUFFERED=1", "HOME=" + conf, kMitmdump, "--mode", "transparent",
         "--listen-host", "127.0.0.1", "--listen-port", std::to_string(kMitmPort), "--set",
         "confdir=" + conf, "--set", "connection_strategy=" + strategy, "--set",
         "stream_large_bodies=64k", "--set", "flow_detail=1"},
        mitm_out()));
    proxy_cgroups_.push_back(cg("mitmproxy"));
    ASSERT_TRUE(wait_listening(kMitmPort, 30000)) << "mitmdump not listening; output:\n"
                                                  << read_file(mitm_out());
  }

  // squid with a minimal config: an intercept port (the callout's proxy), the
  // forward port squid 5 insists on, no caching, no Via (a Via loop check
  // would end a proxy loop itself, hiding what connredir does), logs and pid
  // file in the test's directory, run in the foreground as its principal.
  void start_squid() {
    // squid creates shared memory segments /dev/shm/SERVICE-cf__*.shm even
    // without workers and leaves them behind when it ends: a service name of
    // our own (alphanumeric only) keeps them apart from any other squid's
    // (one there would make ours fail: "shm_open ... File exists"), and
    // TearDown removes them.
    static int seq = 0;
    squid_service_ = "croffshelf" + std::to_string(getpid()) + "n" + std::to_string(++seq);
    const std::string d = squid_dir();
    ASSERT_EQ(mkdir(d.c_str(), 0700), 0) << strerror(errno);
    ASSERT_EQ(chown(d.c_str(), kSquidUid, kSquidUid), 0) << strerror(errno);
    const std::string conf = d + "/squid.conf";
    ASSERT_TRUE(write_text(conf, "http_port 127.0.0.1:" + std::to_string(kSquidForwardPort) +
                                     "\n"
                                     "http_port 127.0.0.1:" +
                                     std::to_string(kSquidPort) +
                                     " intercept\n"
                                     "http_access allow all\n"
                                     "cache deny all\n"
                                     "cache_mem 8 MB\n"
                                     "via off\n"
                                     "forwarded_for transparent\n"
                                     "access_log stdio:" +
                                     squid_access() +
                                     "\n"
                                     "cache_log " +
                                     d +
                                     "/cache.log\n"
                                     "cache_store_log none\n"
                                     "logfile_rotate 0\n"
                                     "pid_filename " +
                                     d +
                                     "/squid.pid\n"
                                     "coredump_dir " +
                                     d +
                                     "\n"
                                     "pinger_enable off\n"
                                     "netdb_filename none\n"
                                     "shutdown_lifetime 0 seconds\n"
                                     "visible_hostname connredir-offshelf-squid\n"));
    procs_.push_back(spawn_in(cg("squid"), kSquidUid,
                              {kSquid, "-n", squid_service_, "-N", "-f", conf},
                              dir_ + "/squid.out"));
    proxy_cgroups_.push_back(cg("squid"));
    ASSERT_TRUE(wait_listening(kSquidPort, 20000))
        << "squid not listening; output:\n"
        << read_file(dir_ + "/squid.out") << "cache.log:\n"
        << read_file(d + "/cache.log");
  }

  void start_reference() {
    start_proxy("reference", kRefUid, "127.0.0.1:" + std::to_string(kRefPort));
    proxy_cgroups_.push_back(cg("reference"));
  }

  // A host-wide counter without expectations (the watchdog's thread); -1
  // when status could not be read.
  int64_t stat_now(const std::string& key) {
    auto r = run({CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_, "--json", "status"});
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (j.is_discarded() || !j.contains("stats")) return -1;
    return static_cast<int64_t>(j["stats"].value(key, 0ull));
  }

  std::map<std::string, uint64_t> callout_counters(const std::string& name) {
    std::map<std::string, uint64_t> out;
    for (auto& c : cli_json({"callout", "list"}))
      if (c.value("name", "") == name && c.contains("counters"))
        for (auto& [k, v] : c["counters"].items()) out[k] = v.get<uint64_t>();
    return out;
  }

  // Runs curl in cgroup app as the app's uid: all transfers at once
  // (--parallel), each on its own connection ("Connection: close"), bounded
  // by max_time_s. Meanwhile a watchdog polls the redirect counter and, once
  // it passes `max_redirects` (a loop between proxies), kills every proxy:
  // the downloads then fail at once and the test says why. Returns curl's
  // exit status and its per-transfer "code size url" lines.
  CmdResult curl(const std::vector<Download>& downloads, int max_time_s, uint64_t max_redirects) {
    std::vector<std::string> argv{kCurl,        "-sS",
                                  "--noproxy",  "*",
                                  "--max-time", std::to_string(max_time_s),
                                  "-H",         "Connection: close",
                                  "-w",         "%{http_code} %{size_download} %{url}\\n"};
    if (downloads.size() > 1)
      argv.insert(argv.end(), {"--parallel", "--parallel-immediate", "--parallel-max",
                               std::to_string(downloads.size())});
    for (auto& d : downloads) argv.insert(argv.end(), {"-o", d.file, d.url});
    const int64_t base = stat_now("redirected");
    EXPECT_GE(base, 0) << "connredir status --json has no stats.redirected";
    std::atomic<bool> done{false};
    std::atomic<uint64_t> tripped{0};
    const auto cgroups = proxy_cgroups_;
    std::thread watchdog([&] {
      while (!done) {
        const int64_t now = stat_now("redirected");
        if (now >= 0 && base >= 0 && static_cast<uint64_t>(now - base) > max_redirects) {
          tripped = static_cast<uint64_t>(now - base);
          for (auto& c : cgroups) write_text(c + "/cgroup.kill", "1");
          return;
        }
        usleep(100000);
      }
    });
    auto child = fork_in(cg("app"), kAppUid, [&] {
      auto r = run(argv, (max_time_s + 5) * 1000);
      return std::to_string(r.status) + "\n" + r.out;
    });
    std::string out = child->wait((max_time_s + 10) * 1000);
    done = true;
    watchdog.join();
    looped_ = tripped.load() > 0;
    EXPECT_EQ(tripped.load(), 0u)
        << "the proxies loop: " << tripped.load() << " redirects (a correct chain makes at most "
        << max_redirects << "); the watchdog killed them. mitmproxy's onward connect started a "
        << "new chain instead of continuing the flow's (implicit records / loop breaker, issue "
           "16)";
    CmdResult res;
    auto nl = out.find('\n');
    res.status = nl == std::string::npos ? -1 : std::atoi(out.substr(0, nl).c_str());
    res.out = nl == std::string::npos ? out : out.substr(nl + 1);
    return res;
  }

  std::string what_they_logged() {
    return "\nmitmproxy (tail):\n" + tail(read_file(mitm_out()), 3000) +
           "squid access.log (tail):\n" + tail(read_file(squid_access()), 3000) +
           "squid cache.log (tail):\n" + tail(read_file(squid_dir() + "/cache.log"), 3000) +
           "reference flow log:\n" + tail(read_file(proxy_log("reference")), 3000);
  }
  static std::string tail(const std::string& s, size_t n) {
    return s.size() <= n ? s : "..." + s.substr(s.size() - n);
  }

  // Every download arrived byte-exact from the server its URL names.
  void expect_exact(const std::vector<Download>& downloads,
                    const std::vector<const HttpServer*>& servers) {
    size_t bad = 0;
    for (size_t i = 0; i < downloads.size(); i++) {
      std::string got = read_file(downloads[i].file);
      if (got != servers[i]->body()) {
        if (++bad <= 3)
          ADD_FAILURE() << downloads[i].url << " -> " << downloads[i].file << ": " << got.size()
                        << " bytes, want " << servers[i]->body().size() << " (exact)";
      }
    }
    EXPECT_EQ(bad, 0u) << "of " << downloads.size() << " downloads";
  }

  // mitmproxy, squid and the reference proxy, in that order by weight, for
  // the given destination ports.
  void three_vendors(const std::vector<int>& dst_ports, const std::string& strategy = "eager") {
    ASSERT_NO_FATAL_FAILURE(require_programs());
    // Registered lowest weight first: the order must come from the weights.
    ASSERT_NO_FATAL_FAILURE(vendor("reference", kRefPort, kRefUid, 100, dst_ports));
    ASSERT_NO_FATAL_FAILURE(vendor("squid", kSquidPort, kSquidUid, 200, dst_ports));
    ASSERT_NO_FATAL_FAILURE(vendor("mitmproxy", kMitmPort, kMitmUid, 300, dst_ports));
    ASSERT_NO_FATAL_FAILURE(start_reference());
    ASSERT_NO_FATAL_FAILURE(start_squid());
    ASSERT_NO_FATAL_FAILURE(start_mitmproxy(strategy));
  }

  // The reference proxy's flow log holds `n` ok flows, each with the chain
  // [mitmproxy, squid, reference] and a destination among `dsts`; returns
  // how many went to each destination.
  std::map<std::string, size_t> expect_reference_chains(size_t n) {
    std::map<std::string, size_t> per_dst;
    auto lines = read_json_lines(proxy_log("reference"), n, 10000);
    EXPECT_EQ(lines.size(), n) << what_they_logged();
    const uint32_t m = callout_id("mitmproxy"), s = callout_id("squid"),
                   r = callout_id("reference");
    size_t bad = 0;
    for (auto& l : lines) {
      bool ok = l.value("result", "") == "ok" && l.contains("chain") && l["chain"].size() == 3 &&
                l["chain"][0].value("callout_id", 0u) == m &&
                l["chain"][1].value("callout_id", 0u) == s &&
                l["chain"][2].value("callout_id", 0u) == r && l.value("hop", 0u) == 3u;
      if (!ok && ++bad <= 3)
        ADD_FAILURE() << "want chain [mitmproxy " << m << ", squid " << s << ", reference " << r
                      << "]: " << l.dump();
      per_dst[l.value("orig_dst", "")]++;
    }
    return per_dst;
  }

  void TearDown() override {
    KernelTest::TearDown();  // stops squid first
    if (squid_service_.empty()) return;
    glob_t g{};
    if (glob(("/dev/shm/" + squid_service_ + "-*").c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; i++) unlink(g.gl_pathv[i]);
    globfree(&g);
  }

  // mitmproxy's connection_strategy: eager (8.1's default) connects upstream
  // as soon as it accepts, before any request byte; lazy once the request
  // is in. Both must work alone and in the chain.
  // One download through proxy `name` alone (registered, then started by
  // `start`): byte-exact, one connection at the destination, redirected once
  // and its onward connect skipped by its own callout (the principal rule).
  void download_through_one(const std::string& name, int port, int uid, HttpServer& dst,
                            const std::function<void()>& start) {
    ASSERT_NO_FATAL_FAILURE(vendor(name, port, uid, 100, {dst.port()}));
    ASSERT_NO_FATAL_FAILURE(start());
    std::vector<Download> d{{dst.url(), dir_ + "/got"}};
    auto r = curl(d, 20, 3);
    ASSERT_FALSE(looped_) << "(the rest would only fail after waiting for logs)";
    EXPECT_EQ(r.status, 0) << r.out << what_they_logged();
    expect_exact(d, {&dst});
    EXPECT_EQ(dst.connections(), 1u);
    auto s = stats();
    EXPECT_EQ(s["redirected"], 1u);
    EXPECT_EQ(s["self_skip"], 1u);
    auto c = callout_counters(name);
    EXPECT_EQ(c["redirected"], 1u);
    EXPECT_EQ(c["self_skip"], 1u);
  }

  void mitmproxy_alone(const std::string& strategy) {
    ASSERT_NO_FATAL_FAILURE(require_programs());
    HttpServer dst(make_payload(3 << 20, 1601));
    ASSERT_NO_FATAL_FAILURE(download_through_one("mitmproxy", kMitmPort, kMitmUid, dst,
                                                 [&] { start_mitmproxy(strategy); }));
    // mitmproxy saw the flow (found the destination through SO_ORIGINAL_DST).
    EXPECT_TRUE(eventually(
        [&] {
          return count_lines(read_file(mitm_out()), "GET http://" + dst.addr() + "/blob") == 1;
        },
        5000))
        << read_file(mitm_out());
    // What the strategy means for connredir: a client that connects and
    // sends nothing for 1.5 s gets an upstream connection from an eager
    // mitmproxy (at accept, so before any request byte) and none from a lazy
    // one.
    const std::string addr = dst.addr();
    EXPECT_EQ(run_in(cg("app"), kAppUid,
                     [&]() -> std::string {
                       int fd = connect_to(addr);
                       if (fd < 0) return std::string("connect: ") + strerror(errno);
                       usleep(1500000);
                       close(fd);
                       return "ok";
                     }),
              "ok");
    if (strategy == "eager")
      EXPECT_TRUE(eventually([&] { return dst.connections() == 2; }, 3000))
          << "eager: the idle client's flow must reach the destination; saw " << dst.connections();
    else
      EXPECT_EQ(dst.connections(), 1u) << "lazy: no upstream connection without a request";
    EXPECT_EQ(stats()["redirected"], 2u);
  }

  // One download through mitmproxy, squid and the reference proxy.
  void chain_once(const std::string& strategy) {
    HttpServer dst(make_payload(3 << 20, 1603));
    ASSERT_NO_FATAL_FAILURE(three_vendors({dst.port()}, strategy));
    std::vector<Download> d{{dst.url(), dir_ + "/got"}};
    auto r = curl(d, 20, 6);
    ASSERT_FALSE(looped_) << "(the rest would only fail after waiting for logs)";
    EXPECT_EQ(r.status, 0) << r.out << what_they_logged();
    EXPECT_NE(r.out.find("200 " + std::to_string(dst.body().size())), std::string::npos) << r.out;
    expect_exact(d, {&dst});
    // Each proxy once, the destination one connection, three redirects.
    EXPECT_EQ(dst.connections(), 1u) << what_they_logged();
    auto s = stats();
    EXPECT_EQ(s["redirected"], 3u);
    EXPECT_EQ(s["implicit"], 2u) << "mitmproxy's and squid's onward connects";
    EXPECT_EQ(s["loop_broken"], 0u);
    for (const char* name : {"mitmproxy", "squid", "reference"})
      EXPECT_EQ(callout_counters(name)["redirected"], 1u) << name;
    EXPECT_TRUE(eventually(
        [&] {
          return count_lines(read_file(mitm_out()), "GET http://" + dst.addr() + "/blob") == 1;
        },
        5000))
        << what_they_logged();
    EXPECT_EQ(count_lines(read_file(mitm_out()), "server connect"), 1u) << read_file(mitm_out());
    EXPECT_TRUE(
        eventually([&] { return count_lines(read_file(squid_access()), "/blob") == 1; }, 5000))
        << what_they_logged();
    EXPECT_EQ(count_lines(read_file(squid_access()), "TCP_MISS/200"), 1u);
    auto per_dst = expect_reference_chains(1);
    EXPECT_EQ(per_dst[dst.addr()], 1u);
  }

  std::string squid_service_;
  std::vector<std::string> proxy_cgroups_;
  bool looped_ = false;  // the last curl() met a loop (and killed the proxies)
};

// ---- each alone ----------------------------------------------------------

TEST_F(OffShelf, MitmproxyAloneRelaysADownload) { mitmproxy_alone("eager"); }

TEST_F(OffShelf, MitmproxyLazyAloneRelaysADownload) { mitmproxy_alone("lazy"); }

TEST_F(OffShelf, SquidAloneRelaysADownload) {
  ASSERT_NO_FATAL_FAILURE(require_programs());
  HttpServer dst(make_payload(3 << 20, 1602));
  ASSERT_NO_FATAL_FAILURE(
      download_through_one("squid", kSquidPort, kSquidUid, dst, [&] { start_squid(); }));
  // One access.log line: a miss fetched from the original destination
  // (squid names that hierarchy ORIGINAL_DST: it used SO_ORIGINAL_DST).
  EXPECT_TRUE(
      eventually([&] { return count_lines(read_file(squid_access()), "/blob") == 1; }, 5000))
      << read_file(squid_access());
  EXPECT_EQ(count_lines(read_file(squid_access()), "TCP_MISS/200"), 1u)
      << read_file(squid_access());
  EXPECT_EQ(count_lines(read_file(squid_access()), "ORIGINAL_DST/127.0.0.1"), 1u)
      << read_file(squid_access());
}

// ---- all three: one chain -----------------------------------------------

TEST_F(OffShelf, MitmproxySquidAndReferenceProxyChainOnce) { chain_once("eager"); }

TEST_F(OffShelf, MitmproxyLazySquidAndReferenceProxyChainOnce) { chain_once("lazy"); }

TEST_F(OffShelf, MitmproxySquidAndReferenceProxyChainOnceHundredConcurrent) {
  constexpr size_t kN = 100;
  HttpServer dst(make_payload(512 << 10, 1604));
  ASSERT_NO_FATAL_FAILURE(three_vendors({dst.port()}));
  std::vector<Download> d;
  for (size_t i = 0; i < kN; i++) d.push_back({dst.url(), dir_ + "/got" + std::to_string(i)});
  auto r = curl(d, 30, 3 * kN + 10);
  ASSERT_FALSE(looped_) << "(the rest would only fail after waiting for logs)";
  EXPECT_EQ(r.status, 0) << tail(r.out, 2000) << what_they_logged();
  EXPECT_EQ(count_lines(r.out, "200 " + std::to_string(dst.body().size())), kN)
      << tail(r.out, 2000);
  expect_exact(d, std::vector<const HttpServer*>(kN, &dst));
  EXPECT_EQ(dst.connections(), kN);
  auto s = stats();
  EXPECT_EQ(s["redirected"], 3 * kN);
  EXPECT_EQ(s["implicit"], 2 * kN);
  EXPECT_EQ(s["implicit_ambiguous"], 0u);
  for (const char* name : {"mitmproxy", "squid", "reference"})
    EXPECT_EQ(callout_counters(name)["redirected"], kN) << name;
  EXPECT_TRUE(eventually(
      [&] {
        return count_lines(read_file(mitm_out()), "GET http://" + dst.addr() + "/blob") == kN;
      },
      10000))
      << tail(read_file(mitm_out()), 3000);
  EXPECT_TRUE(
      eventually([&] { return count_lines(read_file(squid_access()), "/blob") == kN; }, 10000))
      << tail(read_file(squid_access()), 3000);
  EXPECT_EQ(count_lines(read_file(squid_access()), "TCP_MISS/200"), kN);
  auto per_dst = expect_reference_chains(kN);
  EXPECT_EQ(per_dst[dst.addr()], kN);
}

// Two destinations at once: each onward connect continues the chain of a
// flow to its own destination, and every download reaches its server.
TEST_F(OffShelf, MitmproxySquidAndReferenceProxyChainOnceTwoDestinations) {
  constexpr size_t kEach = 5;
  HttpServer a(make_payload(1 << 20, 1605)), b(make_payload((1 << 20) + 4321, 1606));
  ASSERT_NO_FATAL_FAILURE(three_vendors({a.port(), b.port()}));
  std::vector<Download> d;
  std::vector<const HttpServer*> want;
  for (size_t i = 0; i < 2 * kEach; i++) {
    const HttpServer* s = i % 2 ? &b : &a;
    d.push_back({s->url(), dir_ + "/got" + std::to_string(i)});
    want.push_back(s);
  }
  auto r = curl(d, 30, 6 * kEach + 10);
  ASSERT_FALSE(looped_) << "(the rest would only fail after waiting for logs)";
  EXPECT_EQ(r.status, 0) << r.out << what_they_logged();
  expect_exact(d, want);
  EXPECT_EQ(a.connections(), kEach);
  EXPECT_EQ(b.connections(), kEach);
  auto s = stats();
  EXPECT_EQ(s["redirected"], 6 * kEach);
  EXPECT_EQ(s["implicit_ambiguous"], 0u);
  EXPECT_TRUE(eventually(
      [&] { return count_lines(read_file(squid_access()), "/blob") == 2 * kEach; }, 10000))
      << what_they_logged();
  auto per_dst = expect_reference_chains(2 * kEach);
  EXPECT_EQ(per_dst[a.addr()], kEach);
  EXPECT_EQ(per_dst[b.addr()], kEach);
}

// ---- implicit records off: the loop breaker ------------------------------

TEST_F(OffShelf, LoopBreakerStopsTwoProxiesWithImplicitRecordsOff) {
  ASSERT_NO_FATAL_FAILURE(require_programs());
  HttpServer dst(make_payload(1 << 20, 1607));
  // Without implicit records mitmproxy's onward connect starts a new chain
  // that squid's callout takes, squid's one that mitmproxy's takes, and so
  // on: only the hops carried across those hand-offs bound it.
  ASSERT_NO_FATAL_FAILURE(
      vendor("squid", kSquidPort, kSquidUid, 200, {dst.port()}, {"--implicit-records", "off"}));
  ASSERT_NO_FATAL_FAILURE(
      vendor("mitmproxy", kMitmPort, kMitmUid, 300, {dst.port()}, {"--implicit-records", "off"}));
  ASSERT_NO_FATAL_FAILURE(start_squid());
  ASSERT_NO_FATAL_FAILURE(start_mitmproxy());
  std::vector<Download> d{{dst.url(), dir_ + "/got"}};
  // CONNREDIR_MAX_HOPS (8) redirects at most, then the default on-failure
  // policy (bypass) sends the last onward connect direct.
  auto r = curl(d, 20, 8);
  ASSERT_FALSE(looped_) << "(the rest would only fail after waiting for logs)";
  auto s = stats();
  EXPECT_GE(s["loop_broken"], 1u) << what_they_logged();
  EXPECT_LE(s["redirected"], 8u);
  EXPECT_GE(s["redirected"], 2u) << "both proxies are in the loop";
  EXPECT_LE(dst.connections(), 1u);
  uint64_t per_callout = 0;
  for (const char* name : {"mitmproxy", "squid"})
    per_callout += callout_counters(name)["loop_broken"];
  EXPECT_EQ(per_callout, s["loop_broken"]);
  // Completed or failed, but if it completed the bytes are exact.
  if (r.status == 0) {
    EXPECT_EQ(dst.connections(), 1u);
    expect_exact(d, {&dst});
  }
  while (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
  std::cerr << "loop breaker: curl exit " << r.status << " (" << r.out << "), redirected "
            << s["redirected"] << ", loop_broken " << s["loop_broken"] << ", destination saw "
            << dst.connections() << " connection(s)\n";
}

}  // namespace
}  // namespace connredir::test
