// `connredir trace`: one event per classified connect explains every
// candidate's verdict and the final destination; the kernel emits nothing
// once the tracer is gone, even when it was killed.
#include <bpf/bpf.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

#include "harness.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;

class Trace : public KernelTest {
 protected:
  // Starts `connredir trace --json ARGS` (the text form with json = false)
  // and waits until its lease is set.
  Process& start_trace(const std::vector<std::string>& args, const std::string& log,
                       bool json = true) {
    std::vector<std::string> argv{CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_, "trace"};
    if (json) argv.push_back("--json");
    argv.insert(argv.end(), args.begin(), args.end());
    procs_.push_back(spawn_in(cg("tracer"), -1, argv, dir_ + "/" + log));
    EXPECT_TRUE(eventually(
        [&] {
          return read_file(dir_ + "/" + log).find("tracing classifier decisions") !=
                 std::string::npos;
        },
        8000))
        << read_file(dir_ + "/" + log);
    return *procs_.back();
  }

  // The tracer's summary line once it has exited on its own.
  std::string summary(const std::string& log) {
    std::string text;
    eventually(
        [&] {
          text = read_file(dir_ + "/" + log);
          return text.find("events lost") != std::string::npos;
        },
        8000);
    auto at = text.find("trace: ");
    return at == std::string::npos ? "no summary in: " + text : text.substr(at);
  }

  uint64_t lease() {
    int fd = bpf_obj_get((pin_dir_ + "/maps/trace_on").c_str());
    EXPECT_GE(fd, 0) << strerror(errno);
    uint32_t zero = 0;
    uint64_t v = ~0ull;
    EXPECT_EQ(bpf_map_lookup_elem(fd, &zero, &v), 0) << strerror(errno);
    close(fd);
    return v;
  }

  static uint64_t boot_ns() {
    timespec ts{};
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
  }

  // "callout:verdict" per candidate, in the order the classifier met them.
  static std::vector<std::string> verdicts(const nlohmann::json& ev) {
    std::vector<std::string> out;
    for (auto& v : ev["verdicts"])
      out.push_back(v.value("callout", "") + ":" + v.value("verdict", "") +
                    (v.value("not_owner", false) ? "+not_owner" : "") +
                    (v.value("failure_refused", false) ? "+failure_refused" : ""));
    return out;
  }
};

// A two-vendor chain: the app's connect is redirected to vendor-a; vendor-a's
// onward connect skips vendor-a (self) and goes to vendor-b; vendor-b's skips
// vendor-a (previously redirected) and itself (self), and goes direct.
TEST_F(Trace, ExplainsEachHopOfAChain) {
  EchoServer dst("127.0.0.1:0");
  EchoServer other("127.0.0.1:0");
  add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", dst.port(), 200);
  add_vendor("vendor-b", 15002, 4002, "127.0.0.1/32", dst.port(), 100);
  add_vendor("vendor-c", 15003, 4003, "127.0.0.1/32", other.port(), 100,
             {"--on-proxy-down", "bypass"});
  start_proxy("vendor-a", 4001, "127.0.0.1:15001");
  start_proxy("vendor-b", 4002, "127.0.0.1:15002");
  start_trace({"--count", "3", "--timeout-ms", "20000", "--callout", "vendor-a"}, "trace.out");
  // Classified, but vendor-a is not a candidate: filtered out by --callout.
  EXPECT_EQ(app_roundtrip(other.addr(), "x", kAppUid), "x");
  std::string payload = make_payload(2000, 41);
  EXPECT_EQ(app_roundtrip(dst.addr(), payload, kAppUid), payload);
  auto ev = read_json_lines(dir_ + "/trace.out", 3);
  ASSERT_EQ(ev.size(), 3u) << read_file(dir_ + "/trace.out");
  std::sort(ev.begin(), ev.end(), [](auto& x, auto& y) { return x["hops"] < y["hops"]; });
  std::string d = dst.addr();
  EXPECT_EQ(ev[0].value("hops", 99), 0) << ev[0].dump();
  EXPECT_EQ(ev[0].value("uid", 0u), static_cast<uint32_t>(kAppUid)) << ev[0].dump();
  EXPECT_EQ(ev[0].value("dst", ""), d);
  EXPECT_EQ(ev[0].value("proto", ""), "tcp");
  EXPECT_NE(ev[0].value("cgroup", ""), "") << ev[0].dump();
  EXPECT_GT(ev[0].value("pid", 0u), 0u);
  EXPECT_EQ(verdicts(ev[0]), (std::vector<std::string>{"vendor-a:redirected"}));
  EXPECT_EQ(ev[0]["verdicts"][0].value("proxy", ""), "127.0.0.1:15001") << ev[0].dump();
  EXPECT_EQ(ev[0].value("outcome", ""), "redirected");
  EXPECT_EQ(ev[0].value("final_dst", ""), "127.0.0.1:15001");

  EXPECT_EQ(ev[1].value("hops", 99), 1) << ev[1].dump();
  EXPECT_EQ(ev[1].value("uid", 0u), 4001u);
  EXPECT_EQ(ev[1].value("dst", ""), d);
  EXPECT_EQ(verdicts(ev[1]),
            (std::vector<std::string>{"vendor-a:self_skip", "vendor-b:redirected"}));
  EXPECT_EQ(ev[1].value("final_dst", ""), "127.0.0.1:15002");

  EXPECT_EQ(ev[2].value("hops", 99), 2) << ev[2].dump();
  EXPECT_EQ(ev[2].value("uid", 0u), 4002u);
  EXPECT_EQ(verdicts(ev[2]),
            (std::vector<std::string>{"vendor-a:prev_skip", "vendor-b:self_skip"}));
  EXPECT_EQ(ev[2].value("outcome", ""), "direct");
  EXPECT_EQ(ev[2].value("final_dst", ""), d);
  EXPECT_NE(summary("trace.out").find("trace: 3 events shown, 0 events lost"), std::string::npos);
  // A clean exit withdraws the lease at once.
  EXPECT_EQ(lease(), 0u);
}

