// The Winsock-compatible layer on the real kernel: WSAIoctl/WSPIoctl against
// genuinely redirected sockets, and a Windows-style proxy (wfp-style-proxy,
// written against <connredir/winsock.h> only) taking part in a real
// two-vendor chain next to connredir-proxy, in each completion mode.
#include <connredir/winsock.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <sstream>

#include "connredir/records.hpp"
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
       << WSAEINVAL << "/0 udp=0/0/0 connected=ERR/" << WSAEISCONN << "/0 plain=ERR/";
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

// A Windows-style UDP proxy for callout "wfp" at 127.0.0.1:15001 (or the
// wildcard at its port, with IP_PKTINFO): enables the WFP control messages,
// receives one datagram with WSARecvMsg, sends it onward with WSASendMsg and
// the records, relays the answer back. Reports what the context said.
std::string wfp_udp_proxy(bool wildcard) {
  WSADATA wd;
  if (WSAStartup(MAKEWORD(2, 2), &wd) != 0) return "WSAStartup";
  SOCKET s = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_storage self{};
  socklen_t slen =
      Address::parse(wildcard ? "0.0.0.0:15001" : "127.0.0.1:15001")->to_sockaddr(self);
  if (bind(static_cast<int>(s), reinterpret_cast<sockaddr*>(&self), slen) != 0) return "bind";
  DWORD on = TRUE;
  // A wildcard socket learns (and answers from) each datagram's address.
  if (wildcard &&
      setsockopt(s, IPPROTO_IP, IP_PKTINFO, reinterpret_cast<char*>(&on), sizeof on) != 0)
    return std::string("IP_PKTINFO: ") + strerror(errno);
  if (setsockopt(s, IPPROTO_IP, IP_WFP_REDIRECT_RECORDS, reinterpret_cast<char*>(&on), sizeof on) !=
          0 ||
      setsockopt(s, IPPROTO_IP, IP_WFP_REDIRECT_CONTEXT, reinterpret_cast<char*>(&on), sizeof on) !=
          0)
    return std::string("setsockopt: ") + strerror(errno);
  GUID id = WSAID_WSARECVMSG;
  LPFN_WSARECVMSG recv_msg = nullptr;
  DWORD bytes = 0;
  if (WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, sizeof id, &recv_msg, sizeof recv_msg,
               &bytes, nullptr, nullptr) != 0)
    return "SIO_GET_EXTENSION_FUNCTION_POINTER: " + std::to_string(WSAGetLastError());
  timeval tv{5, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char data[512];
  alignas(WSACMSGHDR) char control[1024];
  sockaddr_storage from{};
  WSABUF buf{sizeof data, data};
  WSAMSG m{reinterpret_cast<sockaddr*>(&from), sizeof from, &buf, 1, {sizeof control, control}, 0};
  DWORD n = 0;
  if (recv_msg(s, &m, &n, nullptr, nullptr) != 0)
    return "WSARecvMsg: " + std::to_string(WSAGetLastError());
  std::vector<uint8_t> records, context;
  in_pktinfo pkt{};
  for (WSACMSGHDR* c = WSA_CMSG_FIRSTHDR(&m); c; c = WSA_CMSG_NXTHDR(&m, c)) {
    const auto* p = WSA_CMSG_DATA(c);
    std::vector<uint8_t> v(p, p + (c->cmsg_len - WSA_CMSG_LEN(0)));
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) std::memcpy(&pkt, p, sizeof pkt);
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_WFP_REDIRECT_RECORDS) records = v;
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_WFP_REDIRECT_CONTEXT) context = v;
  }
  auto ctx = decode_context(context);
  if (records.empty() || !ctx)
    return "no control messages (flags " + std::to_string(m.dwFlags) + ")";
  // Onward, Windows-style: an unconnected socket, records as control data.
  SOCKET out = socket(AF_INET, SOCK_DGRAM, 0);
  setsockopt(out, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_storage ds{};
  socklen_t dlen = ctx->orig_dst.to_sockaddr(ds);
  alignas(WSACMSGHDR) char sc[WSA_CMSG_SPACE(CONNREDIR_WS_RECORDS_MAX)] = {};
  auto* c = reinterpret_cast<WSACMSGHDR*>(sc);
  c->cmsg_len = WSA_CMSG_LEN(records.size());
  c->cmsg_level = IPPROTO_IP;
  c->cmsg_type = IP_WFP_REDIRECT_RECORDS;
  std::memcpy(WSA_CMSG_DATA(c), records.data(), records.size());
  WSABUF sb{n, data};
  WSAMSG sm{reinterpret_cast<sockaddr*>(&ds),
            static_cast<INT>(dlen),
            &sb,
            1,
            {static_cast<ULONG>(WSA_CMSG_SPACE(records.size())), sc},
            0};
  DWORD sent = 0;
  if (WSASendMsg(out, &sm, 0, &sent, nullptr, nullptr) != 0)
    return "WSASendMsg: " + std::to_string(WSAGetLastError()) + " " +
           connredir_ws_last_error_message();
  char reply[512];
  ssize_t r = recv(static_cast<int>(out), reply, sizeof reply, 0);
  if (r < 0) return std::string("recv onward: ") + strerror(errno);
  // The answer, from the address the client sent to.
  iovec riov{reply, static_cast<size_t>(r)};
  alignas(cmsghdr) char rc[CMSG_SPACE(sizeof(in_pktinfo))] = {};
  msghdr rm{};
  rm.msg_name = &from;
  rm.msg_namelen = static_cast<socklen_t>(m.namelen);
  rm.msg_iov = &riov;
  rm.msg_iovlen = 1;
  if (wildcard) {
    in_pktinfo src{};
    src.ipi_spec_dst = pkt.ipi_addr;
    auto* h = reinterpret_cast<cmsghdr*>(rc);
    h->cmsg_level = IPPROTO_IP;
    h->cmsg_type = IP_PKTINFO;
    h->cmsg_len = CMSG_LEN(sizeof src);
    std::memcpy(CMSG_DATA(h), &src, sizeof src);
    rm.msg_control = rc;
    rm.msg_controllen = sizeof rc;
  }
  sendmsg(static_cast<int>(s), &rm, 0);
  closesocket(out);
  closesocket(s);
  return "orig_dst=" + ctx->orig_dst.to_string() + " hop=" + std::to_string(ctx->hop) +
         " user=" + std::string(ctx->user.begin(), ctx->user.end()) +
         " sent=" + std::to_string(sent);
}

