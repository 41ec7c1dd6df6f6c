// The example proxies of examples/ (C, C++, Python, Go) are what vendors copy,
// so each must really work: each runs here as vendor-a of a two-vendor chain
// in front of connredir-proxy (vendor-b), relays a few hundred KB byte-exact,
// logs the chain it saw, and propagates the records so vendor-b sees
// [vendor-a, vendor-b] and neither vendor sees the flow twice. A connection
// made to the example directly (not redirected) must be refused, not relayed.
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "harness.hpp"

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
constexpr int kExampleUid = 4001;
constexpr int kProxyUid = 4002;
// The system interpreter: the example runs as an unprivileged uid, which
// cannot read an interpreter installed under root's home (pyenv and the like).
constexpr const char* kPython = "/usr/bin/python3";

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Examples : public KernelTest {
 protected:
  void example_in_a_chain(const std::vector<std::string>& command) {
    ASSERT_EQ(access(command[0].c_str(), X_OK), 0)
        << command[0] << " is missing: build it (cmake --build build; the Go example needs "
        << "golang-go, scripts/install-deps.sh installs it)";
    for (size_t i = 1; i < command.size(); i++)
      ASSERT_EQ(access(command[i].c_str(), R_OK), 0) << command[i] << " is missing";
    EchoServer dst("127.0.0.1:0");
    // vendor-b (connredir-proxy) registered first and with the lower weight:
    // the example (vendor-a) must come first because of its weight.
    cli({"callout", "add", "vendor-b", "--proxy", "127.0.0.1:15002", "--proxy-uid",
         std::to_string(kProxyUid)});
    cli({"filter", "add", "--callout", "vendor-b", "--dst", "127.0.0.0/8", "--port",
         std::to_string(dst.port()), "--weight", "100"});
    cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--proxy-uid",
         std::to_string(kExampleUid)});
    cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port",
         std::to_string(dst.port()), "--weight", "200"});
    const uint32_t a = callout_id("vendor-a"), b = callout_id("vendor-b");
    start_proxy("vendor-b", kProxyUid, "127.0.0.1:15002");

    const std::string log = dir_ + "/example.jsonl", out = dir_ + "/example.out";
    auto argv = command;
    argv.insert(argv.end(), {"--listen", "127.0.0.1:15001", "--log", log});
    procs_.push_back(spawn_in(cg("vendor-a"), kExampleUid, argv, out));
    ASSERT_TRUE(wait_listening(15001)) << "example not listening; output:\n" << slurp(out);

    const std::string payload = make_payload(300000, 31), addr = dst.addr();
    std::string got = run_in(cg("app"), kAppUid, [&] { return echo_roundtrip(addr, payload); });
    EXPECT_EQ(got.size(), payload.size()) << got.substr(0, 200) << "\nexample output:\n"
                                          << slurp(out);
    EXPECT_TRUE(got == payload) << "bytes differ";

    // The example: one flow, chain [vendor-a], its own callout, the bytes.
    auto lines = read_json_lines(log, 1);
    ASSERT_EQ(lines.size(), 1u) << "example log:\n" << slurp(log) << "output:\n" << slurp(out);
    auto& l = lines[0];
    EXPECT_EQ(l.value("result", ""), "ok") << l.dump();
    ASSERT_EQ(l["chain"].size(), 1u) << l.dump();
    EXPECT_EQ(l["chain"][0].value("callout_id", 0u), a) << l.dump();
    EXPECT_EQ(l["chain"][0].value("dst", ""), addr) << l.dump();
    EXPECT_EQ(l.value("callout_id", 0u), a) << l.dump();
    EXPECT_EQ(l.value("hop", 0u), 1u) << l.dump();
    EXPECT_EQ(l.value("orig_dst", ""), addr) << l.dump();
    EXPECT_EQ(l.value("bytes_up", 0ull), payload.size()) << l.dump();
    EXPECT_EQ(l.value("bytes_down", 0ull), payload.size()) << l.dump();
    EXPECT_NE(l.value("flow_id", 0ull), 0ull) << l.dump();

    // connredir-proxy: the records the example set arrived, so the chain
    // continued as [vendor-a, vendor-b] (same flow), not a new chain.
    auto pl = read_json_lines(proxy_log("vendor-b"), 1);
    ASSERT_EQ(pl.size(), 1u);
    EXPECT_EQ(pl[0].value("result", ""), "ok") << pl[0].dump();
    ASSERT_EQ(pl[0]["chain"].size(), 2u) << pl[0].dump();
    EXPECT_EQ(pl[0]["chain"][0].value("callout_id", 0u), a) << pl[0].dump();
    EXPECT_EQ(pl[0]["chain"][1].value("callout_id", 0u), b) << pl[0].dump();
    EXPECT_EQ(pl[0].value("flow_id", 0ull), l.value("flow_id", 0ull)) << pl[0].dump();
    EXPECT_EQ(pl[0].value("bytes_up", 0ull), payload.size()) << pl[0].dump();

    // Each vendor saw the flow exactly once; the destination one connection.
    EXPECT_EQ(read_json_lines(log, 2, 300).size(), 1u) << slurp(log);
    EXPECT_EQ(read_json_lines(proxy_log("vendor-b"), 2, 300).size(), 1u);
    EXPECT_EQ(dst.peers().size(), 1u);

    // A connection made straight to the example (this process is outside
    // the policed cgroup, so nothing redirects it) has no records: refused
    // and logged, never relayed.
    int fd = connect_to("127.0.0.1:15001");
    ASSERT_GE(fd, 0);
    char c;
    EXPECT_LE(read(fd, &c, 1), 0) << "a direct connection must be closed";
    close(fd);
    lines = read_json_lines(log, 2);
    ASSERT_EQ(lines.size(), 2u) << slurp(log);
    EXPECT_NE(lines[1].value("result", "ok"), "ok") << lines[1].dump();
    // "query_flow failed: not redirected by connredir" (Python, Go), or the
    // library's own explanation (C, C++).
    const std::string why = lines[1].value("result", "");
    EXPECT_TRUE(why.find("records") != std::string::npos ||
                why.find("not redirected") != std::string::npos)
        << lines[1].dump();
    EXPECT_EQ(dst.peers().size(), 1u);
  }
};

TEST_F(Examples, CExampleIsVendorAInAChain) { example_in_a_chain({CONNREDIR_EXAMPLE_C_PATH}); }

TEST_F(Examples, CppExampleIsVendorAInAChain) { example_in_a_chain({CONNREDIR_EXAMPLE_CPP_PATH}); }

TEST_F(Examples, PythonExampleIsVendorAInAChain) {
  example_in_a_chain({kPython, CONNREDIR_EXAMPLE_PY_PATH});
}

// Fails (never skips) when the Go toolchain was missing at build time.
TEST_F(Examples, GoExampleIsVendorAInAChain) { example_in_a_chain({CONNREDIR_EXAMPLE_GO_PATH}); }

}  // namespace
}  // namespace connredir::test
