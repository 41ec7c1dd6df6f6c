// WSARecvMsg / WSASendMsg with WFP's UDP control messages, the setsockopt()
// that enables them and SIO_GET_EXTENSION_FUNCTION_POINTER, with the flow
// injected through the Backend seam, over real loopback UDP sockets.
#include <netinet/in.h>

#include <cstring>
#include <string>
#include <vector>

#include "fake_backend.hpp"

namespace wstest {
namespace {

class Msg : public WinsockTest {
 protected:
  // A UDP socket bound to 127.0.0.1:0; its address in *addr.
  SOCKET udp_bound(sockaddr_in* addr) {
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    fds.push_back(fd);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t len = sizeof a;
    EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
    if (addr) *addr = a;
    timeval tv{3, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return static_cast<SOCKET>(fd);
  }
  int enable(SOCKET s, int name, DWORD on = TRUE) {
    return setsockopt(s, IPPROTO_IP, name, reinterpret_cast<const char*>(&on), sizeof on);
  }
  // Receives one datagram with WSARecvMsg into a control buffer of `ctl`
  // bytes; returns "payload|records|context|flags".
  std::string receive(SOCKET s, size_t ctl) {
    char data[256];
    std::vector<char> control(ctl);
    sockaddr_storage from{};
    WSABUF b{sizeof data, data};
    WSAMSG m{reinterpret_cast<sockaddr*>(&from),
             sizeof from,
             &b,
             1,
             {static_cast<ULONG>(control.size()), control.data()},
             0};
    DWORD n = 0;
    if (WSARecvMsg(s, &m, &n, nullptr, nullptr) != 0)
      return "ERR " + std::to_string(WSAGetLastError());
    std::string rec = "-", ctx = "-";
    for (WSACMSGHDR* c = WSA_CMSG_FIRSTHDR(&m); c; c = WSA_CMSG_NXTHDR(&m, c)) {
      std::string v(reinterpret_cast<char*>(WSA_CMSG_DATA(c)), c->cmsg_len - WSA_CMSG_LEN(0));
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_WFP_REDIRECT_RECORDS) rec = v;
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_WFP_REDIRECT_CONTEXT) ctx = v;
    }
    return std::string(data, n) + "|" + rec + "|" + ctx + "|" +
           ((m.dwFlags & MSG_CTRUNC) ? "ctrunc" : "0");
  }
  void send_to(SOCKET from, const sockaddr_in& to, const char* payload) {
    ASSERT_EQ(::sendto(static_cast<int>(from), payload, strlen(payload), 0,
                       reinterpret_cast<const sockaddr*>(&to), sizeof to),
              static_cast<ssize_t>(strlen(payload)));
  }
};

std::vector<uint8_t> bytes(const char* s) { return {s, s + strlen(s)}; }

TEST_F(Msg, ConstantsAreWindowsValues) {
  EXPECT_EQ(IP_WFP_REDIRECT_RECORDS, 60);
  EXPECT_EQ(IP_WFP_REDIRECT_CONTEXT, 70);
  EXPECT_EQ(SIO_GET_EXTENSION_FUNCTION_POINTER, 0xC8000006u);
}

TEST_F(Msg, ExtensionPointerIsWSARecvMsgForItsGuidOnly) {
  SOCKET s = udp_bound(nullptr);
  GUID id = WSAID_WSARECVMSG;
  LPFN_WSARECVMSG fn = nullptr;
  DWORD n = 0;
  ASSERT_EQ(WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, sizeof id, &fn, sizeof fn, &n,
                     nullptr, nullptr),
            0);
  EXPECT_EQ(fn, &WSARecvMsg);
  EXPECT_EQ(n, sizeof fn);
  GUID other = id;
  other.Data1 ^= 1;
  EXPECT_EQ(WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &other, sizeof other, &fn, sizeof fn,
                     &n, nullptr, nullptr),
            SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
  char small[2];
  EXPECT_EQ(WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, sizeof id, small, sizeof small, &n,
                     nullptr, nullptr),
            SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEFAULT);
}