class WinsockUdp : public Winsock {
 protected:
  // Application -> "wfp" (wfp_udp_proxy) -> vendor-b (connredir-proxy) ->
  // destination, connected or unconnected; both hops in the chain.
  void udp_chain(bool unconnected) {
    EchoServer dst("127.0.0.1:0", SOCK_DGRAM);
    cli({"callout", "add", "wfp", "--proxy", "127.0.0.1:15001", "--proxy-uid", "4001"});
    cli({"callout", "add", "vendor-b", "--proxy", "127.0.0.1:15002", "--proxy-uid", "4002"});
    const uint32_t w = callout_id("wfp"), b = callout_id("vendor-b");
    cli({"filter", "add", "--callout", "wfp", "--proto", "udp", "--dst", "127.0.0.1/32", "--port",
         std::to_string(dst.port()), "--weight", "200", "--context", "wfp-udp"});
    cli({"filter", "add", "--callout", "vendor-b", "--proto", "udp", "--dst", "127.0.0.0/8",
         "--weight", "100"});
    start_proxy("vendor-b", 4002, "127.0.0.1:15002", {"--udp", "--udp-idle-timeout-ms", "300"});
    auto wfp = fork_in(cg("wfp"), 4001, [unconnected] { return wfp_udp_proxy(unconnected); });
    ASSERT_TRUE(eventually(
        [&] { return read_file("/proc/net/udp").find(":3A99 ") != std::string::npos; }, 3000));
    std::string addr = dst.addr();
    EXPECT_EQ(
        run_in(cg("app"), 1000, [&] { return udp_roundtrip(addr, "wsa-dgram", !unconnected); }),
        "wsa-dgram");
    EXPECT_EQ(wfp->wait(), "orig_dst=" + addr + " hop=1 user=wfp-udp sent=9");
    auto lines = read_json_lines(proxy_log("vendor-b"), 1);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0]["chain"].size(), 2u) << lines[0].dump();
    EXPECT_EQ(lines[0]["chain"][0]["callout_id"], w) << lines[0].dump();
    EXPECT_EQ(lines[0]["chain"][1]["callout_id"], b) << lines[0].dump();
    EXPECT_EQ(lines[0]["result"], "ok") << lines[0].dump();
  }
};

// UDP as WFP does it: a Windows-style vendor enables IP_WFP_REDIRECT_RECORDS
// and _CONTEXT with setsockopt, gets WSARecvMsg through
// SIO_GET_EXTENSION_FUNCTION_POINTER, receives the records and context as
// control messages with the datagram, and sends onward with WSASendMsg and
// an IP_WFP_REDIRECT_RECORDS control message: the flow goes on to the next
// vendor (connredir-proxy --udp), which sees the two-hop chain.
TEST_F(WinsockUdp, UdpControlMessagesCarryRecordsAndContextThroughAChain) { udp_chain(false); }

// The same for an unconnected client: its sends reach the proxy's wildcard
// socket at a pool address, which names the flow (IP_PKTINFO).
TEST_F(WinsockUdp, UdpControlMessagesOnAWildcardSocketForUnconnectedSends) { udp_chain(true); }

}  // namespace
}  // namespace connredir::test
