#include "connredir/client.hpp"

#include <errno.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstring>
#include <mutex>
#include <string>

#include <fmt/format.h>

#include "client_errors.hpp"

namespace connredir {

namespace detail {

using Op = SockOp;

const char* op_name(SockOp op) {
  switch (op) {
    case Op::QueryRecords:
      return "query_records";
    case Op::QueryContext:
      return "query_context";
    case Op::QueryFlow:
      return "query_flow";
    case Op::SetRecords:
      return "set_records";
    case Op::OriginalDst:
      return "original_destination";
    case Op::UdpFlow:
      return "udp_flow";
  }
  return "connredir";
}

namespace {
constexpr const char* kNotLoaded =
    "connredir is not loaded for this process's cgroup (run `connredir up --cgroup DIR` and start "
    "the proxy inside that cgroup; if it was started with `--proxies-in`, start the proxy inside "
    "one of those cgroups)";
}  // namespace

// Turn a failed socket-option call into an error that says what to do. The
// errno is kept unchanged so callers can still branch on it.
Error socket_option_error(SockOp op, int fd, int err) {
  std::string why;
  switch (err) {
    case EBADF:
      why = "fd is not an open file descriptor";
      break;
    case ENOTSOCK:
      why = "fd is not a socket";
      break;
    case ENOENT:
      why = op == Op::OriginalDst
                ? "socket was not redirected by connredir (no original destination is known)"
            : op == Op::UdpFlow
                ? "no redirected UDP flow from this client reached the socket's address (the "
                  "client was not redirected, or its socket was closed); a flow is known once "
                  "the socket received the client's datagram through recvfrom() or recvmsg()"
                : "socket was not redirected by connredir";
      break;
    case EADDRNOTAVAIL:
      why =
          "the UDP socket is bound to a wildcard address: pass the address each datagram was "
          "sent to (IP_PKTINFO / IPV6_PKTINFO) as `local`, or bind the callout's proxy address "
          "(connredir callout show NAME), so that a flow is named by its two ends";
      break;
    case EACCES:
    case EPERM:
      why =
          "caller is not root nor an authorized proxy principal: run `connredir authorize --uid N` "
          "or register the proxy with `connredir callout add ... --proxy-uid`";
      break;
    case ENOPROTOOPT:
      why = kNotLoaded;
      break;
    case EOPNOTSUPP:
      // The kernel's own answer to an unknown option level on get; on set
      // connredir itself uses it for non-TCP sockets.
      why = op == Op::SetRecords
                ? fmt::format("records can only be attached to a TCP or UDP socket (or {})",
                              kNotLoaded)
            : op == Op::UdpFlow ? fmt::format("fd is not a UDP socket (or {})", kNotLoaded)
                                : kNotLoaded;
      break;
    case EINVAL:
      why = op == Op::SetRecords
                ? "records blob was rejected: it was not issued by this kernel's connredir or was "
                  "altered; pass the exact bytes query_records returned"
            : op == Op::UdpFlow
                ? "the kernel rejected the flow's addresses: `local` must be the address the "
                  "datagram was sent to (IP_PKTINFO) with this socket's own port, and both "
                  "addresses IPv4 or IPv6 (or the library and kernel connredir ABIs differ)"
                : "the kernel rejected the request (library and kernel connredir ABI versions may "
                  "differ)";
      break;
    case EISCONN:
      why = "set records before connect(): the socket is already connected";
      break;
    case ENOBUFS:
      why = op == Op::SetRecords
                ? "the kernel had no room for the records (socket storage allocation failed or "
                  "the blob is too large); retry, and pass the exact bytes query_records returned"
                : "the kernel's answer did not fit the buffer: library and kernel connredir ABI "
                  "versions differ; rebuild the proxy against the installed libconnredir";
      break;
    default:
      why = errno_message(err, "unexpected error");
      break;
  }
  return Error{err, fmt::format("{}(fd {}): {}", op_name(op), fd, why)};
}

}  // namespace detail

namespace {

using Op = detail::SockOp;

Error explain(Op op, int fd, int err) { return detail::socket_option_error(op, fd, err); }

// getsockopt into `buf`; on success returns the length the kernel wrote.
Result<socklen_t> get_opt(Op op, int fd, int level, int name, void* buf, socklen_t size) {
  socklen_t len = size;
  if (::getsockopt(fd, level, name, buf, &len) != 0) return tl::unexpected(explain(op, fd, errno));
  // Never trust a length larger than what we offered.
  return len > size ? size : len;
}

Result<std::vector<uint8_t>> query_blob(Op op, int fd, int name, size_t max) {
  std::vector<uint8_t> buf(max);
  auto len = get_opt(op, fd, SOL_CONNREDIR, name, buf.data(), static_cast<socklen_t>(buf.size()));
  if (!len) return tl::unexpected(len.error());
  if (*len == 0) {
    // A hook that answers with nothing has nothing for this socket.
    return tl::unexpected(explain(op, fd, ENOENT));
  }
  buf.resize(*len);
  return buf;
}

}  // namespace

Result<RecordsBlob> query_records(int fd) {
  return query_blob(Op::QueryRecords, fd, CONNREDIR_RECORDS, CONNREDIR_RECORDS_MAX);
}

Result<std::vector<uint8_t>> query_context_raw(int fd) {
  return query_blob(Op::QueryContext, fd, CONNREDIR_CONTEXT, CONNREDIR_CONTEXT_MAX);
}

Result<Context> query_context(int fd) {
  auto raw = query_context_raw(fd);
  if (!raw) return tl::unexpected(raw.error());
  auto ctx = decode_context(*raw);
  if (!ctx)
    return fail(ctx.error().code, fmt::format("query_context(fd {}): {}", fd, ctx.error().message));
  return ctx;
}

namespace {

Result<Flow> flow_from(int fd, RecordsBlob records, std::vector<uint8_t> raw) {
  auto context = decode_context(raw);
  if (!context)
    return fail(context.error().code,
                fmt::format("query_flow(fd {}): {}", fd, context.error().message));
  return Flow{std::move(records), std::move(*context), std::move(raw)};
}

// The two-call way, for a loaded object older than CONNREDIR_FLOW.
Result<Flow> flow_in_two_calls(int fd) {
  auto records = query_records(fd);
  if (!records) return tl::unexpected(records.error());
  auto raw = query_context_raw(fd);
  if (!raw) return tl::unexpected(raw.error());
  return flow_from(fd, std::move(*records), std::move(*raw));
}

}  // namespace

Result<Flow> query_flow(int fd) {
  connredir_flow_view view;
  socklen_t len = sizeof view;
  if (::getsockopt(fd, SOL_CONNREDIR, CONNREDIR_FLOW, &view, &len) != 0) {
    // ENOPROTOOPT on get comes only from a connredir object that does not
    // know the option (the kernel itself answers EOPNOTSUPP).
    if (errno == ENOPROTOOPT) return flow_in_two_calls(fd);
    return tl::unexpected(explain(Op::QueryFlow, fd, errno));
  }
  if (len != sizeof view) {
    // A hook that answers with nothing has nothing for this socket.
    return tl::unexpected(explain(Op::QueryFlow, fd, len == 0 ? ENOENT : ENOBUFS));
  }
  const auto* r = reinterpret_cast<const uint8_t*>(&view.records);
  const auto* c = reinterpret_cast<const uint8_t*>(&view.context);
  return flow_from(fd, RecordsBlob(r, r + sizeof view.records),
                   std::vector<uint8_t>(c, c + sizeof view.context));
}

Result<void> set_records(int fd, std::span<const uint8_t> blob) {
  // Passed through unchecked on purpose: the kernel is the authority on what
  // it issued (it verifies the MAC), and a local pre-check would only hide
  // its answer.
  if (::setsockopt(fd, SOL_CONNREDIR, CONNREDIR_RECORDS, blob.data(),
                   static_cast<socklen_t>(blob.size())) != 0)
    return tl::unexpected(explain(Op::SetRecords, fd, errno));
  return {};
}

Result<Address> original_destination(int fd) {
  int domain = 0;
  socklen_t dlen = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dlen) != 0)
    return tl::unexpected(explain(Op::OriginalDst, fd, errno));

  sockaddr_storage ss{};
  if (domain == AF_INET) {
    auto len = get_opt(Op::OriginalDst, fd, CONNREDIR_SOL_IP, CONNREDIR_SO_ORIGINAL_DST, &ss,
                       sizeof(sockaddr_in));
    if (!len) return tl::unexpected(len.error());
    return Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), *len);
  }
  if (domain != AF_INET6)
    return fail(EAFNOSUPPORT,
                fmt::format("original_destination(fd {}): not an IPv4/IPv6 socket (family {})", fd,
                            domain));

  auto len = get_opt(Op::OriginalDst, fd, CONNREDIR_SOL_IPV6, CONNREDIR_IP6T_SO_ORIGINAL_DST, &ss,
                     sizeof(sockaddr_in6));
  if (len) {
    // from_sockaddr reports a v4-mapped answer as AF_INET.
    return Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), *len);
  }
  // A dual-stack socket serving an IPv4 client may only be answered at the
  // IPv4 level (that is where iptables keeps it), so retry there.
  sockaddr_storage peer{};
  socklen_t plen = sizeof peer;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) == 0) {
    auto p = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&peer), plen);
    if (p && p->is_v4()) {
      sockaddr_storage ss4{};
      auto len4 = get_opt(Op::OriginalDst, fd, CONNREDIR_SOL_IP, CONNREDIR_SO_ORIGINAL_DST, &ss4,
                          sizeof(sockaddr_in));
      if (len4) return Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss4), *len4);
    }
  }
  return tl::unexpected(len.error());
}

