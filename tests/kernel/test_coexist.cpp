// Kernel tests: connredir beside another vendor's BPF programs on the same
// cgroup hooks (a security agent, a CNI, a mesh). connredir must never
// detach, replace or silence a program it did not attach: `up`, `down`,
// re-`up` and a killed CLI leave it attached and running, in both orders of
// attachment; `status` lists it and says whether it runs before or after
// connredir; a foreign connect4 program that rewrites the destination
// before or after connredir has the documented effect (docs/ARCHITECTURE.md).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "foreign.skel.h"
#include "harness.hpp"
#include "harness_load.hpp"

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
constexpr int kProxyUid = 4001;
enum Counter : uint32_t { kConnect4 = 0, kSockops = 1, kGetsockopt = 2 };

// The other vendor's programs (tests/kernel/foreign.bpf.c), attached to one
// cgroup with BPF links (multi mode, as modern agents do) or with the
// legacy attach and chosen flags. Detached when destroyed.
class Foreign {
 public:
  explicit Foreign(uint16_t rewrite_from = 0, uint16_t rewrite_to = 0) {
    skel_ = foreign__open();
    if (!skel_) return;
    skel_->rodata->from_port = rewrite_from;
    skel_->rodata->to_port = rewrite_to;
    if (foreign__load(skel_) != 0) {
      foreign__destroy(skel_);
      skel_ = nullptr;
    }
  }
  ~Foreign() {
    for (auto* l : links_) bpf_link__destroy(l);
    for (auto& a : legacy_) {
      bpf_prog_detach2(a.prog_fd, a.cg_fd, a.type);
      ::close(a.cg_fd);
    }
    if (skel_) foreign__destroy(skel_);
  }
  bool loaded() const { return skel_ != nullptr; }

  bool attach_links(const std::string& cgroup) {
    int fd = ::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return false;
    bool ok = true;
    for (auto* p : programs()) {
      bpf_link* l = bpf_program__attach_cgroup(p, fd);
      if (!l) ok = false;
      if (l) links_.push_back(l);
    }
    ::close(fd);
    return ok;
  }
  // Legacy BPF_PROG_ATTACH of the connect4 program with `flags`.
  int attach_connect4_legacy(const std::string& cgroup, uint32_t flags) {
    int fd = ::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int prog = bpf_program__fd(skel_->progs.foreign_connect4);
    if (bpf_prog_attach(prog, fd, BPF_CGROUP_INET4_CONNECT, flags) != 0) {
      int e = errno;
      ::close(fd);
      return -e;
    }
    legacy_.push_back({prog, fd, BPF_CGROUP_INET4_CONNECT});
    return 0;
  }

  uint64_t runs(Counter c) const {
    uint64_t v = 0;
    uint32_t k = c;
    bpf_map__lookup_elem(skel_->maps.runs, &k, sizeof k, &v, sizeof v, 0);
    return v;
  }
  uint32_t prog_id(bpf_program* p) const {
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    return bpf_obj_get_info_by_fd(bpf_program__fd(p), &info, &len) == 0 ? info.id : 0;
  }
  uint32_t connect4_id() const { return prog_id(skel_->progs.foreign_connect4); }
  // Are all three programs attached directly to `cgroup`?
  bool attached_to(const std::string& cgroup) const {
    int fd = ::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return false;
    bool all = true;
    const std::pair<bpf_program*, bpf_attach_type> hooks[] = {
        {skel_->progs.foreign_connect4, BPF_CGROUP_INET4_CONNECT},
        {skel_->progs.foreign_sockops, BPF_CGROUP_SOCK_OPS},
        {skel_->progs.foreign_getsockopt, BPF_CGROUP_GETSOCKOPT}};
    for (auto [p, type] : hooks) {
      uint32_t ids[64], cnt = 64;
      if (bpf_prog_query(fd, type, 0, nullptr, ids, &cnt) != 0 ||
          std::find(ids, ids + cnt, prog_id(p)) == ids + cnt)
        all = false;
    }
    ::close(fd);
    return all;
  }

 private:
  std::vector<bpf_program*> programs() const {
    return {skel_->progs.foreign_connect4, skel_->progs.foreign_sockops,
            skel_->progs.foreign_getsockopt};
  }
  struct Legacy {
    int prog_fd;
    int cg_fd;
    bpf_attach_type type;
  };
  foreign* skel_ = nullptr;
  std::vector<bpf_link*> links_;
  std::vector<Legacy> legacy_;
};