// The text form says the same in words: the application, each candidate's
// verdict and where the connect went.
// Permit and block filters name no callout ("-"): the event names the
// filter that decided and how the connect or the UDP send ended.
TEST_F(Trace, SaysWhichFilterPermittedOrBlocked) {
  EchoServer dst("127.0.0.1:0");
  EchoServer udp("127.0.0.1:0", SOCK_DGRAM);
  cli({"filter", "add", "--action", "permit", "--proto", "tcp", "--dst", "127.0.0.1", "--port",
       std::to_string(dst.port())});
  cli({"filter", "add", "--action", "block", "--proto", "udp", "--port",
       std::to_string(udp.port())});
  start_trace({"--count", "2", "--timeout-ms", "20000"}, "trace.out");
  EXPECT_EQ(app_roundtrip(dst.addr(), "x", kAppUid), "x");
  std::string to = udp.addr();
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return udp_roundtrip(to, "u", false); }),
            std::string("ERR:send ") + strerror(EPERM));
  auto ev = read_json_lines(dir_ + "/trace.out", 2);
  ASSERT_EQ(ev.size(), 2u) << read_file(dir_ + "/trace.out");
  std::sort(ev.begin(), ev.end(), [](auto& x, auto& y) { return x["proto"] < y["proto"]; });
  EXPECT_EQ(ev[0].value("proto", ""), "tcp") << ev[0].dump();
  EXPECT_EQ(verdicts(ev[0]), (std::vector<std::string>{"-:permitted"}));
  EXPECT_EQ(ev[0]["verdicts"][0].value("filter_id", 0u), 1u);
  EXPECT_EQ(ev[0].value("outcome", ""), "direct");
  EXPECT_EQ(ev[0].value("final_dst", ""), dst.addr());
  EXPECT_EQ(ev[1].value("proto", ""), "udp") << ev[1].dump();
  EXPECT_EQ(ev[1].value("dst", ""), udp.addr());
  EXPECT_EQ(verdicts(ev[1]), (std::vector<std::string>{"-:blocked"}));
  EXPECT_EQ(ev[1]["verdicts"][0].value("filter_id", 0u), 2u);
  EXPECT_EQ(ev[1].value("outcome", ""), "blocked");
  EXPECT_TRUE(ev[1]["final_dst"].is_null()) << ev[1].dump();
  EXPECT_TRUE(udp.peers().empty());
}

