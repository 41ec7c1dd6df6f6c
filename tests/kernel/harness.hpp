// Kernel test harness: a throwaway cgroup tree and pin dir per test, real
// `connredir` and `connredir-proxy` binaries, forked actors placed into
// cgroups as chosen uids. Everything created is removed in TearDown, also
// when the test fails. The whole binary runs in its own network namespace
// (kernel_main.cpp), so every address used is ours.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace connredir::test {

// Brings `lo` up in the calling thread's network namespace.
bool lo_up();

// Root of the cgroup v2 hierarchy, from /proc/mounts ("" if none).
std::string cgroup2_root();

struct CmdResult {
  int status = -1;  // exit code, or -1 if it did not exit normally
  std::string out;  // stdout + stderr
};
// A whole file's text ("" if it cannot be read).
std::string read_file(const std::string& path);

// Run a command (argv[0] is a path), capture output, bounded by timeout.
CmdResult run(const std::vector<std::string>& argv, int timeout_ms = 30000);
// The path of iproute2's `ip`.
std::string ip_tool();

// Prometheus text exposition: "name{labels}" (or "name") -> value of every
// sample line.
std::map<std::string, double> metric_samples(const std::string& text);
// Debian's `promtool check metrics` on `text` (written to `file` first).
// promtool is a Go binary: under the kernel matrix's emulation it can take
// longer than the default 30 s to start, so it gets 120 s.
CmdResult promtool_check(const std::string& text, const std::string& file);

// Runs `fn` in a forked child that first joins `cgroup` (a directory) and
// drops to `uid` (if >= 0). The child's return string is sent back; the
// call waits for it up to timeout_ms (then kills the child).
struct Child {
  pid_t pid = -1;
  int result_fd = -1;
  // Waits for the result; "" plus a failed expectation on timeout/crash.
  std::string wait(int timeout_ms = 15000);
  ~Child();
};
std::unique_ptr<Child> fork_in(const std::string& cgroup, int uid,
                               const std::function<std::string()>& fn);
std::string run_in(const std::string& cgroup, int uid, const std::function<std::string()>& fn,
                   int timeout_ms = 15000);

// A long-running program started in a cgroup as a uid (a proxy).
struct Process {
  pid_t pid = -1;
  std::string log;  // its stdout/stderr file
  void stop();      // SIGTERM, then SIGKILL after 3 s
  ~Process() { stop(); }
};
std::unique_ptr<Process> spawn_in(const std::string& cgroup, int uid,
                                  const std::vector<std::string>& argv,
                                  const std::string& output_file);

// Waits until a TCP listener on `port` exists in this netns (/proc/net/tcp*),
// of `family` only if given (AF_INET, AF_INET6); with `udp`, a bound UDP
// socket (/proc/net/udp*) instead.
bool wait_listening(int port, int timeout_ms = 5000, int family = 0, bool udp = false);
// Reads JSON lines from a file, waiting until at least `n` exist.
std::vector<nlohmann::json> read_json_lines(const std::string& path, size_t n,
                                            int timeout_ms = 8000);

// A destination server outside the policed cgroup: echoes every byte back,
// closes its write side on EOF, and remembers the peers it saw. With
// SOCK_DGRAM it echoes each datagram to its sender.
class EchoServer {
 public:
  // "127.0.0.1:0", "[::1]:0"
  explicit EchoServer(const std::string& addr_port, int type = SOCK_STREAM);
  ~EchoServer();
  int port() const { return port_; }
  std::string addr() const;  // ADDR:PORT form for the CLI
  std::vector<std::string> peers();

 private:
  void loop();
  void datagram_loop();
  int fd_ = -1;
  int type_ = SOCK_STREAM;
  int port_ = 0;
  int family_ = 0;
  std::string host_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> peers_;
};

// Connects (blocking, with timeouts) to ADDR:PORT from the calling process,
// sends `payload`, half-closes, reads everything back. Returns the bytes read
// or "ERR:<errno text>".
std::string echo_roundtrip(const std::string& addr_port, const std::string& payload,
                           int family_override = 0);