class Coexist : public KernelTest {
 protected:
  // One app connect + getsockopt to a destination no filter covers (so no
  // proxy sees it); the foreign counters must all move.
  void expect_foreign_runs(const Foreign& f, const char* when) {
    EchoServer other("127.0.0.1:0");
    uint64_t c0 = f.runs(kConnect4), s0 = f.runs(kSockops), g0 = f.runs(kGetsockopt);
    std::string addr = other.addr();
    std::string got = run_in(cg("app"), kAppUid, [&] {
      int fd = connect_to(addr);
      if (fd < 0) return std::string("connect failed");
      int v = 0;
      socklen_t len = sizeof v;
      getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len);
      close(fd);
      return std::string("ok");
    });
    EXPECT_EQ(got, "ok") << when;
    EXPECT_GT(f.runs(kConnect4), c0) << "foreign connect4 stopped running " << when;
    EXPECT_GT(f.runs(kSockops), s0) << "foreign sockops stopped running " << when;
    EXPECT_GT(f.runs(kGetsockopt), g0) << "foreign getsockopt stopped running " << when;
  }

  // A vendor redirecting the destination's port, and one inspected round trip.
  void expect_redirect_works(const EchoServer& dst, size_t expected_flows) {
    std::string payload = make_payload(5000, 11);
    std::string addr = dst.addr();
    EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, payload); }), payload);
    EXPECT_EQ(read_json_lines(proxy_log("vendor-a"), expected_flows).size(), expected_flows);
  }

  // The foreign programs as `status --json` lists them, and where.
  std::vector<nlohmann::json> foreign_in_status() {
    auto j = cli_json({"status"});
    std::vector<nlohmann::json> out;
    for (auto& h : j["hooks"])
      for (auto& p : h["programs"])
        if (!p.value("ours", true)) {
          auto q = p;
          q["hook"] = h["attach_type"];
          out.push_back(q);
        }
    EXPECT_EQ(j.value("foreign_programs", 0u), out.size());
    return out;
  }

  void up() { cli({"up", "--cgroup", cgroup_}); }
  void down() { cli({"down"}); }

  // The same checks for either order of attachment.
  void survive_up_down_reup(bool foreign_first) {
    EchoServer dst("127.0.0.1:0");
    Foreign f;
    ASSERT_TRUE(f.loaded());
    if (foreign_first) {
      down();
      ASSERT_TRUE(f.attach_links(cgroup_));
      up();
    } else {
      ASSERT_TRUE(f.attach_links(cgroup_));
    }
    add_redirect("vendor-a", "127.0.0.1:15001", kProxyUid, "127.0.0.1/32", dst.port());
    start_proxy("vendor-a", kProxyUid, "127.0.0.1:15001");
    expect_redirect_works(dst, 1);
    expect_foreign_runs(f, "while connredir is up");

    auto listed = foreign_in_status();
    ASSERT_EQ(listed.size(), 3u);
    for (auto& p : listed) {
      EXPECT_EQ(p.value("position", ""), foreign_first ? "before connredir" : "after connredir")
          << p.dump();
      EXPECT_EQ(p.value("attach_mode", ""), "multi") << p.dump();
      EXPECT_EQ(p.value("attached_at", ""), cgroup_) << p.dump();
    }
    bool named = false;
    // The kernel keeps 15 characters of a program's name.
    for (auto& p : listed) named = named || p.value("name", "") == "foreign_connect";
    EXPECT_TRUE(named);

    down();
    EXPECT_TRUE(f.attached_to(cgroup_)) << "down detached a foreign program";
    expect_foreign_runs(f, "after down");
    up();
    EXPECT_TRUE(f.attached_to(cgroup_)) << "re-up detached a foreign program";
    // The pinned maps went with `down`: the vendor is registered again, and
    // its proxy binds again (its listener's owner record went with the maps;
    // an unowned listener receives no flows).
    add_redirect("vendor-a", "127.0.0.1:15001", kProxyUid, "127.0.0.1/32", dst.port());
    procs_.back()->stop();
    start_proxy("vendor-a", kProxyUid, "127.0.0.1:15001");
    expect_redirect_works(dst, 2);
    expect_foreign_runs(f, "after re-up");
  }
};

TEST_F(Coexist, ForeignProgramsAttachedAfterUpSurviveDownAndReup) { survive_up_down_reup(false); }

TEST_F(Coexist, ForeignProgramsAttachedBeforeUpSurviveDownAndReup) { survive_up_down_reup(true); }

// `connredir up` killed at many points (loading, attaching, pinning): the
// foreign programs stay attached and running, and a later up/down works.
TEST_F(Coexist, KilledUpLeavesForeignProgramsAttached) {
  EchoServer dst("127.0.0.1:0");
  down();
  Foreign f;
  ASSERT_TRUE(f.loaded());
  ASSERT_TRUE(f.attach_links(cgroup_));
  for (int delay_ms : {0, 1, 3, 6, 10, 20, 40, 80}) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int null = ::open("/dev/null", O_WRONLY);
      dup2(null, 1);
      dup2(null, 2);
      execl(CONNREDIR_CLI_PATH, CONNREDIR_CLI_PATH, "--pin-dir", pin_dir_.c_str(), "up", "--cgroup",
            cgroup_.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    usleep(static_cast<useconds_t>(delay_ms) * 1000);
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    EXPECT_TRUE(f.attached_to(cgroup_)) << "after up killed at " << delay_ms << " ms";
    expect_foreign_runs(f, "after a killed up");
    down();  // whatever the killed up left pinned
  }
  up();
  EXPECT_EQ(foreign_in_status().size(), 3u);
  down();
  EXPECT_TRUE(f.attached_to(cgroup_));
  up();  // TearDown expects connredir up
}

