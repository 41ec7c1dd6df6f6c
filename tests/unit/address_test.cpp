#include "connredir/address.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

using connredir::Address;

namespace {

std::array<uint8_t, 16> mapped(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d};
}

std::array<uint8_t, 16> loopback6() {
  std::array<uint8_t, 16> ip{};
  ip[15] = 1;
  return ip;
}

// Asserts that parsing fails with EINVAL and a message containing `needle`.
void expect_bad(std::string_view text, std::string_view needle, bool allow_no_port = false) {
  auto r = Address::parse(text, allow_no_port);
  ASSERT_FALSE(r) << "'" << text << "' parsed as " << r->to_string();
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().message.find(needle), std::string::npos)
      << "message for '" << text << "': " << r.error().message;
}

}  // namespace

TEST(AddressParse, Ipv4WithPort) {
  auto a = Address::parse("1.2.3.4:80");
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(a->family, AF_INET);
  EXPECT_EQ(a->ip, mapped(1, 2, 3, 4));
  EXPECT_EQ(a->port, 80);
  EXPECT_EQ(a->to_string(), "1.2.3.4:80");
  EXPECT_EQ(a->ip_string(), "1.2.3.4");
}

TEST(AddressParse, Ipv6WithPort) {
  auto a = Address::parse("[::1]:443");
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(a->family, AF_INET6);
  EXPECT_EQ(a->ip, loopback6());
  EXPECT_EQ(a->port, 443);
  EXPECT_EQ(a->to_string(), "[::1]:443");
}

TEST(AddressParse, V4MappedIsIpv4) {
  auto a = Address::parse("[::ffff:1.2.3.4]:80");
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(a->family, AF_INET);
  EXPECT_EQ(*a, *Address::parse("1.2.3.4:80"));
  EXPECT_EQ(a->to_string(), "1.2.3.4:80");
}

TEST(AddressParse, PortBounds) {
  EXPECT_EQ(Address::parse("1.2.3.4:1")->port, 1);
  EXPECT_EQ(Address::parse("1.2.3.4:65535")->port, 65535);
  EXPECT_EQ(Address::parse("[2001:db8::1]:65535")->port, 65535);
}

TEST(AddressParse, BareAddressesWhenAllowed) {
  auto a = Address::parse("10.0.0.1", true);
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(a->family, AF_INET);
  EXPECT_EQ(a->port, 0);
  auto b = Address::parse("::1", true);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->family, AF_INET6);
  EXPECT_EQ(b->ip, loopback6());
  auto c = Address::parse("[2001:db8::5]", true);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->family, AF_INET6);
  EXPECT_EQ(c->ip_string(), "2001:db8::5");
  auto d = Address::parse("::ffff:10.1.2.3", true);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->family, AF_INET);
  // A port is still accepted.
  EXPECT_EQ(Address::parse("10.0.0.1:9", true)->port, 9);
}

TEST(AddressParse, BadInput) {
  expect_bad("", "empty");
  expect_bad("", "empty", true);
  expect_bad("1.2.3.4", "missing port");
  expect_bad("[::1]", "missing port");
  expect_bad("1.2.3.4:", "missing port");
  expect_bad("[::1]:", "missing port");
  expect_bad("1.2.3.4:0", "port 0");
  expect_bad("[::1]:0", "port 0");
  expect_bad("1.2.3.4:65536", "out of range");
  expect_bad("1.2.3.4:99999999999999999999", "out of range");
  expect_bad("1.2.3.4:http", "not a number");
  expect_bad("1.2.3.4:-1", "not a number");
  expect_bad("1.2.3.4: 80", "not a number");
  expect_bad("garbage", "not a numeric IP address");
  expect_bad("localhost:80", "not a numeric IP address");
  expect_bad("1.2.3:80", "not a numeric IP address");
  expect_bad("256.1.1.1:80", "not a numeric IP address");
  expect_bad(":80", "missing address");
  expect_bad("::1:443", "brackets");
  expect_bad("2001:db8::1:443", "brackets");
  expect_bad("::1", "brackets");
  expect_bad("[::1", "missing ']'");
  expect_bad("[::1]80", "expected ':PORT'");
  expect_bad("[]:80", "empty address");
  expect_bad("[zz::1]:80", "not a numeric IP address");
  expect_bad("a:b:c", "not an address");
  expect_bad("garbage", "not a numeric IP address", true);
}