TEST_F(Trace, TextFormSaysWhy) {
  EchoServer dst("127.0.0.1:0");
  add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", dst.port(), 200,
             {"--on-proxy-down", "bypass"});
  add_vendor("vendor-b", 15002, 4002, "127.0.0.1/32", dst.port(), 100);
  start_proxy("vendor-b", 4002, "127.0.0.1:15002");
  start_trace({"--count", "2", "--timeout-ms", "20000"}, "trace.txt", false);
  std::string payload = make_payload(100, 44);
  EXPECT_EQ(app_roundtrip(dst.addr(), payload, kAppUid), payload);
  std::string text = summary("trace.txt");
  std::string all = read_file(dir_ + "/trace.txt");
  EXPECT_NE(text.find("trace: 2 events shown, 0 events lost"), std::string::npos) << all;
  EXPECT_NE(all.find(fmt::format("uid {} ", kAppUid)), std::string::npos) << all;
  EXPECT_NE(all.find(fmt::format("tcp {} (chain 0 long)", dst.addr())), std::string::npos) << all;
  EXPECT_NE(all.find("vendor-a (filter "), std::string::npos) << all;
  EXPECT_NE(all.find("): bypassed: proxy down"), std::string::npos) << all;
  EXPECT_NE(all.find("): redirected to 127.0.0.1:15002"), std::string::npos) << all;
  EXPECT_NE(all.find("  => 127.0.0.1:15002"), std::string::npos) << all;
  EXPECT_NE(all.find("(chain 1 long)"), std::string::npos) << all;  // vendor-b's onward connect
  EXPECT_NE(all.find(fmt::format("  => {}", dst.addr())), std::string::npos) << all;
}

// A chain CONNREDIR_MAX_HOPS long: the last proxy's onward connect skips
// the seven earlier vendors (previously redirected) and its own (self); the
// late vendor that selects it meets the chain's cap, and by default the

// Proxies that set no records (--no-propagate): each onward connect says the
// records of the flow it accepted were attached (implicit records); with
// implicit records off, the hops carried over them end the loop.
TEST_F(Trace, ExplainsImplicitRecordsAndTheLoopBreaker) {
  EchoServer dst("127.0.0.1:0");
  for (bool off : {false, true}) {
    SCOPED_TRACE(off ? "implicit records off" : "implicit records on");
    std::vector<std::string> extra;
    if (off) extra = {"--implicit-records", "off"};
    add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", dst.port(), 200, extra);
    add_vendor("vendor-b", 15002, 4002, "127.0.0.1/32", dst.port(), 100, extra);
    start_proxy("vendor-a", 4001, "127.0.0.1:15001", {"--no-propagate"});
    start_proxy("vendor-b", 4002, "127.0.0.1:15002", {"--no-propagate"});
    const size_t events = off ? CONNREDIR_MAX_HOPS + 1 : 3;
    std::string log = off ? "off.out" : "on.out";
    start_trace({"--count", std::to_string(events), "--timeout-ms", "20000"}, log);
    EXPECT_EQ(app_roundtrip(dst.addr(), "hello", kAppUid), "hello");
    auto ev = read_json_lines(dir_ + "/" + log, events);
    ASSERT_EQ(ev.size(), events) << read_file(dir_ + "/" + log);
    std::sort(ev.begin(), ev.end(), [](auto& x, auto& y) { return x["time_ns"] < y["time_ns"]; });
    EXPECT_EQ(ev[0].value("implicit", ""), "none");
    if (!off) {
      EXPECT_EQ(ev[1].value("implicit", ""), "attached") << ev[1].dump();
      EXPECT_EQ(ev[1].value("hops", 9), 1);
      EXPECT_EQ(verdicts(ev[1]),
                (std::vector<std::string>{"vendor-a:self_skip", "vendor-b:redirected"}));
      EXPECT_EQ(ev[2].value("implicit", ""), "attached") << ev[2].dump();
      EXPECT_EQ(ev[2].value("outcome", ""), "direct");
    } else {
      // Each onward connect starts a new chain carrying one hop more.
      for (size_t k = 1; k < events; ++k) {
        EXPECT_EQ(ev[k].value("implicit", ""), "off") << ev[k].dump();
        EXPECT_EQ(ev[k].value("carried_hops", 0), static_cast<int>(k)) << ev[k].dump();
      }
      const auto& last = ev[events - 1];
      EXPECT_EQ(last.value("outcome", ""), "direct") << last.dump();
      auto v = verdicts(last);
      EXPECT_TRUE(std::find(v.begin(), v.end(), "vendor-a:loop_broken") != v.end() ||
                  std::find(v.begin(), v.end(), "vendor-b:loop_broken") != v.end())
          << last.dump();
      // The text form says why.
      start_trace({"--count", std::to_string(events), "--timeout-ms", "20000"}, "off.txt", false);
      EXPECT_EQ(app_roundtrip(dst.addr(), "again", kAppUid), "again");
      EXPECT_TRUE(eventually(
          [&] {
            std::string t = read_file(dir_ + "/off.txt");
            return t.find("(loop breaker)") != std::string::npos &&
                   t.find("8 hop(s) carried over proxies that set no records") !=
                       std::string::npos &&
                   t.find("implicit records: off for this proxy's callout") != std::string::npos;
          },
          8000))
          << read_file(dir_ + "/off.txt");
    }
    for (auto& p : procs_) p->stop();
    procs_.clear();
    cli({"callout", "del", "vendor-a", "--force"});
    cli({"callout", "del", "vendor-b", "--force"});
  }
}
// connect goes on to its destination. The event has room for all nine.
TEST_F(Trace, ExplainsAChainAtItsCap) {
  EchoServer dst("127.0.0.1:0");
  std::vector<std::string> expect;
  for (int i = 0; i < CONNREDIR_MAX_HOPS; i++) {
    std::string name = "vendor-" + std::string(1, static_cast<char>('a' + i));
    add_vendor(name, 15001 + i, 4001 + i, "127.0.0.1/32", dst.port(), 900 - i);
    start_proxy(name, 4001 + i, fmt::format("127.0.0.1:{}", 15001 + i));
    expect.push_back(name + (i + 1 < CONNREDIR_MAX_HOPS ? ":prev_skip" : ":self_skip"));
  }
  add_vendor("vendor-late", 15099, 4099, "127.0.0.1/32", dst.port(), 1);
  expect.push_back("vendor-late:hop_cap");
  start_trace({"--count", "1", "--timeout-ms", "20000", "--callout", "vendor-late"}, "trace.out");
  std::string payload = make_payload(1000, 43);
  EXPECT_EQ(app_roundtrip(dst.addr(), payload, kAppUid), payload);
  auto ev = read_json_lines(dir_ + "/trace.out", 1);
  ASSERT_EQ(ev.size(), 1u) << read_file(dir_ + "/trace.out");
  EXPECT_EQ(ev[0].value("hops", 0), CONNREDIR_MAX_HOPS) << ev[0].dump();
  EXPECT_EQ(ev[0].value("uid", 0u), static_cast<uint32_t>(4000 + CONNREDIR_MAX_HOPS));
  EXPECT_EQ(verdicts(ev[0]), expect) << ev[0].dump();
  EXPECT_FALSE(ev[0].value("truncated", true));
  EXPECT_EQ(ev[0].value("outcome", ""), "direct");
  EXPECT_EQ(ev[0].value("final_dst", ""), dst.addr());
  EXPECT_NE(summary("trace.out").find("1 events shown, 0 events lost"), std::string::npos);
}