// An ancestor's program attached with BPF_F_ALLOW_OVERRIDE stops running in
// a subtree once anything is attached below it: `up` refuses, naming it,
// and it keeps running. A non-multi program on the cgroup itself: refused too.
TEST_F(Coexist, RefusesToSilenceOrReplaceANonMultiProgram) {
  EchoServer dst("127.0.0.1:0");
  down();
  Foreign f;
  ASSERT_TRUE(f.loaded());
  ASSERT_EQ(f.attach_connect4_legacy(cgroup_, BPF_F_ALLOW_OVERRIDE), 0);
  auto r = cli({"up", "--cgroup", cg("app")}, 1);
  EXPECT_NE(r.out.find("never disables another program"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("foreign_connect"), std::string::npos) << r.out;
  EXPECT_NE(::access(pin_dir_.c_str(), F_OK), 0) << "a refused up must leave nothing pinned";
  uint64_t c0 = f.runs(kConnect4);
  std::string addr = dst.addr();
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, "x"); }), "x");
  EXPECT_GT(f.runs(kConnect4), c0) << "the override program must still run in the subtree";

  r = cli({"up", "--cgroup", cgroup_}, 1);
  EXPECT_NE(r.out.find("will not replace it"), std::string::npos) << r.out;
  EXPECT_NE(::access(pin_dir_.c_str(), F_OK), 0);
  c0 = f.runs(kConnect4);
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, "y"); }), "y");
  EXPECT_GT(f.runs(kConnect4), c0);
}

// A foreign connect4 that rewrites the destination BEFORE connredir (it was
// attached first): connredir classifies the rewritten destination, and the
// proxy's original destination is the rewritten one.
TEST_F(Coexist, ForeignRewriteBeforeConnredirIsWhatConnredirClassifies) {
  EchoServer dst("127.0.0.1:0");
  constexpr uint16_t kAppPort = 19999;  // nothing listens here
  down();
  Foreign f(kAppPort, static_cast<uint16_t>(dst.port()));
  ASSERT_TRUE(f.loaded());
  ASSERT_TRUE(f.attach_links(cgroup_));
  up();
  add_redirect("vendor-a", "127.0.0.1:15001", kProxyUid, "127.0.0.1/32", dst.port());
  start_proxy("vendor-a", kProxyUid, "127.0.0.1:15001");
  std::string payload = make_payload(3000, 12);
  std::string asked = "127.0.0.1:" + std::to_string(kAppPort);
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(asked, payload); }), payload);
  auto lines = read_json_lines(proxy_log("vendor-a"), 1);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].value("orig_dst", ""), dst.addr()) << lines[0].dump();
  EXPECT_EQ(lines[0].value("result", ""), "ok") << lines[0].dump();
}

// A foreign connect4 that rewrites the destination AFTER connredir (attached
// later): it sees the proxy's address and may send the connect elsewhere,
// undoing the redirect. The flow then goes where the last program sent it:
// connredir notices at TCP_CONNECT (the socket did not connect to the proxy)
// and publishes nothing, so no proxy receives stale records and nothing
// leaks in the hand-off map.
TEST_F(Coexist, ForeignRewriteAfterConnredirCanUndoTheRedirect) {
  EchoServer dst("127.0.0.1:0");
  add_redirect("vendor-a", "127.0.0.1:15001", kProxyUid, "127.0.0.1/32", dst.port());
  start_proxy("vendor-a", kProxyUid, "127.0.0.1:15001");
  Foreign f(15001, static_cast<uint16_t>(dst.port()));
  ASSERT_TRUE(f.loaded());
  ASSERT_TRUE(f.attach_links(cgroup_));
  auto before = stats();
  std::string payload = make_payload(3000, 13);
  std::string addr = dst.addr();
  EXPECT_EQ(run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, payload); }), payload);
  auto after = stats();
  EXPECT_EQ(after["redirected"], before["redirected"] + 1) << "connredir did redirect";
  EXPECT_EQ(after["published"], before["published"]) << "but published no flow";
  EXPECT_EQ(map_count(pin_dir_, "handoff"), 0);
  EXPECT_TRUE(read_json_lines(proxy_log("vendor-a"), 1, 300).empty())
      << "the proxy must not have received the flow";
  auto listed = foreign_in_status();
  for (auto& p : listed)
    if (p.value("hook", "") == "cgroup_inet4_connect") {
      EXPECT_EQ(p.value("position", ""), "after connredir");
    }
}

}  // namespace
}  // namespace connredir::test
