#include "connredir/address.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <string>

#include <fmt/format.h>

namespace connredir {

namespace {

constexpr std::array<uint8_t, 12> kV4MappedPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool is_v4_mapped(const uint8_t* ip16) {
  return std::equal(kV4MappedPrefix.begin(), kV4MappedPrefix.end(), ip16);
}

std::array<uint8_t, 16> map_v4(const uint8_t* ip4) {
  std::array<uint8_t, 16> ip{};
  std::copy(kV4MappedPrefix.begin(), kV4MappedPrefix.end(), ip.begin());
  std::copy(ip4, ip4 + 4, ip.begin() + 12);
  return ip;
}

// Family from 16 address bytes: the ABI compares v4, v6 and v4-mapped
// endpoints as equal, so a v4-mapped IPv6 address is reported as IPv4.
Address from_ip16(const uint8_t* ip16, uint16_t port) {
  Address a;
  std::copy(ip16, ip16 + 16, a.ip.begin());
  a.family = is_v4_mapped(ip16) ? AF_INET : AF_INET6;
  a.port = port;
  return a;
}

// inet_pton needs a NUL-terminated string; views may not be.
bool pton(int af, std::string_view text, void* out) {
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return false;
  char buf[INET6_ADDRSTRLEN] = {};
  std::memcpy(buf, text.data(), text.size());
  return inet_pton(af, buf, out) == 1;
}

Result<uint16_t> parse_port(std::string_view all, std::string_view p) {
  if (p.empty()) return fail(EINVAL, fmt::format("'{}': missing port after ':'", all));
  uint32_t v = 0;
  for (char c : p) {
    if (c < '0' || c > '9')
      return fail(EINVAL, fmt::format("'{}': port '{}' is not a number", all, p));
    v = v * 10 + static_cast<uint32_t>(c - '0');
    if (v > 65535)
      return fail(EINVAL, fmt::format("'{}': port {} is out of range (1-65535)", all, p));
  }
  if (v == 0) return fail(EINVAL, fmt::format("'{}': port 0 is not allowed (1-65535)", all));
  return static_cast<uint16_t>(v);
}

// Host part without brackets: IPv4 dotted quad or IPv6 text.
Result<Address> parse_host(std::string_view all, std::string_view host, bool v6_ok) {
  uint8_t buf[16];
  if (pton(AF_INET, host, buf)) return from_ip16(map_v4(buf).data(), 0);
  if (v6_ok && pton(AF_INET6, host, buf)) return from_ip16(buf, 0);
  return fail(EINVAL, fmt::format("'{}': '{}' is not a numeric IP address (hostnames are not "
                                  "resolved; use e.g. 127.0.0.1:8080 or [::1]:8080)",
                                  all, host));
}

}  // namespace

Result<Address> Address::parse(std::string_view text, bool allow_no_port) {
  const char* want = allow_no_port ? "ADDR[:PORT] or [IPV6][:PORT]" : "ADDR:PORT or [IPV6]:PORT";
  if (text.empty()) return fail(EINVAL, fmt::format("empty address: expected {}", want));

  std::string_view host;
  std::string_view port_text;
  bool has_port = false;
  bool bracketed = false;

  if (text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos)
      return fail(EINVAL, fmt::format("'{}': missing ']' after IPv6 address", text));
    host = text.substr(1, close - 1);
    bracketed = true;
    const auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':')
        return fail(EINVAL, fmt::format("'{}': expected ':PORT' after ']'", text));
      has_port = true;
      port_text = rest.substr(1);
    }
    if (host.empty()) return fail(EINVAL, fmt::format("'{}': empty address inside []", text));
  } else {
    const auto colons = std::count(text.begin(), text.end(), ':');
    if (colons > 1) {
      // Unbracketed IPv6: legal only as a bare address; with a port the
      // last ':' would be ambiguous, so we insist on brackets.
      uint8_t buf[16];
      if (pton(AF_INET6, text, buf)) {
        if (allow_no_port) return from_ip16(buf, 0);
        return fail(EINVAL,
                    fmt::format("'{}': missing port (IPv6 needs brackets: [{}]:PORT)", text, text));
      }
      const auto last = text.rfind(':');
      if (pton(AF_INET6, text.substr(0, last), buf))
        return fail(EINVAL, fmt::format("'{}': IPv6 address with a port needs brackets: [{}]:{}",
                                        text, text.substr(0, last), text.substr(last + 1)));
      return fail(EINVAL, fmt::format("'{}': not an address: expected {}", text, want));
    }
    if (colons == 1) {
      const auto c = text.find(':');
      host = text.substr(0, c);
      port_text = text.substr(c + 1);
      has_port = true;
      if (host.empty()) return fail(EINVAL, fmt::format("'{}': missing address before ':'", text));
    } else {
      host = text;
    }
  }

  if (!has_port && !allow_no_port) {
    // Check the host first so "foo" reports "not an IP address" rather than
    // a misleading "missing port".
    auto h = parse_host(text, host, bracketed);
    if (!h) return h;
    return fail(EINVAL, fmt::format("'{}': missing port: expected {}", text, want));
  }

  auto addr = parse_host(text, host, bracketed);
  if (!addr) return addr;
  if (has_port) {
    auto port = parse_port(text, port_text);
    if (!port) return tl::unexpected(port.error());
    addr->port = *port;
  }
  return addr;
}

