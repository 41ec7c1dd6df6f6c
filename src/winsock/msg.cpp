// WSARecvMsg / WSASendMsg with WFP's UDP control messages, and the
// setsockopt() that enables them (docs/WINSOCK.md, "UDP").
//
// WFP hands a UDP proxy each redirected flow's records and context as
// control data of the datagrams it receives (IP_WFP_REDIRECT_RECORDS = 60,
// IP_WFP_REDIRECT_CONTEXT = 70, after the proxy enabled them with
// setsockopt), and takes the records back as control data of WSASendMsg. On
// Linux the flow is selected by its client address (libconnredir
// udp_flow()), so WSARecvMsg receives the datagram, then asks for the flow of
// its source and appends the two messages.
#define CONNREDIR_WS_NO_SETSOCKOPT_MACRO 1  // this file defines the function

#include <errno.h>
#include <sys/socket.h>

#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "backend.hpp"
#include "connredir/address.hpp"
#include "connredir/client.hpp"
#include "state.hpp"

namespace connredir::winsock {
namespace {

// Which control messages a socket asked for. Keyed by fd and checked against
// the socket's identity, so a reused descriptor starts with none.
struct Wants {
  Identity id;
  bool records = false;
  bool context = false;
};

std::mutex g_mu;
std::unordered_map<int, Wants> g_wants;

Wants wants_of(int fd, const Identity& id) {
  std::lock_guard lk(g_mu);
  auto it = g_wants.find(fd);
  if (it == g_wants.end() || !(it->second.id == id)) return {};
  return it->second;
}

int sock_int(int fd, int level, int name) {
  int v = 0;
  socklen_t len = sizeof v;
  return getsockopt(fd, level, name, &v, &len) == 0 ? v : -1;
}

bool is_wfp_level(int level) { return level == IPPROTO_IP || level == IPPROTO_IPV6; }

int fail_with(int wsa, std::string message) {
  set_last_error(wsa, std::move(message));
  return SOCKET_ERROR;
}

// Appends one control message after `used` bytes of the caller's control
// buffer. False if it does not fit.
bool append_cmsg(WSAMSG* m, size_t* used, int level, int type, const std::vector<uint8_t>& data) {
  const size_t space = CMSG_SPACE(data.size());
  if (*used + space > m->Control.len) return false;
  auto* c = reinterpret_cast<WSACMSGHDR*>(m->Control.buf + *used);
  std::memset(c, 0, space);
  c->cmsg_len = CMSG_LEN(data.size());
  c->cmsg_level = level;
  c->cmsg_type = type;
  std::memcpy(CMSG_DATA(c), data.data(), data.size());
  *used += space;
  return true;
}

std::vector<iovec> iovecs(const WSAMSG* m) {
  std::vector<iovec> iov(m->dwBufferCount);
  for (ULONG i = 0; i < m->dwBufferCount; ++i)
    iov[i] = iovec{m->lpBuffers[i].buf, m->lpBuffers[i].len};
  return iov;
}

}  // namespace
}  // namespace connredir::winsock

using namespace connredir::winsock;

