// Configuration files on the real kernel: `connredir apply` under a running
// connect loop (no failed and no misrouted connect while callouts and filters
// are added, changed and removed), refusal of a bad configuration with
// nothing changed, the export round trip, and drift (entries made by hand).
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>

#include <fmt/format.h>

#include "harness.hpp"

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;

class Config : public KernelTest {
 protected:
  std::string write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }

  static std::string callout(const std::string& name, int port, int uid,
                             const std::string& extra = "") {
    return fmt::format(
        "[[callout]]\nname = \"{}\"\nproxy = [\"127.0.0.1:{}\"]\nproxy_uid = {}\n{}\n", name, port,
        uid, extra);
  }
  static std::string filter(const std::string& callout, const std::string& dst, int port,
                            int weight) {
    return fmt::format(
        "[[filter]]\ncallout = \"{}\"\ndst = \"{}\"\nport = {}\nproto = \"tcp\"\nweight = {}\n\n",
        callout, dst, port, weight);
  }
  std::string global() const { return fmt::format("[global]\ncgroup = \"{}\"\n", cgroup_); }

  // Chains each vendor's proxy logged ("vendor-a>vendor-b"), with counts.
  std::map<std::string, int> chains(const std::string& vendor, size_t at_least) {
    std::map<std::string, int> out;
    std::map<uint32_t, std::string> names;
    for (const char* v : {"vendor-a", "vendor-b", "vendor-c"}) names[ids_[v]] = v;
    for (const auto& l : read_json_lines(proxy_log(vendor), at_least, 15000)) {
      std::string c;
      for (const auto& h : l.value("chain", nlohmann::json::array()))
        c += (c.empty() ? "" : ">") + names[h.value("callout_id", 0u)];
      if (l.value("result", "") != "ok") c += " (" + l.value("result", "?") + ")";
      out[c]++;
    }
    return out;
  }

  std::map<std::string, uint32_t> ids_;
};

