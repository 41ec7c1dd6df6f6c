// Argument parsing for the control plane: CIDRs, port ranges, names.
#include <arpa/inet.h>

#include <charconv>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

constexpr std::array<uint8_t, 12> kV4MappedPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool is_v4_mapped(const std::array<uint8_t, 16>& a) {
  return std::equal(kV4MappedPrefix.begin(), kV4MappedPrefix.end(), a.begin());
}

// Bits of the family's address, and where they start in the 16-byte form.
int family_bits(uint8_t family) { return family == CONNREDIR_AF_INET ? 32 : 128; }
int family_offset(uint8_t family) { return family == CONNREDIR_AF_INET ? 12 : 0; }

bool bit(const std::array<uint8_t, 16>& a, int offset, int i) {
  return (a[offset + i / 8] >> (7 - i % 8)) & 1;
}

// Zero every bit from `len` on (family-relative).
std::array<uint8_t, 16> masked(std::array<uint8_t, 16> a, uint8_t family, int len) {
  int off = family_offset(family);
  int bits = family_bits(family);
  for (int i = len; i < bits; ++i) a[off + i / 8] &= static_cast<uint8_t>(~(0x80 >> (i % 8)));
  return a;
}

std::string ip_text(uint8_t family, const std::array<uint8_t, 16>& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family == CONNREDIR_AF_INET)
    inet_ntop(AF_INET, a.data() + 12, buf, sizeof buf);
  else
    inet_ntop(AF_INET6, a.data(), buf, sizeof buf);
  return buf;
}

}  // namespace

bool Prefix::contains(const Prefix& inner) const {
  if (family == 0) return true;
  if (inner.family != family || inner.len < len) return false;
  int off = family_offset(family);
  for (int i = 0; i < len; ++i)
    if (bit(addr, off, i) != bit(inner.addr, off, i)) return false;
  return true;
}

bool Prefix::contains_address(uint8_t fam, const std::array<uint8_t, 16>& ip) const {
  Prefix host{fam, static_cast<uint8_t>(family_bits(fam)), ip};
  return contains(host);
}

std::string Prefix::to_string() const {
  if (family == 0) return "any";
  return fmt::format("{}/{}", ip_text(family, addr), len);
}

Result<Prefix> parse_cidr(std::string_view text) {
  std::string s(text);
  std::string addr_part = s;
  std::optional<int> len;
  if (auto slash = s.find('/'); slash != std::string::npos) {
    addr_part = s.substr(0, slash);
    std::string_view lt = std::string_view(s).substr(slash + 1);
    int v = -1;
    auto [p, ec] = std::from_chars(lt.data(), lt.data() + lt.size(), v);
    if (lt.empty() || ec != std::errc() || p != lt.data() + lt.size() || v < 0)
      return fail(EINVAL, fmt::format("invalid prefix length in '{}'", s));
    len = v;
  }
  Prefix p;
  in_addr a4{};
  in6_addr a6{};
  if (inet_pton(AF_INET, addr_part.c_str(), &a4) == 1) {
    p.family = CONNREDIR_AF_INET;
    std::copy(kV4MappedPrefix.begin(), kV4MappedPrefix.end(), p.addr.begin());
    std::memcpy(p.addr.data() + 12, &a4, 4);
    if (len && *len > 32)
      return fail(EINVAL, fmt::format("'{}': IPv4 prefix length must be 0..32", s));
    p.len = static_cast<uint8_t>(len.value_or(32));
  } else if (inet_pton(AF_INET6, addr_part.c_str(), &a6) == 1) {
    p.family = CONNREDIR_AF_INET6;
    std::memcpy(p.addr.data(), &a6, 16);
    if (len && *len > 128)
      return fail(EINVAL, fmt::format("'{}': IPv6 prefix length must be 0..128", s));
    p.len = static_cast<uint8_t>(len.value_or(128));
  } else {
    return fail(EINVAL, fmt::format("'{}' is not an IPv4 or IPv6 address/prefix (e.g. "
                                    "10.0.0.0/8, 2001:db8::/32, 192.0.2.7)",
                                    s));
  }
  auto m = masked(p.addr, p.family, p.len);
  if (m != p.addr) {
    Prefix fixed = p;
    fixed.addr = m;
    return fail(EINVAL,
                fmt::format("'{}' has host bits set: did you mean {} (or the host {}/{})?", s,
                            fixed.to_string(), ip_text(p.family, p.addr), family_bits(p.family)));
  }
  // The kernel classifies v4-mapped destinations as IPv4.
  if (p.family == CONNREDIR_AF_INET6 && p.len >= 96 && is_v4_mapped(p.addr)) {
    p.family = CONNREDIR_AF_INET;
    p.len = static_cast<uint8_t>(p.len - 96);
  }
  return p;
}

