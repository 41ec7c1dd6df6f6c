// Address::parse on arbitrary text, both modes. Whatever parses must survive
// the conversions proxies use (ABI struct, sockaddr) and re-parse from its
// own rendering to the same address.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "connredir/address.hpp"

using connredir::Address;

namespace {

void check(const Address& a) {
  if (a.family != AF_INET && a.family != AF_INET6) __builtin_trap();
  if (Address::from_abi(a.to_abi()) != a) __builtin_trap();

  sockaddr_storage ss;
  socklen_t len = a.to_sockaddr(ss);
  auto back = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  if (!back || *back != a) __builtin_trap();
  len = a.to_sockaddr6(ss);
  back = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  if (!back || *back != a) __builtin_trap();

  // Port 0 means "no port given" and only re-parses as a bare address.
  auto again = a.port ? Address::parse(a.to_string()) : Address::parse(a.ip_string(), true);
  if (!again || *again != a) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (bool allow_no_port : {false, true}) {
    auto a = Address::parse(text, allow_no_port);
    if (a) {
      if (!allow_no_port && a->port == 0) __builtin_trap();
      check(*a);
    } else if (a.error().code != EINVAL || a.error().message.empty()) {
      __builtin_trap();
    }
  }
  return 0;
}