// Two configurations, applied in turn while an app connects in a loop:
//   one: vendor-a (weight 200) then vendor-b (weight 100);
//   two: vendor-a changed in place (on_proxy_down), vendor-b removed with its
//        filter, vendor-c added with a filter (weight 150).
// Every connect must succeed, and pass vendor-a and then exactly one of
// vendor-b or vendor-c: never none, never a removed callout's stale id.
TEST_F(Config, ApplyUnderLoadNeverFailsNorMisroutes) {
  EchoServer dst("127.0.0.1:0");
  const int port = dst.port();
  start_proxy("vendor-a", 4001, "127.0.0.1:15001");
  start_proxy("vendor-b", 4002, "127.0.0.1:15002");
  start_proxy("vendor-c", 4003, "127.0.0.1:15003");
  std::string one = write("one.toml", global() + callout("vendor-a", 15001, 4001) +
                                          callout("vendor-b", 15002, 4002) +
                                          filter("vendor-a", "127.0.0.1/32", port, 200) +
                                          filter("vendor-b", "127.0.0.0/8", port, 100));
  std::string two =
      write("two.toml", global() + callout("vendor-a", 15001, 4001, "on_proxy_down = \"refuse\"") +
                            callout("vendor-c", 15003, 4003) +
                            filter("vendor-a", "127.0.0.1/32", port, 200) +
                            filter("vendor-c", "127.0.0.0/8", port, 150));
  auto r = cli({"apply", one});
  EXPECT_NE(r.out.find("+ callout vendor-a"), std::string::npos) << r.out;
  for (const char* v : {"vendor-a", "vendor-b"}) ids_[v] = callout_id(v);

  const std::string addr = dst.addr();
  const std::string payload = make_payload(3000, 5);
  // The app connects in a loop until every apply is done (the stop file),
  // so each apply runs while connects are in flight.
  const std::string stop = dir_ + "/stop";
  auto client = fork_in(cg("app"), kAppUid, [&] {
    int bad = 0, rounds = 0;
    while (access(stop.c_str(), F_OK) != 0 && rounds < 200000) {
      if (echo_roundtrip(addr, payload) != payload) bad++;
      rounds++;
    }
    return fmt::format("{} {}", bad, rounds);
  });
  ASSERT_TRUE(eventually([&] { return read_file(proxy_log("vendor-a")).size() > 0; }, 10000));
  constexpr int kApplies = 6;
  for (int k = 0; k < kApplies; k++) {
    auto a = cli({"apply", k % 2 ? one : two});
    EXPECT_NE(a.out.find("changed:"), std::string::npos) << a.out;
    if (k == 0) ids_["vendor-c"] = callout_id("vendor-c");
    usleep(50 * 1000);  // some connects under each configuration, not only during applies
  }
  std::ofstream(stop) << "stop\n";
  int bad = -1, rounds = 0;
  ASSERT_EQ(sscanf(client->wait(120000).c_str(), "%d %d", &bad, &rounds), 2);
  EXPECT_EQ(bad, 0) << "connects failed during " << kApplies << " applies (" << rounds
                    << " round trips)";
  EXPECT_EQ(callout_id("vendor-a"), ids_["vendor-a"]) << "a changed callout keeps its id";

  auto a = chains("vendor-a", static_cast<size_t>(rounds));
  EXPECT_EQ(a.size(), 1u);
  EXPECT_EQ(a["vendor-a"], rounds) << "every connect passes vendor-a exactly once";
  // A connect in flight while the classifier switches can be classified at
  // each hop under the configuration of that instant: a>b, a>c, or (hops on
  // either side of the switch) a>b>c, a>c>b. Never a removed callout's stale
  // id, never a vendor twice, never without vendor-b or vendor-c.
  const std::set<std::string> valid = {"vendor-a>vendor-b", "vendor-a>vendor-c",
                                       "vendor-a>vendor-b>vendor-c", "vendor-a>vendor-c>vendor-b"};
  int via_b = 0, via_c = 0, three_hops = 0;
  for (const auto& [chain, n] : chains("vendor-b", 1)) {
    EXPECT_TRUE(valid.count(chain)) << chain;
    via_b += n;
    if (chain.size() > std::string("vendor-a>vendor-b").size()) three_hops += n;
  }
  for (const auto& [chain, n] : chains("vendor-c", 1)) {
    EXPECT_TRUE(valid.count(chain)) << chain;
    via_c += n;
    if (chain.size() > std::string("vendor-a>vendor-c").size()) three_hops += n;
  }
  EXPECT_EQ(via_b + via_c - three_hops, rounds)
      << "every connect passes vendor-b or vendor-c after vendor-a";
  EXPECT_GT(via_b, 0);
  EXPECT_GT(via_c, 0);
  RecordProperty("round_trips", rounds);
  // Only proxies reached the destination.
  for (const auto& p : dst.peers()) EXPECT_EQ(p.rfind("127.0.0.1:", 0), 0u) << p;
}

TEST_F(Config, RefusesABadConfigurationWholeAndChangesNothing) {
  std::string good = write("10-good.toml", callout("vendor-a", 15001, 4001) +
                                               filter("vendor-a", "10.0.0.0/8", 443, 100));
  cli({"apply", good});
  auto before = cli({"--json", "filter", "list"}).out;
  auto callouts_before = cli({"--json", "callout", "list"}).out;
  struct Case {
    std::string text, needle;
  };
  const std::vector<Case> cases = {
      {callout("vendor-b", 15002, 4002) + "colour = \"red\"\n",
       "20-bad.toml:11: [[callout]] #2 key colour"},
      {callout("vendor-b", 15002, 4002) + filter("vendor-b", "10.1.2.3/8", 1, 1),
       "20-bad.toml:11: [[filter]]: '10.1.2.3/8' has host bits set"},
      {callout("vendor-a", 15002, 4002), "defined twice (also at " + good + ":1)"},
      {callout("vendor-b", 15001, 4002), "proxy 127.0.0.1:15001 is already the proxy"},
      {filter("ghost", "any", 1, 1), "no callout named 'ghost'"},
  };
  for (const auto& c : cases) {
    std::string bad = write("20-bad.toml", callout("vendor-z", 15009, 4009) + c.text);
    // The good file changes too, so a half-applied configuration would show.
    std::string changed = write("10-good.toml", callout("vendor-a", 15001, 4001) +
                                                    filter("vendor-a", "10.0.0.0/8", 8443, 100));
    auto r = cli({"apply", changed, bad}, 2);
    EXPECT_NE(r.out.find(c.needle), std::string::npos) << c.needle << "\n" << r.out;
    EXPECT_NE(r.out.find("nothing was changed"), std::string::npos) << r.out;
    EXPECT_EQ(cli({"--json", "filter", "list"}).out, before);
    EXPECT_EQ(cli({"--json", "callout", "list"}).out, callouts_before);
    write("10-good.toml",
          callout("vendor-a", 15001, 4001) + filter("vendor-a", "10.0.0.0/8", 443, 100));
  }
}