// Proxy down (bypass, refuse, a listener the principal does not own) and
// --on-failure refuse for a family without a proxy.
TEST_F(Trace, ExplainsProxyDownAndFailurePolicies) {
  EchoServer dst("127.0.0.1:0");
  EchoServer dst6("[::1]:0");
  add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", dst.port(), 200,
             {"--on-proxy-down", "bypass"});
  add_vendor("vendor-b", 15002, 4002, "127.0.0.1/32", dst.port(), 100);
  add_vendor("vendor-c", 15003, 4003, "::1/128", dst6.port(), 100, {"--on-failure", "refuse"});
  start_trace({"--count", "3", "--timeout-ms", "20000"}, "trace.out");
  EXPECT_EQ(app_roundtrip(dst.addr(), "x", kAppUid), "ERR:connect Connection refused");
  int l = listen_on("127.0.0.1:15002");  // outside the attached cgroups: not vendor-b's
  ASSERT_GE(l, 0) << strerror(errno);
  EXPECT_EQ(app_roundtrip(dst.addr(), "x", kAppUid), "ERR:connect Connection refused");
  close(l);
  EXPECT_EQ(app_roundtrip(dst6.addr(), "x", kAppUid), "ERR:connect Connection refused");
  auto ev = read_json_lines(dir_ + "/trace.out", 3);
  ASSERT_EQ(ev.size(), 3u) << read_file(dir_ + "/trace.out");
  EXPECT_EQ(verdicts(ev[0]),
            (std::vector<std::string>{"vendor-a:down_bypass", "vendor-b:down_refused"}));
  EXPECT_EQ(ev[0].value("outcome", ""), "refused");
  EXPECT_TRUE(ev[0]["final_dst"].is_null()) << ev[0].dump();
  EXPECT_EQ(verdicts(ev[1]),
            (std::vector<std::string>{"vendor-a:down_bypass", "vendor-b:down_refused+not_owner"}));
  EXPECT_EQ(verdicts(ev[2]),
            (std::vector<std::string>{"vendor-c:no_proxy_family+failure_refused"}));
  EXPECT_EQ(ev[2].value("dst", ""), dst6.addr());
  EXPECT_EQ(ev[2].value("outcome", ""), "refused");
  EXPECT_NE(summary("trace.out").find("3 events shown, 0 events lost"), std::string::npos);
}