std::string PortRange::to_string() const {
  if (any()) return "any";
  if (lo == hi) return std::to_string(lo);
  return fmt::format("{}-{}", lo, hi);
}

Result<uint64_t> parse_uint(std::string_view text, std::string_view what, uint64_t lo,
                            uint64_t hi) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  bool whole = p == text.data() + text.size();
  if (ec == std::errc::result_out_of_range || (ec == std::errc() && whole && (v < lo || v > hi)))
    return fail(EINVAL, fmt::format("{} '{}' out of range ({}..{})", what, text, lo, hi));
  if (text.empty() || ec != std::errc() || !whole)
    return fail(EINVAL, fmt::format("{} '{}' is not a decimal number", what, text));
  return v;
}

Result<PortRange> parse_port_range(std::string_view text) {
  auto dash = text.find('-');
  std::string_view a = text.substr(0, dash);
  auto lo = parse_uint(a, "port", 1, 65535);
  if (!lo) return tl::unexpected(lo.error());
  uint64_t hi = *lo;
  if (dash != std::string_view::npos) {
    auto h = parse_uint(text.substr(dash + 1), "port", 1, 65535);
    if (!h) return tl::unexpected(h.error());
    hi = *h;
    if (hi < *lo)
      return fail(EINVAL,
                  fmt::format("port range '{}': the first port must not exceed the second", text));
  }
  return PortRange{static_cast<uint16_t>(*lo), static_cast<uint16_t>(hi)};
}

Result<void> validate_callout_name(std::string_view name) {
  if (name.empty() || name.size() >= CONNREDIR_NAME_MAX)
    return fail(EINVAL, fmt::format("callout name '{}' must be 1..{} characters", name,
                                    CONNREDIR_NAME_MAX - 1));
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok)
      return fail(
          EINVAL,
          fmt::format("callout name '{}' may only contain letters, digits, '_', '.', '-'", name));
  }
  return {};
}

Result<uint8_t> parse_proto(std::string_view text) {
  if (text == "tcp" || text == "TCP") return static_cast<uint8_t>(kProtoTcp);
  if (text == "udp" || text == "UDP") return static_cast<uint8_t>(kProtoUdp);
  if (text == "any") return static_cast<uint8_t>(kProtoAny);
  return fail(EINVAL, fmt::format("protocol '{}' not supported (use tcp, udp or any)", text));
}

std::string proto_name(uint8_t proto) {
  switch (proto) {
    case kProtoAny:
      return "any";
    case kProtoTcp:
      return "tcp";
    case kProtoUdp:
      return "udp";
    default:
      return fmt::format("proto {}", proto);
  }
}

const char* to_string(FilterAction a) {
  switch (a) {
    case FilterAction::Redirect:
      return "redirect";
    case FilterAction::Permit:
      return "permit";
    case FilterAction::Block:
      return "block";
  }
  return "?";
}

Result<FilterAction> parse_filter_action(std::string_view text) {
  for (auto a : {FilterAction::Redirect, FilterAction::Permit, FilterAction::Block})
    if (text == to_string(a)) return a;
  return fail(EINVAL,
              fmt::format("action '{}' is not redirect, permit or block (redirect sends the flow "
                          "to --callout's proxy; permit exempts it from lower-weight filters; "
                          "block fails the connect or send with EPERM)",
                          text));
}

}  // namespace connredir::control
