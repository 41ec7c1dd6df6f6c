// A proxy's own socket at a --listen address: created nonblocking, IPv6
// sockets IPv6-only (an IPv4 listener may share the port), with
// SO_REUSEADDR, bound, and the address as bound (the real port when 0 was
// asked for). Shared by the TCP listeners and the UDP sockets (--udp).
#pragma once

#include "connredir/address.hpp"
#include "connredir/error.hpp"
#include "unique_fd.hpp"

namespace connredir::proxy {

struct BoundSocket {
  UniqueFd fd;
  Address addr;
};

// On failure: the errno, and a message naming the step ("bind: Address
// already in use"); the caller adds what to do.
Result<BoundSocket> bind_local(const Address& addr, int type);

}  // namespace connredir::proxy
