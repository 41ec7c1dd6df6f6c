#include "bind_local.hpp"

#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace connredir::proxy {

Result<BoundSocket> bind_local(const Address& addr, int type) {
  auto step_failed = [](const char* step) {
    const int e = errno;
    return tl::unexpected(Error{e, std::string(step) + ": " + errno_text(e)});
  };
  BoundSocket b{UniqueFd(socket(addr.family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)), addr};
  if (!b.fd) return step_failed("socket");
  const int one = 1;
  // Streams: restart while old connections linger. Datagrams: a UDP
  // listener at the callout's address and the wildcard one at its port
  // (udp_relay.hpp) can only both bind with it on both.
  if (setsockopt(b.fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
    return step_failed("SO_REUSEADDR");
  if (addr.family == AF_INET6 &&
      setsockopt(b.fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)
    return step_failed("IPV6_V6ONLY");
  sockaddr_storage ss{};
  const socklen_t len = addr.to_sockaddr(ss);
  if (bind(b.fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return step_failed("bind");
  socklen_t blen = sizeof ss;
  if (getsockname(b.fd.get(), reinterpret_cast<sockaddr*>(&ss), &blen) == 0) {
    if (auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), blen)) b.addr = *a;
  }
  return b;
}

}  // namespace connredir::proxy