// --dst filters; a killed tracer's lease runs out by itself, and while no
// lease holds nothing is emitted (the next tracer sees only its own events).
TEST_F(Trace, KilledTracerLeavesNoTracingOnAndDstFilters) {
  EchoServer dst("127.0.0.1:0");
  EchoServer other("[::1]:0");
  add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", dst.port(), 100);
  add_vendor("vendor-b", 15002, 4002, "::1/128", other.port(), 100);
  EXPECT_EQ(lease(), 0u) << "tracing must be off after up";
  auto& killed = start_trace({}, "killed.out");
  const uint64_t before = boot_ns();
  uint64_t held = lease();
  EXPECT_GT(held, before);
  EXPECT_LE(held, before + 2500000000ull) << "the lease must be short";
  ::kill(killed.pid, SIGKILL);
  killed.stop();
  EXPECT_TRUE(eventually([&] { return boot_ns() > lease(); }, 4000));
  // No lease: these connects produce no events (the next tracer must not
  // see them, though the ring was never drained).
  EXPECT_EQ(app_roundtrip(other.addr(), "x", kAppUid), "x");
  start_trace({"--count", "1", "--timeout-ms", "20000", "--dst", "::1/128"}, "trace.out");
  EXPECT_EQ(app_roundtrip(dst.addr(), "y", kAppUid),
            "ERR:connect Connection refused");  // filtered out
  EXPECT_EQ(app_roundtrip(other.addr(), "z", kAppUid), "z");
  auto ev = read_json_lines(dir_ + "/trace.out", 1);
  ASSERT_EQ(ev.size(), 1u) << read_file(dir_ + "/trace.out");
  EXPECT_EQ(ev[0].value("dst", ""), other.addr());
  EXPECT_EQ(verdicts(ev[0]), (std::vector<std::string>{"vendor-b:no_proxy_family"}));
  EXPECT_EQ(ev[0].value("outcome", ""), "direct");
  EXPECT_NE(summary("trace.out").find("1 events shown, 0 events lost"), std::string::npos);
  EXPECT_EQ(cli_json({"status"})["stats"].value("trace_lost", 99ull), 0u);
}

// A tracer that does not read (stopped) while connects keep coming: the full
// ring drops events, never connects; every drop is counted (stat trace_lost)
// and the tracer reports them on exit, so shown + lost = the connects.
TEST_F(Trace, CountsAndReportsLostEvents) {
  constexpr int kConnects = 4500;  // the 1 MiB ring holds ~3,600 events
  // A port nothing listens on: each connect is classified (vendor-a is down
  // and bypassed) and refused at once by the kernel.
  add_vendor("vendor-a", 15001, 4001, "127.0.0.1/32", 1, 100, {"--on-proxy-down", "bypass"});
  auto& tracer = start_trace({"--timeout-ms", "30000"}, "trace.out");
  ASSERT_EQ(::kill(tracer.pid, SIGSTOP), 0);
  // Well within the 2 s lease the stopped tracer still holds.
  std::string refused = run_in(cg("app"), kAppUid, [] {
    int n = 0;
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(1);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < kConnects; i++) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 && errno == ECONNREFUSED)
        n++;
      close(fd);
    }
    return std::to_string(n);
  });
  EXPECT_EQ(refused, std::to_string(kConnects));
  ASSERT_EQ(::kill(tracer.pid, SIGCONT), 0);
  ASSERT_EQ(::kill(tracer.pid, SIGINT), 0);
  std::string sum = summary("trace.out");
  unsigned long long shown = 0, lost = 0;
  ASSERT_EQ(sscanf(sum.c_str(), "trace: %llu events shown, %llu events lost", &shown, &lost), 2)
      << sum;
  EXPECT_GT(lost, 0u) << sum;
  EXPECT_GT(shown, 0u) << sum;
  EXPECT_EQ(shown + lost, static_cast<unsigned long long>(kConnects)) << sum;
  EXPECT_NE(sum.find("the ring buffer was full"), std::string::npos) << sum;
  EXPECT_EQ(cli_json({"status"})["stats"].value("trace_lost", 0ull), lost);
}

}  // namespace
}  // namespace connredir::test