TEST_F(Config, ExportRoundTripDriftAndSources) {
  std::string dropins = dir_ + "/conf.d";
  ASSERT_EQ(mkdir(dropins.c_str(), 0755), 0);
  std::string main = write("connredir.toml", global());
  write("conf.d/50-acme.toml",
        callout("acme", 15001, 4001,
                fmt::format("proxy_cgroup = \"{}\"\non_failure = \"refuse\"", cg("acme"))) +
            filter("acme", "any", 443, 100) + "[[principal]]\nuid = 5000\n");
  write("conf.d/60-zeta.toml",
        "[[callout]]\nname = \"zeta\"\nproxy = [\"127.0.0.1:15002\", \"[::1]:15002\"]\n\n" +
            filter("zeta", "2001:db8::/32", 8000, 5) +
            fmt::format("[[filter]]\ncallout = \"zeta\"\nport = \"8000-8080\"\napp_cgroup = "
                        "\"{}\"\napp_uid = 1000\ncontext = \"tls \\\"x\\\"\"\n",
                        cg("app")));
  write("conf.d/.hidden.toml", "not toml at all [");
  write("conf.d/README", "not toml at all [");
  auto r = cli({"apply", main, dropins});
  EXPECT_NE(r.out.find(dropins + "/50-acme.toml:\n  + callout acme"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("changed: 6 added, 0 changed, 0 removed"), std::string::npos) << r.out;

  // Idempotent.
  r = cli({"apply", main, dropins});
  EXPECT_NE(r.out.find("nothing to change"), std::string::npos) << r.out;

  // Each entry shows the file it came from.
  auto cl = cli_json({"callout", "list"});
  for (const auto& c : cl)
    EXPECT_EQ(c.value("source", ""),
              fmt::format("{}/{}:1", dropins,
                          c.value("name", "") == "acme" ? "50-acme.toml" : "60-zeta.toml"))
        << c.dump();
  auto fl = cli_json({"filter", "list"});
  ASSERT_EQ(fl.size(), 3u);
  for (const auto& f : fl) EXPECT_EQ(f.value("source", "").rfind(dropins, 0), 0u) << f.dump();

  // The export is taken back with no change.
  std::string exported = write("export.toml", cli({"export"}).out);
  r = cli({"apply", "--dry-run", exported});
  EXPECT_NE(r.out.find("nothing to change"), std::string::npos) << r.out << "\nexport:\n"
                                                                << read_file(exported);
  r = cli({"apply", exported});
  EXPECT_NE(r.out.find("nothing to change"), std::string::npos) << r.out;
  cli({"apply", main, dropins});

  // Drift: entries made by hand are shown as such, reported by --dry-run
  // (which changes nothing), and removed by apply.
  cli({"callout", "add", "byhand", "--proxy", "127.0.0.1:15077"});
  cli({"filter", "add", "--callout", "byhand", "--dst", "any", "--port", "any"});
  cl = cli_json({"callout", "list"});
  bool seen = false;
  for (const auto& c : cl)
    if (c.value("name", "") == "byhand") {
      EXPECT_EQ(c.value("source", ""), "by hand");
      seen = true;
    }
  EXPECT_TRUE(seen);
  r = cli({"apply", "--dry-run", main, dropins});
  EXPECT_NE(r.out.find("- callout byhand (not in the configuration: made by hand)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("would change: 0 added, 0 changed, 2 removed"), std::string::npos) << r.out;
  EXPECT_EQ(cli_json({"callout", "list"}).size(), 3u) << "--dry-run changed something";
  r = cli({"apply", main, dropins});
  EXPECT_NE(r.out.find("changed: 0 added, 0 changed, 2 removed"), std::string::npos) << r.out;
  EXPECT_EQ(cli_json({"callout", "list"}).size(), 2u);
}

// A configuration names where connredir is attached; apply never moves it.
TEST_F(Config, RefusesToMoveTheAttachment) {
  std::string other = cg("elsewhere");
  std::string f = write("g.toml", fmt::format("[global]\ncgroup = \"{}\"\n", other));
  auto r = cli({"apply", f}, 1);
  EXPECT_NE(r.out.find("apply does not move it"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace connredir::test