Address Address::from_abi(const connredir_addr& a) {
  Address out;
  std::copy(std::begin(a.addr), std::end(a.addr), out.ip.begin());
  out.port = ntohs(a.port);
  if (a.family == 0 && out.ip == std::array<uint8_t, 16>{}) {
    out.family = 0;  // unset
  } else if (a.family == CONNREDIR_AF_INET || a.family == CONNREDIR_AF_INET6) {
    // A v4-mapped address is IPv4 whatever the writer labelled it.
    out.family = is_v4_mapped(a.addr) ? AF_INET : AF_INET6;
  } else {
    out.family = a.family;  // not a family we know; kept so callers can report it
  }
  return out;
}

Result<Address> Address::from_sockaddr(const sockaddr* sa, socklen_t len) {
  if (sa == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t)))
    return fail(EINVAL, "socket address is empty");
  if (sa->sa_family == AF_INET) {
    if (len < static_cast<socklen_t>(sizeof(sockaddr_in)))
      return fail(EINVAL, fmt::format("AF_INET socket address too short ({} bytes)", len));
    sockaddr_in in;
    std::memcpy(&in, sa, sizeof in);
    return from_ip16(map_v4(reinterpret_cast<const uint8_t*>(&in.sin_addr)).data(),
                     ntohs(in.sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    if (len < static_cast<socklen_t>(sizeof(sockaddr_in6)))
      return fail(EINVAL, fmt::format("AF_INET6 socket address too short ({} bytes)", len));
    sockaddr_in6 in6;
    std::memcpy(&in6, sa, sizeof in6);
    return from_ip16(reinterpret_cast<const uint8_t*>(&in6.sin6_addr), ntohs(in6.sin6_port));
  }
  return fail(EAFNOSUPPORT,
              fmt::format("address family {} is not AF_INET or AF_INET6", sa->sa_family));
}

connredir_addr Address::to_abi() const {
  connredir_addr a{};
  if (family == 0) return a;
  std::copy(ip.begin(), ip.end(), std::begin(a.addr));
  if (family == AF_INET && !is_v4_mapped(a.addr)) {
    // Only the last 4 bytes are meaningful for IPv4; re-map defensively.
    const auto m = map_v4(ip.data() + 12);
    std::copy(m.begin(), m.end(), std::begin(a.addr));
  }
  a.port = htons(port);
  a.family = static_cast<__u16>(family == AF_INET ? CONNREDIR_AF_INET : CONNREDIR_AF_INET6);
  return a;
}

socklen_t Address::to_sockaddr(sockaddr_storage& out) const {
  std::memset(&out, 0, sizeof out);
  if (family == AF_INET) {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    std::memcpy(&in.sin_addr, ip.data() + 12, 4);
    std::memcpy(&out, &in, sizeof in);
    return sizeof in;
  }
  if (family == AF_INET6) return to_sockaddr6(out);
  return 0;
}

socklen_t Address::to_sockaddr6(sockaddr_storage& out) const {
  std::memset(&out, 0, sizeof out);
  if (family != AF_INET && family != AF_INET6) return 0;
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  in6.sin6_port = htons(port);
  const auto ip16 = family == AF_INET ? map_v4(ip.data() + 12) : ip;
  std::memcpy(&in6.sin6_addr, ip16.data(), 16);
  std::memcpy(&out, &in6, sizeof in6);
  return sizeof in6;
}

std::string Address::ip_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family == AF_INET) {
    inet_ntop(AF_INET, ip.data() + 12, buf, sizeof buf);
    return buf;
  }
  if (family == AF_INET6) {
    inet_ntop(AF_INET6, ip.data(), buf, sizeof buf);
    return buf;
  }
  if (family == 0) return "unset";
  return fmt::format("(family {})", family);
}

std::string Address::to_string() const {
  if (family == AF_INET) return fmt::format("{}:{}", ip_string(), port);
  if (family == AF_INET6) return fmt::format("[{}]:{}", ip_string(), port);
  return ip_string();
}

}  // namespace connredir
