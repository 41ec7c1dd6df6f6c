// Network namespaces: a proxy in another namespace reached over veth, no
// cross-talk between namespaces reusing the same loopback 4-tuple, and a
// `down` that leaves nothing attached.
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "connredir/address.hpp"
#include "harness.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::test {
namespace {

std::string find_tool(const std::string& name) {
  for (const char* d : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"}) {
    std::string p = std::string(d) + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return name;
}

class Netns : public KernelTest {};

TEST_F(Netns, ProxyInAnotherNamespaceOverVeth) {
  const std::string ip = find_tool("ip");
  // A child that owns the second namespace: it unshares, waits for its veth
  // end, configures it, then becomes the proxy (in the vendor cgroup, as the
  // proxy uid). The namespace and the veth pair die with it.
  int go[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  std::string log = proxy_log("vendor-a");
  std::string cgroup = cg("vendor-a");
  pid_t pid = fork();
  if (pid == 0) {
    if (unshare(CLONE_NEWNET) != 0) _exit(10);
    char b;
    if (read(go[0], &b, 1) != 1) _exit(11);
    if (!lo_up()) _exit(12);
    if (run({ip, "addr", "add", "10.237.0.2/24", "dev", "crvb"}).status != 0) _exit(13);
    if (run({ip, "link", "set", "crvb", "up"}).status != 0) _exit(14);
    int fd = open((cgroup + "/cgroup.procs").c_str(), O_WRONLY);
    std::string me = std::to_string(getpid());
    if (fd < 0 || write(fd, me.data(), me.size()) < 0) _exit(15);
    close(fd);
    if (setgid(4001) != 0 || setuid(4001) != 0) _exit(16);
    execl(CONNREDIR_PROXY_PATH, CONNREDIR_PROXY_PATH, "--listen", "10.237.0.2:15001", "--log",
          log.c_str(), "--name", "vendor-a", static_cast<char*>(nullptr));
    _exit(17);
  }
  ASSERT_GT(pid, 0);
  close(go[0]);
  auto cleanup = [&] {
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
  };
  auto r1 = run({ip, "link", "add", "crva", "type", "veth", "peer", "name", "crvb"});
  auto r2 = run({ip, "link", "set", "crvb", "netns", std::to_string(pid)});
  auto r3 = run({ip, "addr", "add", "10.237.0.1/24", "dev", "crva"});
  auto r4 = run({ip, "link", "set", "crva", "up"});
  ASSERT_EQ(write(go[1], "g", 1), 1);
  close(go[1]);
  if (r1.status || r2.status || r3.status || r4.status) {
    cleanup();
    FAIL() << r1.out << r2.out << r3.out << r4.out;
  }
  // The destination lives in the test namespace, on the veth address.
  EchoServer dst("10.237.0.1:0");
  cli({"callout", "add", "vendor-a", "--proxy", "10.237.0.2:15001", "--proxy-uid", "4001"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "10.237.0.1/32", "--port",
       std::to_string(dst.port())});
  // Wait for the proxy's listener (in its namespace, seen via /proc/PID/net).
  bool up = false;
  for (int i = 0; i < 500 && !up; i++) {
    std::string cmd = "/proc/" + std::to_string(pid) + "/net/tcp";
    auto r = run({"/bin/cat", cmd});
    up = r.out.find(":3A99 00000000:0000 0A") != std::string::npos;  // 15001, LISTEN
    if (!up) usleep(10000);
  }
  if (!up) {
    cleanup();
    FAIL() << "proxy in the second namespace never listened";
  }
  std::string payload = make_payload(500000, 11);
  std::string addr = dst.addr();
  std::string got = run_in(cg("app"), 1000, [&] { return echo_roundtrip(addr, payload); });
  EXPECT_TRUE(got == payload) << got.substr(0, 100);
  auto lines = read_json_lines(log, 1);
  cleanup();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].value("result", ""), "ok") << lines[0].dump();
  EXPECT_EQ(lines[0].value("orig_dst", ""), addr);
  EXPECT_EQ(lines[0]["chain"].size(), 1u);
}

TEST_F(Netns, SameLoopbackTupleInTwoNamespacesDoesNotCrossTalk) {
  // Namespace A (the test's): the app's connect is redirected to
  // 127.0.0.1:15002, where vendor-a's listener (root, in the policed cgroup,
  // so it owns the address) has a full accept queue: the SYN is dropped, so
  // the hand-off is published and never adopted while the app holds the
  // socket open.
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15002"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port", "9"});
  int go[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  auto full = fork_in(cg("vendor-a"), -1, [&]() -> std::string {
    close(go[1]);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(15002);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(l, 0) != 0)
      return "listen failed";
    // One unredirected connection (its port is not filtered) fills the queue.
    int f = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(f, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return "fill failed";
    char b;
    (void)!read(go[0], &b, 1);
    close(f);
    close(l);
    return "held";
  });
  close(go[0]);
  ASSERT_TRUE(wait_listening(15002));
  usleep(100 * 1000);
  auto app = fork_in(cg("app"), -1, []() -> std::string {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in me{};
    me.sin_family = AF_INET;
    me.sin_port = htons(40001);
    me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&me), sizeof me) != 0) return "bind failed";
    sockaddr_in d = me;
    d.sin_port = htons(9);
    int rc = connect(fd, reinterpret_cast<sockaddr*>(&d), sizeof d);
    std::string r = rc == 0 ? "connected?!" : strerrorname_np(errno);
    usleep(1500 * 1000);  // hold the published hand-off
    close(fd);
    return r;
  });
  usleep(300 * 1000);
  // Namespace B: same 4-tuple 127.0.0.1:40001 -> 127.0.0.1:15002, accepted by
  // a process in the policed cgroup. It must not adopt A's flow.
  std::string b = run_in(cg("vendor-b"), -1, []() -> std::string {
    if (unshare(CLONE_NEWNET) != 0 || !lo_up()) return "netns setup failed";
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(15002);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(l, 4) != 0)
      return "listen failed";
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in me = a;
    me.sin_port = htons(40001);
    if (bind(c, reinterpret_cast<sockaddr*>(&me), sizeof me) != 0) return "bind failed";
    if (connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return "connect failed";
    int s = accept(l, nullptr, nullptr);
    uint8_t buf[CONNREDIR_RECORDS_MAX];
    socklen_t len = sizeof buf;
    int rc = getsockopt(s, SOL_CONNREDIR, CONNREDIR_RECORDS, buf, &len);
    return rc == 0 ? "adopted A's flow" : strerrorname_np(errno);
  });
  EXPECT_EQ(b, "ENOENT");
  EXPECT_EQ(app->wait(10000), "EINPROGRESS");
  (void)!write(go[1], "x", 1);
  close(go[1]);
  EXPECT_EQ(full->wait(10000), "held");
  auto s = stats();
  EXPECT_EQ(s["published"], 1u);
  EXPECT_EQ(s["accepted"], 0u);
}

TEST_F(Netns, DownDetachesEverythingAndUpIsIdempotent) {
  cli({"up", "--cgroup", cgroup_});  // second up: no error, nothing doubled
  const std::string bpftool = find_tool("bpftool");
  auto before = run({bpftool, "cgroup", "show", cgroup_});
  EXPECT_NE(before.out.find("connredir_conn"), std::string::npos) << before.out;
  size_t attached = 0;
  for (size_t p = before.out.find("connredir_"); p != std::string::npos;
       p = before.out.find("connredir_", p + 1))
    attached++;
  EXPECT_EQ(attached, 14u) << before.out;
  cli({"down"});
  EXPECT_NE(access(pin_dir_.c_str(), F_OK), 0) << pin_dir_ << " still exists";
  // Unpinning drops the links' last reference; the kernel detaches and frees
  // them asynchronously, so a listing right after `down` may still show them.
  CmdResult after;
  EXPECT_TRUE(eventually(
      [&] {
        after = run({bpftool, "cgroup", "show", cgroup_});
        return after.out.find("connredir_") == std::string::npos;
      },
      5000, 50))
      << after.out;
}

}  // namespace
}  // namespace connredir::test