// Sends `payload` as one UDP datagram to ADDR:PORT from the calling process
// (after connect() if `connected`, else with sendto) and waits up to 3 s for
// the echo. Returns the bytes read, or "ERR:<step> <errno text>".
std::string udp_roundtrip(const std::string& addr_port, const std::string& payload, bool connected,
                          int family_override = 0);

// Deterministic pseudo-random payload.
std::string make_payload(size_t n, uint32_t seed);

// Removes every cgroup and pin dir named connredir-test-<pid>-* (kills their
// processes, detaches with `connredir down`). Returns what it had to remove;
// `stale_only` limits it to pids that no longer run (leftovers of a killed
// earlier run). A non-empty answer at the end of our own run is a failure.
std::vector<std::string> sweep_leftovers(bool stale_only);

// A routable (non-loopback) address on `lo` of the test's namespace, removed
// again on destruction. A connect to a routable proxy address with no
// listener in the connecting namespace is redirected (the proxy may be in
// another namespace), so it reaches the SYN and fails there: what tests of
// failed redirected connects need, since a loopback proxy without its
// principal's listener is refused before the redirect.
struct LoAddress {
  explicit LoAddress(const std::string& cidr);
  ~LoAddress();
  bool ok = false;
  std::string cidr;
};

// Flag files: how a forked test process and the test tell each other that a
// step happened (the two share dir_, not memory).
bool exists(const std::string& path);
void touch(const std::string& path);

// Listening / connected TCP sockets for ADDR:PORT (-1 on failure, errno set).
int listen_on(const std::string& addr_port);
int connect_to(const std::string& addr_port);

// Polls `pred` every `poll_ms` until it holds or `timeout_ms` passed;
// returns its last value. For state that settles asynchronously (logs
// written, sockets closed), never as a timing assertion.
template <class F>
bool eventually(F pred, int timeout_ms, int poll_ms = 20) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!pred()) {
    if (std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(timeout_ms))
      return pred();
    usleep(static_cast<useconds_t>(poll_ms) * 1000);
  }
  return true;
}

// Per-test environment: cgroup tree + pin dir + `connredir up`.
class KernelTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // `connredir --pin-dir P ARGS...`; expects exit 0 unless told otherwise.
  CmdResult cli(const std::vector<std::string>& args, int expect_status = 0);
  nlohmann::json cli_json(const std::vector<std::string>& args);
  // Child cgroup (created on first use) under the test cgroup.
  std::string cg(const std::string& name);
  // Starts connredir-proxy in cgroup `name` as uid, listening on `listen`.
  Process& start_proxy(const std::string& name, int uid, const std::string& listen,
                       const std::vector<std::string>& extra = {});
  std::string proxy_log(const std::string& name) const { return dir_ + "/" + name + ".jsonl"; }
  uint32_t callout_id(const std::string& name);
  // Registers callout `name` (proxy at `proxy`, principal `proxy_uid`) and one
  // filter sending `cidr` port `port` to it, plus `filter_extra` arguments.
  void add_redirect(const std::string& name, const std::string& proxy, int proxy_uid,
                    const std::string& cidr, uint16_t port,
                    const std::vector<std::string>& filter_extra = {});
  // A callout `name` whose proxy is 127.0.0.1:PORT (principal `uid`, plus
  // `extra` callout options) and one filter for cidr/dst_port at `weight`.
  void add_vendor(const std::string& name, int port, int uid, const std::string& cidr,
                  uint16_t dst_port, int weight, const std::vector<std::string>& extra = {});
  // One echo round trip of `payload` to `addr` from cgroup app as `uid`.
  std::string app_roundtrip(const std::string& addr, const std::string& payload, int uid);
  // A probe "proxy": a process in cgroup vendor-a as `uid` accepts the one
  // connection of an app (cgroup app) that connects to `dst`, runs `fn` on
  // the accepted fd and returns its text. The app then sees EOF.
  std::string probe(const std::string& listen, int uid, const std::string& dst,
                    const std::function<std::string(int)>& fn);
  std::map<std::string, uint64_t> stats();

  std::string pin_dir_;
  std::string cgroup_;  // the test's cgroup (hooks attached here)
  std::string dir_;     // scratch directory for logs
  std::vector<std::string> children_;
  std::vector<std::unique_ptr<Process>> procs_;
};

}  // namespace connredir::test