TEST(AddressAbi, RoundTripV4) {
  auto a = *Address::parse("192.0.2.7:8080");
  connredir_addr abi = a.to_abi();
  EXPECT_EQ(abi.family, CONNREDIR_AF_INET);
  EXPECT_EQ(abi.port, htons(8080));  // network order in the ABI
  EXPECT_EQ(abi.addr[10], 0xff);
  EXPECT_EQ(abi.addr[11], 0xff);
  EXPECT_EQ(abi.addr[12], 192);
  EXPECT_EQ(abi.addr[15], 7);
  EXPECT_EQ(Address::from_abi(abi), a);
}

TEST(AddressAbi, RoundTripV6) {
  auto a = *Address::parse("[2001:db8::1]:53");
  connredir_addr abi = a.to_abi();
  EXPECT_EQ(abi.family, CONNREDIR_AF_INET6);
  EXPECT_EQ(abi.port, htons(53));
  EXPECT_EQ(abi.addr[0], 0x20);
  EXPECT_EQ(Address::from_abi(abi), a);
}

TEST(AddressAbi, UnsetIsZero) {
  Address unset;
  connredir_addr abi = unset.to_abi();
  connredir_addr zero{};
  EXPECT_EQ(std::memcmp(&abi, &zero, sizeof abi), 0);
  EXPECT_EQ(Address::from_abi(zero).family, 0);
  EXPECT_EQ(Address::from_abi(zero).to_string(), "unset");
}

TEST(AddressAbi, V4MappedLabelledV6IsIpv4) {
  connredir_addr abi = Address::parse("1.2.3.4:5")->to_abi();
  abi.family = CONNREDIR_AF_INET6;
  EXPECT_EQ(Address::from_abi(abi).family, AF_INET);
}

TEST(AddressSockaddr, V4) {
  auto a = *Address::parse("127.0.0.1:1234");
  sockaddr_storage ss;
  socklen_t len = a.to_sockaddr(ss);
  ASSERT_EQ(len, sizeof(sockaddr_in));
  auto* in = reinterpret_cast<sockaddr_in*>(&ss);
  EXPECT_EQ(in->sin_family, AF_INET);
  EXPECT_EQ(in->sin_port, htons(1234));
  EXPECT_EQ(in->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
  auto back = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, a);
}

TEST(AddressSockaddr, V6AndDualStack) {
  auto a = *Address::parse("[::1]:99");
  sockaddr_storage ss;
  socklen_t len = a.to_sockaddr(ss);
  ASSERT_EQ(len, sizeof(sockaddr_in6));
  EXPECT_EQ(*Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len), a);

  // IPv4 as ::ffff:a.b.c.d for dual-stack sockets; reads back as IPv4.
  auto v4 = *Address::parse("10.9.8.7:6");
  len = v4.to_sockaddr6(ss);
  ASSERT_EQ(len, sizeof(sockaddr_in6));
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
  EXPECT_EQ(in6->sin6_family, AF_INET6);
  EXPECT_TRUE(IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr));
  auto back = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->family, AF_INET);
  EXPECT_EQ(*back, v4);
}

TEST(AddressSockaddr, Bad) {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  EXPECT_EQ(Address::from_sockaddr(reinterpret_cast<sockaddr*>(&in), 4).error().code, EINVAL);
  EXPECT_EQ(Address::from_sockaddr(nullptr, 0).error().code, EINVAL);
  sockaddr un{};
  un.sa_family = AF_UNIX;
  EXPECT_EQ(Address::from_sockaddr(&un, sizeof un).error().code, EAFNOSUPPORT);
  Address unset;
  sockaddr_storage ss;
  EXPECT_EQ(unset.to_sockaddr(ss), 0u);
}