int connredir_ws_setsockopt(SOCKET s, int level, int optname, const void* optval,
                            socklen_t optlen) {
  if (!is_wfp_level(level) ||
      (optname != IP_WFP_REDIRECT_RECORDS && optname != IP_WFP_REDIRECT_CONTEXT))
    return ::setsockopt(static_cast<int>(s), level, optname, optval, optlen);
  Identity id;
  const int fd = socket_fd(s, &id);
  if (fd < 0) {
    errno = ENOTSOCK;
    return -1;
  }
  if (optval == nullptr || optlen < static_cast<socklen_t>(sizeof(DWORD))) {
    errno = EINVAL;
    return -1;
  }
  if (sock_int(fd, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM) {
    errno = EOPNOTSUPP;  // as Windows: the control messages are UDP's
    return -1;
  }
  DWORD on = 0;
  std::memcpy(&on, optval, sizeof on);
  std::lock_guard lk(g_mu);
  Wants& w = g_wants[fd];
  if (!(w.id == id)) w = Wants{id};
  (optname == IP_WFP_REDIRECT_RECORDS ? w.records : w.context) = on != 0;
  return 0;
}

INT WSAAPI WSARecvMsg(SOCKET s, LPWSAMSG lpMsg, LPDWORD lpdwNumberOfBytesRecvd,
                      LPWSAOVERLAPPED lpOverlapped,
                      LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine) {
  Identity id;
  const int fd = socket_fd(s, &id);
  if (fd < 0) return fail_with(WSAENOTSOCK, "descriptor is not an open socket");
  if (lpOverlapped != nullptr || lpCompletionRoutine != nullptr)
    return fail_with(WSAEOPNOTSUPP,
                     "overlapped WSARecvMsg is not provided by the connredir layer: pass NULL "
                     "and receive synchronously");
  if (lpMsg == nullptr || !probe_write(lpMsg, sizeof *lpMsg))
    return fail_with(WSAEFAULT, "lpMsg is not valid user memory");
  const Wants wants = wants_of(fd, id);
  std::vector<iovec> iov = iovecs(lpMsg);
  sockaddr_storage from{};
  msghdr mh{};
  mh.msg_name = &from;
  mh.msg_namelen = sizeof from;
  mh.msg_iov = iov.data();
  mh.msg_iovlen = iov.size();
  mh.msg_control = lpMsg->Control.len ? lpMsg->Control.buf : nullptr;
  mh.msg_controllen = lpMsg->Control.len;
  const ssize_t n = recvmsg(fd, &mh, static_cast<int>(lpMsg->dwFlags));
  if (n < 0) {
    const int e = errno;
    return fail_with(wsa_from_errno(e), std::string("recvmsg: ") + strerror(e));
  }
  size_t used = mh.msg_controllen;
  ULONG flags = static_cast<ULONG>(mh.msg_flags);
  if ((wants.records || wants.context) && mh.msg_namelen > 0) {
    auto client =
        connredir::Address::from_sockaddr(reinterpret_cast<sockaddr*>(&from), mh.msg_namelen);
    if (client) {
      // A wildcard-bound socket names the flow by the address the datagram
      // was sent to: the IP_PKTINFO the application enabled (a proxy that
      // answers from the right address does so anyway).
      std::optional<connredir::Address> local;
      sockaddr_storage self{};
      socklen_t slen = sizeof self;
      if (mh.msg_controllen > 0 &&
          getsockname(fd, reinterpret_cast<sockaddr*>(&self), &slen) == 0) {
        auto me = connredir::Address::from_sockaddr(reinterpret_cast<sockaddr*>(&self), slen);
        if (me) local = connredir::datagram_local_address(mh, me->port);
      }
      // No flow (ENOENT: not redirected) means no control messages, as on
      // Windows for a datagram no callout redirected.
      auto flow = backend().udp_flow(fd, *client, local ? &*local : nullptr);
      if (flow) {
        const int level =
            sock_int(fd, SOL_SOCKET, SO_DOMAIN) == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP;
        if ((wants.records &&
             !append_cmsg(lpMsg, &used, level, IP_WFP_REDIRECT_RECORDS, flow->first)) ||
            (wants.context &&
             !append_cmsg(lpMsg, &used, level, IP_WFP_REDIRECT_CONTEXT, flow->second)))
          flags |= MSG_CTRUNC;
      }
    }
  }
  if (lpMsg->name != nullptr && lpMsg->namelen > 0) {
    const socklen_t copy =
        std::min<socklen_t>(mh.msg_namelen, static_cast<socklen_t>(lpMsg->namelen));
    std::memcpy(lpMsg->name, &from, copy);
    lpMsg->namelen = static_cast<INT>(mh.msg_namelen);
  }
  lpMsg->Control.len = static_cast<ULONG>(used);
  lpMsg->dwFlags = flags;
  if (lpdwNumberOfBytesRecvd) *lpdwNumberOfBytesRecvd = static_cast<DWORD>(n);
  set_last_error(0);
  return 0;
}

INT WSAAPI WSASendMsg(SOCKET Handle, LPWSAMSG lpMsg, DWORD dwFlags, LPDWORD lpNumberOfBytesSent,
                      LPWSAOVERLAPPED lpOverlapped,
                      LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine) {
  const int fd = socket_fd(Handle);
  if (fd < 0) return fail_with(WSAENOTSOCK, "descriptor is not an open socket");
  if (lpOverlapped != nullptr || lpCompletionRoutine != nullptr)
    return fail_with(WSAEOPNOTSUPP,
                     "overlapped WSASendMsg is not provided by the connredir layer: pass NULL "
                     "and send synchronously");
  if (lpMsg == nullptr || !probe_read(lpMsg, sizeof *lpMsg))
    return fail_with(WSAEFAULT, "lpMsg is not valid user memory");
  // Our control messages are consumed here; the others go to the kernel.
  std::vector<uint8_t> passed;
  bool records_set = false;
  for (WSACMSGHDR* c = WSA_CMSG_FIRSTHDR(lpMsg); c != nullptr; c = WSA_CMSG_NXTHDR(lpMsg, c)) {
    if (is_wfp_level(c->cmsg_level) && c->cmsg_type == IP_WFP_REDIRECT_RECORDS) {
      const auto* p = static_cast<const uint8_t*>(CMSG_DATA(c));
      const size_t len = c->cmsg_len - CMSG_LEN(0);
      auto r = backend().set_records(fd, std::span<const uint8_t>(p, len));
      if (!r) return fail_with(wsa_from_errno(r.error().code), r.error().message);
      records_set = true;
      continue;
    }
    if (is_wfp_level(c->cmsg_level) && c->cmsg_type == IP_WFP_REDIRECT_CONTEXT)
      return fail_with(WSAEINVAL, "IP_WFP_REDIRECT_CONTEXT is received, never sent");
    const auto* b = reinterpret_cast<const uint8_t*>(c);
    passed.insert(passed.end(), b, b + CMSG_SPACE(c->cmsg_len - CMSG_LEN(0)));
  }
  std::vector<iovec> iov = iovecs(lpMsg);
  msghdr mh{};
  mh.msg_name = lpMsg->name;
  mh.msg_namelen = lpMsg->name ? static_cast<socklen_t>(lpMsg->namelen) : 0;
  mh.msg_iov = iov.data();
  mh.msg_iovlen = iov.size();
  mh.msg_control = passed.empty() ? nullptr : passed.data();
  mh.msg_controllen = passed.size();
  if (records_set && mh.msg_name != nullptr && sock_int(fd, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM) {
    sockaddr_storage peer{};
    socklen_t plen = sizeof peer;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0 && errno == ENOTCONN) {
      // connredir classifies a UDP socket's connect, not its unconnected
      // sends: connect, so the records take it to the next vendor.
      if (connect(fd, static_cast<sockaddr*>(mh.msg_name), mh.msg_namelen) != 0) {
        const int e = errno;
        return fail_with(wsa_from_errno(e), std::string("connect: ") + strerror(e));
      }
      mh.msg_name = nullptr;
      mh.msg_namelen = 0;
    }
  }
  const ssize_t n = sendmsg(fd, &mh, static_cast<int>(dwFlags) | MSG_NOSIGNAL);
  if (n < 0) {
    const int e = errno;
    return fail_with(wsa_from_errno(e), std::string("sendmsg: ") + strerror(e));
  }
  if (lpNumberOfBytesSent) *lpNumberOfBytesSent = static_cast<DWORD>(n);
  set_last_error(0);
  return 0;
}
