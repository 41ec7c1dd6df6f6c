// The Winsock-compatible layer on the real kernel: WSAIoctl/WSPIoctl against
// genuinely redirected sockets, and a Windows-style proxy (wfp-style-proxy,
// written against <connredir/winsock.h> only) taking part in a real
// two-vendor chain next to connredir-proxy, in each completion mode.
#include <connredir/winsock.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <sstream>

#include "harness.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::test {
namespace {

constexpr int kProxyUid = 4001;

class Winsock : public KernelTest {
 protected:
  void setup_vendor(const EchoServer& dst) {
    add_redirect("vendor-a", "127.0.0.1:15001", kProxyUid, "127.0.0.1/32", dst.port());
  }
};

// "rc/error/bytes" of one WSAIoctl.
std::string ioctl_str(SOCKET s, DWORD code, void* in, DWORD cb_in, void* out, DWORD cb_out) {
  DWORD bytes = 12345;
  int rc = WSAIoctl(s, code, in, cb_in, out, cb_out, &bytes, nullptr, nullptr);
  std::ostringstream o;
  o << (rc == 0 ? "0" : "ERR") << "/" << (rc == 0 ? 0 : WSAGetLastError()) << "/" << bytes;
  return o.str();
}

TEST_F(Winsock, SynchronousIoctlsOnARealRedirectedSocket) {
  EchoServer dst("127.0.0.1:0");
  setup_vendor(dst);
  std::string r = probe("127.0.0.1:15001", kProxyUid, dst.addr(), [&](int c) {
    std::ostringstream o;
    SOCKET s = static_cast<SOCKET>(c);
    std::vector<uint8_t> rec(CONNREDIR_WS_RECORDS_MAX), ctx(CONNREDIR_WS_CONTEXT_MAX);
    o << "records="
      << ioctl_str(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0, rec.data(),
                   static_cast<DWORD>(rec.size()));
    o << " context="
      << ioctl_str(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, nullptr, 0, ctx.data(),
                   static_cast<DWORD>(ctx.size()));
    std::vector<uint8_t> small(sizeof(connredir_records) - 1);
    o << " small="
      << ioctl_str(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0, small.data(),
                   static_cast<DWORD>(small.size()))
      << " needed=" << connredir_ws_required_size();
    UINT64 handle = 0;
    uint64_t cookie = 0;
    socklen_t cl = sizeof cookie;
    getsockopt(c, SOL_SOCKET, SO_COOKIE, &cookie, &cl);
    o << " endpoint="
      << ioctl_str(s, SIO_QUERY_WFP_ALE_ENDPOINT_HANDLE, nullptr, 0, &handle, sizeof handle)
      << " cookie_match=" << (handle == cookie && cookie != 0);
    // SET: genuine on a fresh socket; altered; output buffer not allowed;
    // UDP; connected.
    SOCKET out = static_cast<SOCKET>(socket(AF_INET, SOCK_STREAM, 0));
    o << " set="
      << ioctl_str(out, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(),
                   sizeof(connredir_records), nullptr, 0);
    auto bad = rec;
    bad[100] ^= 0x40;
    SOCKET out2 = static_cast<SOCKET>(socket(AF_INET, SOCK_STREAM, 0));
    o << " altered="
      << ioctl_str(out2, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, bad.data(),
                   sizeof(connredir_records), nullptr, 0);
    uint8_t junk[8];
    o << " outbuf="
      << ioctl_str(out2, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(),
                   sizeof(connredir_records), junk, sizeof junk);
    SOCKET udp = static_cast<SOCKET>(socket(AF_INET, SOCK_DGRAM, 0));
    o << " udp="
      << ioctl_str(udp, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(),
                   sizeof(connredir_records), nullptr, 0);
    int cc = connect_to("127.0.0.1:15001");
    o << " connected="
      << ioctl_str(static_cast<SOCKET>(cc), SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(),
                   sizeof(connredir_records), nullptr, 0);
    // The self-connection is accepted without a redirect: not found.
    o << " plain="
      << ioctl_str(static_cast<SOCKET>(cc), SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0,
                   rec.data(), static_cast<DWORD>(rec.size()));
    closesocket(out);
    closesocket(out2);
    closesocket(udp);
    closesocket(static_cast<SOCKET>(cc));
    return o.str();
  });
  std::ostringstream want;
  want << "records=0/0/" << sizeof(connredir_records) << " context=0/0/" << CONNREDIR_CONTEXT_SIZE
       << " small=ERR/" << WSAEINVAL << "/0 needed=" << sizeof(connredir_records)
       << " endpoint=0/0/8 cookie_match=1 set=0/0/0 altered=ERR/" << WSAEINVAL << "/0 outbuf=ERR/"
       << WSAEINVAL << "/0 udp=ERR/" << WSAEOPNOTSUPP << "/0 connected=ERR/" << WSAEISCONN
       << "/0 plain=ERR/";
  // The connected socket is a client socket: the kernel answers ENOENT.
  want << ERROR_NOT_FOUND << "/0";
  EXPECT_EQ(r, want.str());
}

TEST_F(Winsock, UnauthorizedCallerGetsWSAEACCES) {
  EchoServer dst("127.0.0.1:0");
  setup_vendor(dst);
  // Listen as root (a stranger may not bind a proxy address), then become
  // the stranger before touching the accepted socket.
  std::string r = probe("127.0.0.1:15001", -1, dst.addr(), [&](int c) {
    if (setgid(4999) != 0 || setuid(4999) != 0) return std::string("setuid");
    std::vector<uint8_t> rec(CONNREDIR_WS_RECORDS_MAX);
    return ioctl_str(static_cast<SOCKET>(c), SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0,
                     rec.data(), static_cast<DWORD>(rec.size()));
  });
  EXPECT_EQ(r, "ERR/" + std::to_string(WSAEACCES) + "/0");
}

TEST_F(Winsock, OverlappedQueryAndWSPIoctlOnRealSockets) {
  EchoServer dst("127.0.0.1:0");
  setup_vendor(dst);
  std::string r = probe("127.0.0.1:15001", kProxyUid, dst.addr(), [&](int c) {
    std::ostringstream o;
    SOCKET s = static_cast<SOCKET>(c);
    std::vector<uint8_t> rec(CONNREDIR_WS_RECORDS_MAX);
    WSAOVERLAPPED ov{};
    ov.hEvent = WSACreateEvent();
    DWORD bytes = 0;
    int rc = WSAIoctl(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0, rec.data(),
                      static_cast<DWORD>(rec.size()), &bytes, &ov, nullptr);
    o << "start=" << (rc == 0 ? 0 : WSAGetLastError());
    DWORD w = WSAWaitForMultipleEvents(1, &ov.hEvent, TRUE, 5000, FALSE);
    DWORD done = 0, flags = 0;
    BOOL ok = WSAGetOverlappedResult(s, &ov, &done, FALSE, &flags);
    o << " wait=" << w << " ok=" << ok << " bytes=" << done;
    WSACloseEvent(ov.hEvent);
    // WSPIoctl reports through lpErrno.
    WSATHREADID tid{};
    int err = 0;
    WPUOpenCurrentThread(&tid, &err);
    std::vector<uint8_t> small(10);
    rc = WSPIoctl(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, nullptr, 0, small.data(),
                  static_cast<DWORD>(small.size()), &bytes, nullptr, nullptr, &tid, &err);
    o << " wsp=" << rc << "/" << err;
    WPUCloseThread(&tid, &err);
    return o.str();
  });
  EXPECT_EQ(r, "start=" + std::to_string(WSA_IO_PENDING) +
                   " wait=0 ok=1 bytes=" + std::to_string(sizeof(connredir_records)) + " wsp=-1/" +
                   std::to_string(WSAEINVAL));
}

// wfp-style-proxy in each completion mode, on either side of connredir-proxy.
TEST_F(Winsock, WindowsStyleProxyTakesPartInATwoVendorChain) {
  EchoServer dst("127.0.0.1:0");
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--proxy-uid", "4001"});
  cli({"callout", "add", "wfp", "--proxy", "127.0.0.1:15002", "--proxy-uid", "4002"});
  uint32_t a = callout_id("vendor-a"), w = callout_id("wfp");
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port",
       std::to_string(dst.port()), "--weight", "200"});
  auto wfp_filter =
      cli({"filter", "add", "--callout", "wfp", "--dst", "127.0.0.0/8", "--weight", "100"});
  start_proxy("vendor-a", 4001, "127.0.0.1:15001");
  size_t flows = 0;
  for (std::string mode : {"sync", "event", "apc"}) {
    std::string log = dir_ + "/wfp-" + mode + ".jsonl";
    procs_.push_back(spawn_in(
        cg("wfp"), 4002,
        {CONNREDIR_WFP_PROXY_PATH, "--listen", "127.0.0.1:15002", "--log", log, "--mode", mode},
        dir_ + "/wfp-" + mode + ".out"));
    ASSERT_TRUE(wait_listening(15002)) << mode;
    std::string payload = make_payload(200000, 21);
    std::string addr = dst.addr();
    std::string got = run_in(cg("app"), 1000, [&] { return echo_roundtrip(addr, payload); });
    EXPECT_TRUE(got == payload) << mode << ": " << got.substr(0, 80);
    auto lines = read_json_lines(log, 1);
    ASSERT_EQ(lines.size(), 1u) << mode;
    EXPECT_EQ(lines[0].value("result", ""), "ok") << lines[0].dump();
    EXPECT_EQ(lines[0]["chain"], nlohmann::json::array({a, w})) << lines[0].dump();
    EXPECT_EQ(lines[0].value("orig_dst", ""), addr);
    EXPECT_EQ(lines[0].value("bytes_up", 0ull), payload.size());
    procs_.back()->stop();
    flows++;
    EXPECT_EQ(read_json_lines(proxy_log("vendor-a"), flows).size(), flows);
  }
  EXPECT_EQ(dst.peers().size(), flows);
}

}  // namespace
}  // namespace connredir::test