namespace {

// The selection is the socket's until the next one: select and read as one
// step, so two threads serving one socket never read each other's flow.
std::mutex g_udp_select;

Result<void> select_udp_flow(int fd, const Address& client, const Address* local) {
  connredir_udp_flow sel{};
  sel.client = client.to_abi();
  socklen_t len = sizeof sel.client;  // only the client: the socket's own address
  if (local) {
    sel.local = local->to_abi();
    len = offsetof(connredir_udp_flow, flow_id);  // both ends: select (no check)
  }
  if (::setsockopt(fd, SOL_CONNREDIR, CONNREDIR_UDP_FLOW, &sel, len) != 0)
    return tl::unexpected(explain(Op::UdpFlow, fd, errno));
  return {};
}

Result<uint64_t> flow_id_of(int fd, const Address& client, const Address* local) {
  std::lock_guard lock(g_udp_select);
  if (auto s = select_udp_flow(fd, client, local); !s) return tl::unexpected(s.error());
  connredir_context c{};
  auto len = get_opt(Op::QueryContext, fd, SOL_CONNREDIR, CONNREDIR_CONTEXT, &c, sizeof c);
  if (!len) return tl::unexpected(len.error());
  if (*len < offsetof(connredir_context, flow_id) + sizeof c.flow_id)
    return tl::unexpected(explain(Op::UdpFlow, fd, ENOENT));
  return c.flow_id;
}

Result<bool> unchanged(int fd, const Address& client, const Address* local, uint64_t flow_id) {
  connredir_udp_flow sel{};
  sel.client = client.to_abi();
  if (local) sel.local = local->to_abi();  // else family 0: the socket's own address
  sel.flow_id = flow_id;
  if (::setsockopt(fd, SOL_CONNREDIR, CONNREDIR_UDP_FLOW, &sel, sizeof sel) == 0) return true;
  const int e = errno;
  if (e == ESTALE || e == ENOENT) return false;
  if (e == EINVAL) {  // a BPF object older than the check: select and read the id
    auto id = flow_id_of(fd, client, local);
    if (id) return *id == flow_id;
    if (id.error().code == ENOENT) return false;
    return tl::unexpected(id.error());
  }
  return tl::unexpected(explain(Op::UdpFlow, fd, e));
}

Result<UdpFlow> flow_of(int fd, const Address& client, const Address* local) {
  std::lock_guard lock(g_udp_select);
  if (auto s = select_udp_flow(fd, client, local); !s) return tl::unexpected(s.error());
  return query_flow(fd);
}

}  // namespace

