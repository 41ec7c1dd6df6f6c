// Endpoint addresses: parse/format "ADDR:PORT" and "[ADDR]:PORT", convert to
// and from sockaddr and the ABI's struct connredir_addr.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "connredir/error.hpp"

extern "C" {
#include "connredir_abi.h"
}

// Exported from libconnredir.so (built with hidden visibility by default).
#pragma GCC visibility push(default)

namespace connredir {

struct Address {
  int family = 0;                // AF_INET or AF_INET6 (0 = unset)
  std::array<uint8_t, 16> ip{};  // IPv4 stored v4-mapped (::ffff:a.b.c.d)
  uint16_t port = 0;             // host order

  // "1.2.3.4:80", "[::1]:443". Port required unless allow_no_port.
  static Result<Address> parse(std::string_view text, bool allow_no_port = false);
  static Address from_abi(const connredir_addr& a);
  static Result<Address> from_sockaddr(const sockaddr* sa, socklen_t len);

  connredir_addr to_abi() const;
  // sockaddr_in for AF_INET, sockaddr_in6 for AF_INET6; returns its length.
  socklen_t to_sockaddr(sockaddr_storage& out) const;
  // As sockaddr_in6 (IPv4 as ::ffff:a.b.c.d), for dual-stack sockets.
  socklen_t to_sockaddr6(sockaddr_storage& out) const;
  std::string to_string() const;  // with port
  std::string ip_string() const;  // without port
  bool is_v4() const { return family == AF_INET; }
  bool operator==(const Address&) const = default;
};

}  // namespace connredir

#pragma GCC visibility pop
