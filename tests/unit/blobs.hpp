// Hand-built ABI structures for the tests: written field by field here, not
// via the library, so encode/decode round trips check the library against an
// independent reading of connredir_abi.h.
#pragma once

#include <arpa/inet.h>

#include <cstring>
#include <initializer_list>
#include <vector>

extern "C" {
#include "connredir_abi.h"
}

namespace testblobs {

inline connredir_addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port) {
  connredir_addr x{};
  x.addr[10] = 0xff;
  x.addr[11] = 0xff;
  x.addr[12] = a;
  x.addr[13] = b;
  x.addr[14] = c;
  x.addr[15] = d;
  x.port = htons(port);
  x.family = CONNREDIR_AF_INET;
  return x;
}

inline connredir_addr v6_loopback(uint16_t port) {
  connredir_addr x{};
  x.addr[15] = 1;
  x.port = htons(port);
  x.family = CONNREDIR_AF_INET6;
  return x;
}

// A well-formed records struct whose hops redirect through `callouts`.
inline connredir_records records(std::initializer_list<uint32_t> callouts) {
  connredir_records r{};
  r.magic = CONNREDIR_RECORDS_MAGIC;
  r.version = CONNREDIR_ABI_VERSION;
  r.size = sizeof r;
  r.flow_id = 0x1122334455667788ull;
  r.origin.cgroup_id = 4242;
  r.origin.pid = 1234;
  r.origin.uid = 1000;
  std::memcpy(r.origin.comm, "curl", 4);
  r.origin.src = v4(10, 0, 0, 5, 40000);
  uint8_t i = 0;
  for (uint32_t c : callouts) {
    connredir_hop& h = r.hops[i];
    h.callout_id = c;
    h.filter_id = 100 + c;
    h.time_ns = 1000u * (i + 1);
    h.dst = i == 0 ? v4(93, 184, 216, 34, 80) : v4(127, 0, 0, 1, static_cast<uint16_t>(8000 + i));
    h.proxy_uid = i % 2 ? CONNREDIR_UID_NONE : 2000 + c;
    h.proxy_cgroup = i % 2 ? 777 : 0;
    ++i;
  }
  r.hop_count = i;
  r.mac = 0xdeadbeefcafef00dull;
  return r;
}

template <class T>
std::vector<uint8_t> bytes(const T& t) {
  std::vector<uint8_t> v(sizeof t);
  std::memcpy(v.data(), &t, sizeof t);
  return v;
}

inline connredir_context context(uint16_t user_len) {
  connredir_context c{};
  c.magic = CONNREDIR_CONTEXT_MAGIC;
  c.version = CONNREDIR_ABI_VERSION;
  c.size = static_cast<__u16>(CONNREDIR_CONTEXT_HDR_SIZE + user_len);
  c.flow_id = 99;
  c.callout_id = 3;
  c.filter_id = 7;
  c.orig_dst = v6_loopback(443);
  c.orig_src = v4(192, 168, 1, 2, 51000);
  c.pid = 55;
  c.uid = 1001;
  c.cgroup_id = 8888;
  std::memcpy(c.comm, "firefox", 7);
  c.hop = 2;
  c.user_len = user_len;
  for (uint16_t i = 0; i < user_len && i < CONNREDIR_USER_CONTEXT_MAX; ++i)
    c.user[i] = static_cast<uint8_t>(i + 1);
  return c;
}

}  // namespace testblobs