TEST_F(Msg, ControlMessagesOnlyWhenEnabledAndTheFlowIsKnown) {
  sockaddr_in pa{};
  SOCKET proxy = udp_bound(&pa);
  SOCKET client = udp_bound(nullptr);
  fake.records = bytes("RECORDS");
  fake.context = bytes("CONTEXT");
  send_to(client, pa, "one");
  EXPECT_EQ(receive(proxy, 512), "one|-|-|0") << "not enabled: none";
  ASSERT_EQ(enable(proxy, IP_WFP_REDIRECT_RECORDS), 0);
  send_to(client, pa, "two");
  EXPECT_EQ(receive(proxy, 512), "two|RECORDS|-|0");
  ASSERT_EQ(enable(proxy, IP_WFP_REDIRECT_CONTEXT), 0);
  send_to(client, pa, "three");
  EXPECT_EQ(receive(proxy, 512), "three|RECORDS|CONTEXT|0");
  send_to(client, pa, "four");
  EXPECT_EQ(receive(proxy, WSA_CMSG_SPACE(7)), "four|RECORDS|-|ctrunc") << "room for one";
  fake.records = connredir::fail(ENOENT, "not redirected");
  send_to(client, pa, "five");
  EXPECT_EQ(receive(proxy, 512), "five|-|-|0") << "a datagram no callout redirected";
  ASSERT_EQ(enable(proxy, IP_WFP_REDIRECT_RECORDS, FALSE), 0);
  ASSERT_EQ(enable(proxy, IP_WFP_REDIRECT_CONTEXT, FALSE), 0);
  fake.records = bytes("RECORDS");
  send_to(client, pa, "six");
  EXPECT_EQ(receive(proxy, 512), "six|-|-|0") << "disabled again";
}

TEST_F(Msg, EnablingIsForUdpSocketsAndOtherOptionsReachTheKernel) {
  SOCKET tcp = tcp_socket();
  errno = 0;
  EXPECT_EQ(enable(tcp, IP_WFP_REDIRECT_RECORDS), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  int one = 1;
  EXPECT_EQ(setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
  int got = 0;
  socklen_t len = sizeof got;
  ASSERT_EQ(getsockopt(static_cast<int>(tcp), SOL_SOCKET, SO_REUSEADDR, &got, &len), 0);
  EXPECT_EQ(got, 1);
}

TEST_F(Msg, SendMsgAttachesTheRecordsAndConnectsAnUnconnectedSocket) {
  sockaddr_in da{};
  SOCKET dst = udp_bound(&da);
  SOCKET out = udp_bound(nullptr);
  const std::vector<uint8_t> blob = bytes("THE-RECORDS-BLOB");
  std::vector<char> ctl(WSA_CMSG_SPACE(blob.size()));
  auto* c = reinterpret_cast<WSACMSGHDR*>(ctl.data());
  c->cmsg_len = WSA_CMSG_LEN(blob.size());
  c->cmsg_level = IPPROTO_IP;
  c->cmsg_type = IP_WFP_REDIRECT_RECORDS;
  std::memcpy(WSA_CMSG_DATA(c), blob.data(), blob.size());
  char payload[] = "datagram";
  WSABUF b{8, payload};
  WSAMSG m{reinterpret_cast<sockaddr*>(&da),
           sizeof da,
           &b,
           1,
           {static_cast<ULONG>(ctl.size()), ctl.data()},
           0};
  DWORD sent = 0;
  ASSERT_EQ(WSASendMsg(out, &m, 0, &sent, nullptr, nullptr), 0) << WSAGetLastError();
  EXPECT_EQ(sent, 8u);
  EXPECT_EQ(fake.last_set, blob);
  sockaddr_in peer{};
  socklen_t plen = sizeof peer;
  ASSERT_EQ(getpeername(static_cast<int>(out), reinterpret_cast<sockaddr*>(&peer), &plen), 0)
      << "connected, so connredir classifies it";
  EXPECT_EQ(peer.sin_port, da.sin_port);
  char got[16] = {};
  EXPECT_EQ(::recv(static_cast<int>(dst), got, sizeof got, 0), 8);
  EXPECT_STREQ(got, "datagram");

  // A refused blob fails the send, which never happens.
  fake.set_result = connredir::fail(EINVAL, "forged");
  EXPECT_EQ(WSASendMsg(out, &m, 0, &sent, nullptr, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
  // The context is received, never sent.
  c->cmsg_type = IP_WFP_REDIRECT_CONTEXT;
  fake.set_result = {};
  EXPECT_EQ(WSASendMsg(out, &m, 0, &sent, nullptr, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
}

TEST_F(Msg, OverlappedAndBadArgumentsAreRefused) {
  SOCKET s = udp_bound(nullptr);
  WSAOVERLAPPED ov{};
  WSAMSG m{};
  DWORD n = 0;
  EXPECT_EQ(WSARecvMsg(s, &m, &n, &ov, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEOPNOTSUPP);
  EXPECT_EQ(WSASendMsg(s, &m, 0, &n, &ov, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEOPNOTSUPP);
  EXPECT_EQ(WSARecvMsg(s, nullptr, &n, nullptr, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEFAULT);
  EXPECT_EQ(WSARecvMsg(static_cast<SOCKET>(INT_MAX) + 5, &m, &n, nullptr, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAENOTSOCK);
}

}  // namespace
}  // namespace wstest