std::optional<Address> datagram_local_address(const msghdr& msg, uint16_t port) {
  for (const cmsghdr* c = CMSG_FIRSTHDR(&msg); c;
       c = CMSG_NXTHDR(const_cast<msghdr*>(&msg), const_cast<cmsghdr*>(c))) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
        c->cmsg_len >= CMSG_LEN(sizeof(in_pktinfo))) {
      in_pktinfo pi{};
      std::memcpy(&pi, CMSG_DATA(c), sizeof pi);
      auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
      sin->sin_family = AF_INET;
      sin->sin_addr = pi.ipi_addr;
      sin->sin_port = htons(port);
      len = sizeof *sin;
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
               c->cmsg_len >= CMSG_LEN(sizeof(in6_pktinfo))) {
      in6_pktinfo pi{};
      std::memcpy(&pi, CMSG_DATA(c), sizeof pi);
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_addr = pi.ipi6_addr;
      sin6->sin6_port = htons(port);
      len = sizeof *sin6;
    } else {
      continue;
    }
    auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    if (a) return *a;
  }
  return std::nullopt;
}

Result<uint64_t> udp_flow_id(int fd, const Address& client) {
  return flow_id_of(fd, client, nullptr);
}

Result<uint64_t> udp_flow_id(int fd, const Address& client, const Address& local) {
  return flow_id_of(fd, client, &local);
}

Result<bool> udp_flow_unchanged(int fd, const Address& client, uint64_t flow_id) {
  return unchanged(fd, client, nullptr, flow_id);
}

Result<bool> udp_flow_unchanged(int fd, const Address& client, const Address& local,
                                uint64_t flow_id) {
  return unchanged(fd, client, &local, flow_id);
}

Result<UdpFlow> udp_flow(int fd, const Address& client) { return flow_of(fd, client, nullptr); }

Result<UdpFlow> udp_flow(int fd, const Address& client, const Address& local) {
  return flow_of(fd, client, &local);
}

}  // namespace connredir
